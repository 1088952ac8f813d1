"""The ``config.eval`` section: which tasks to score, where their files are, shots, decoding and limits.

Data files are given by the user (no defaults). Each task section has:
    path        the evaluation split (GSM8K test.jsonl, an LLM-Adapters test.json, HumanEval.jsonl.gz)
    shots_path  the train split the demonstrations come from (GSM8K / multiple choice; HumanEval draws
                its shots from other problems of ``path``)
    shots       number of demonstrations (paper: GSM8K 4, ARC-c 5, HumanEval 4)
    max_new_tokens
Task names: gsm8k, arc_c, arc_e, boolq, obqa, humaneval (configured here), the built-in task definitions
(``builtin_tasks.REGISTRY``: piqa, arc_easy, arc_challenge, hellaswag, arc_c_mc, ...) and the tasks defined by
``eval.task_files`` / ``eval.task_defs`` (docs/tasks.md).
"""

from __future__ import annotations

import ml_collections

from remix_jax.data.templates import DEFAULT_PLAIN_FORMAT
from remix_jax.evaluation.builtin_tasks import config_specs
from remix_jax.evaluation.scoring import DEFAULT_PACK_LEN
from remix_jax.evaluation.task_spec import TaskSpecError, path_problem
from remix_jax.inference.prefill import DEFAULT_PREFILL_CHUNK, check_prefill_chunk
from remix_jax.inference.remix_kernels import MODES as REMIX_KERNEL_MODES

MC_TASKS = ("arc_c", "arc_e", "boolq", "obqa")
TASKS = ("gsm8k", *MC_TASKS, "humaneval")
TEMPLATES = ("plain", "chat")  # eval.template (chat_format.py)


class EvalConfigError(ValueError):
    """An invalid ``config.eval``; the message names the key."""


def _task(shots: int, max_new_tokens: int, fmt: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(path="", shots_path="", format=fmt, shots=shots, max_new_tokens=max_new_tokens)
    )


def default_eval_config() -> ml_collections.ConfigDict:
    """Defaults for ``config.eval``. Fields:

    tasks: comma-separated task names, in the order they run ("gsm8k,arc_c").
    tokenizer: tokenizer path (GGUF file or folder with tokenizer.json); "" = the model's own. Needed for
      random:SHAPE models.
    template: how contexts are written: "plain" (plain_format around every demonstration and the query, the
      demonstrations joined by the task's delimiters) or "chat" (the tokenizer's chat template over a conversation:
      each demonstration a user turn and an assistant turn, the query the last user turn, then the generation
      prompt; a task's description a system turn; remix_jax/evaluation/chat_format.py). HumanEval in chat is
      lm-eval's humaneval_instruct form (humaneval.py). Each task's results record the template used
      (metrics["template"]).
    plain_format: the prompt template around every demonstration and the query (template "plain").
    batch_size: prompts per generation call / sequences per scoring forward pass.
    share_context: log-likelihood scoring runs the context of a question once for all its options (routing
      statistics count each context token once); False scores every option as a whole sequence. Same
      log-likelihoods up to float rounding.
    pack_len: with share_context, each question (its context, then every option, each attending to the context
      and to itself) is packed with others into rows of this many tokens (more for a longer question), one forward
      pass with no padding between questions; 0 = one prefill of the contexts into a KV cache and the options
      against copies of it. Same log-likelihoods up to float rounding.
    prefill_chunk: prompt tokens a prefill step (GenerationConfig.prefill_chunk; also the contexts of share_context):
      a power of two, or 0 for the whole prompt at once. Bounds the memory of the prefill's attention scores (batch x
      heads x chunk x cache length floats rather than x prompt length); same results up to float rounding.
    limit: score only the first N examples of each task (0 = all).
    offset: skip the first N examples of each task (with limit: examples offset .. offset + limit - 1, to split a
      long evaluation into parts; python -m remix_jax.evaluation.merge joins their results).
    seed: shot selection and sampling seed.
    mc_mode: "loglik" (rank the options by the log-likelihood of their continuations) or "generate" (read
      the label from the generated answer).
    mc_style: continuation form for loglik: "label" (" the correct answer is answer3", the training target)
      or "text" (the option's own text).
    mc_normalize: rank by per-token average log-likelihood instead of the sum.
    mc_normalize_unit: what mc_normalize divides by for ranked-classification rows (format ``arc_rc``):
      "token" (continuation tokens) or "char" (continuation characters, ai2-olmo-eval's acc_per_char).
      Rows of other formats always use tokens.
    routing_stats: run a scoring forward pass with the "routing_stats" collection mutable and save expert
      load / ESS per block beside the accuracy (routed adapters only), and the load over the even- and the
      odd-numbered scoring batches apart ("load_halves"), two halves of the task's questions.
    remix_kernels: ReMix's decode kernels for generation calls of at most 16 tokens (GenerationConfig.remix_kernels):
      "auto" (CUDA GPUs), "xla" (never), "pallas" (always; Pallas's interpreter off GPUs, slow).
    humaneval.num_samples / temperature / top_p / ks: sampling for pass@k (num_samples 1 + temperature 0 is
      greedy pass@1; ks lists the k reported, each <= num_samples).
    sandbox: limits for each generated program (see remix_jax/evaluation/sandbox.py); workers 0 = one per CPU.
    task_files: comma-separated YAML / JSON files of task definitions (docs/tasks.md); their tasks may be named in
      ``tasks`` like the built-in ones.
    task_defs: task definitions in the config itself: name -> fields (a ConfigDict or dict, same fields).
    """
    c = ml_collections.ConfigDict()
    c.tasks = "gsm8k,arc_c,humaneval"
    c.tokenizer = ""
    c.template = "plain"
    c.plain_format = DEFAULT_PLAIN_FORMAT
    c.batch_size = 64
    c.share_context = True
    c.pack_len = DEFAULT_PACK_LEN
    c.prefill_chunk = DEFAULT_PREFILL_CHUNK
    c.limit = 0
    c.offset = 0
    c.seed = 0
    c.mc_mode = "loglik"
    c.mc_style = "label"
    c.mc_normalize = False
    c.mc_normalize_unit = "token"
    c.routing_stats = True
    c.remix_kernels = "auto"
    c.gsm8k = _task(4, 256, "gsm8k")
    c.arc_c = _task(5, 32, "alpaca")
    c.arc_e = _task(5, 32, "alpaca")
    c.boolq = _task(0, 32, "alpaca")
    c.obqa = _task(0, 32, "alpaca")
    c.humaneval = ml_collections.ConfigDict(
        dict(path="", shots=4, max_new_tokens=512, num_samples=1, temperature=0.0, top_p=0.95, ks="1")
    )
    c.sandbox = ml_collections.ConfigDict(
        dict(timeout_s=10.0, cpu_s=10, memory_bytes=1 << 30, max_processes=16, workers=0)
    )
    c.task_files = ""
    c.task_defs = ml_collections.ConfigDict()
    return c


def task_specs(eval_cfg) -> dict:
    """name -> TaskSpec of every defined task (built-in, eval.task_files, eval.task_defs); raises EvalConfigError
    listing the problems of the definitions."""
    try:
        return config_specs(eval_cfg, reserved=TASKS)
    except TaskSpecError as e:
        raise EvalConfigError(str(e)) from None


def task_names(eval_cfg) -> list[str]:
    """The configured task list (validated)."""
    known = (*TASKS, *task_specs(eval_cfg))
    names = [t.strip() for t in str(eval_cfg.tasks).split(",") if t.strip()]
    if not names:
        raise EvalConfigError("eval.tasks: empty; name at least one of " + ", ".join(known))
    unknown = [t for t in names if t not in known]
    if unknown:
        raise EvalConfigError(f"eval.tasks: unknown task(s) {unknown}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise EvalConfigError(f"eval.tasks: {names} lists a task twice")
    return names


def validate_eval_config(eval_cfg) -> list[str]:
    """Raise EvalConfigError listing every problem of the tasks that will run; returns the task names."""
    names = task_names(eval_cfg)
    specs = task_specs(eval_cfg)
    errors = []
    if eval_cfg.get("template", "plain") not in TEMPLATES:
        errors.append(f"eval.template: {eval_cfg.template!r} is not 'plain' or 'chat'")
    if eval_cfg.mc_mode not in ("loglik", "generate"):
        errors.append(f"eval.mc_mode: {eval_cfg.mc_mode!r} is not 'loglik' or 'generate'")
    if eval_cfg.mc_style not in ("label", "text"):
        errors.append(f"eval.mc_style: {eval_cfg.mc_style!r} is not 'label' or 'text'")
    if eval_cfg.get("mc_normalize_unit", "token") not in ("token", "char"):
        errors.append(f"eval.mc_normalize_unit: {eval_cfg.mc_normalize_unit!r} is not 'token' or 'char'")
    if eval_cfg.get("remix_kernels", "auto") not in REMIX_KERNEL_MODES:
        errors.append(f"eval.remix_kernels: {eval_cfg.remix_kernels!r} is not one of {REMIX_KERNEL_MODES}")
    try:
        check_prefill_chunk(eval_cfg.get("prefill_chunk", DEFAULT_PREFILL_CHUNK), "eval.prefill_chunk")
    except ValueError as e:
        errors.append(str(e))
    if not isinstance(eval_cfg.get("pack_len", DEFAULT_PACK_LEN), int) or eval_cfg.get("pack_len", 0) < 0:
        errors.append(f"eval.pack_len: {eval_cfg.pack_len!r} is not a token count >= 0 (0: no packing)")
    if eval_cfg.batch_size < 1 or eval_cfg.limit < 0 or eval_cfg.get("offset", 0) < 0:
        errors.append(f"eval.batch_size={eval_cfg.batch_size} must be >= 1, eval.limit={eval_cfg.limit} and "
                      f"eval.offset={eval_cfg.get('offset', 0)} >= 0")
    if "{prompt}" not in eval_cfg.plain_format:
        errors.append("eval.plain_format: has no {prompt} field")
    errors += missing_paths(eval_cfg, [t for t in names if t in TASKS])
    for t in names:
        if t not in TASKS:
            spec = specs[t]
            errors += [p for p in (path_problem(f"task {t}: data", spec.data),
                                   spec.num_fewshot and path_problem(f"task {t}: fewshot_data", spec.fewshot_data))
                       if p]
            continue
        s = eval_cfg[t]
        if not s.path:
            errors.append(f"eval.{t}.path: missing (the task's evaluation file)")
        if s.shots < 0 or s.max_new_tokens < 1:
            errors.append(
                f"eval.{t}: shots={s.shots} must be >= 0 and max_new_tokens={s.max_new_tokens} >= 1"
            )
        if t != "humaneval" and s.shots > 0 and not s.shots_path:
            errors.append(f"eval.{t}.shots_path: missing (the train split the {s.shots} shots come from)")
    if "humaneval" in names:
        h = eval_cfg.humaneval
        try:
            ks = humaneval_ks(h)
            if max(ks) > h.num_samples:
                errors.append(f"eval.humaneval.ks={h.ks!r}: each k must be <= num_samples={h.num_samples}")
        except EvalConfigError as e:
            errors.append(str(e))
        if h.num_samples > 1 and h.temperature == 0:
            errors.append(
                f"eval.humaneval.num_samples={h.num_samples} with temperature 0 gives identical "
                "samples; set a temperature > 0 for pass@k"
            )
        if not 0 < h.top_p <= 1 or h.temperature < 0:
            errors.append(f"eval.humaneval: top_p={h.top_p} must be in (0, 1] and temperature >= 0")
    if errors:
        raise EvalConfigError("invalid eval config:\n  " + "\n  ".join(errors))
    return names


def missing_paths(eval_cfg, names: list[str]) -> list[str]:
    """"key: 'path' does not exist" for every file the tasks ``names`` read (their evaluation file, the
    shots' file when shots > 0) and for eval.tokenizer; checked before any model is loaded."""
    import os

    keys = []
    if eval_cfg.get("tokenizer"):
        keys.append(("eval.tokenizer", eval_cfg.tokenizer))
    for t in names:
        s = eval_cfg[t]
        keys.append((f"eval.{t}.path", s.path))
        if t != "humaneval" and s.shots > 0:
            keys.append((f"eval.{t}.shots_path", s.shots_path))
    return [f"{key}: {str(path)!r} does not exist" for key, path in keys if path and not os.path.exists(path)]


def humaneval_ks(h) -> list[int]:
    try:
        ks = [int(k) for k in str(h.ks).split(",") if k.strip()]
    except ValueError:
        raise EvalConfigError(f"eval.humaneval.ks={h.ks!r}: expected comma-separated integers") from None
    if not ks or min(ks) < 1:
        raise EvalConfigError(f"eval.humaneval.ks={h.ks!r}: expected positive integers")
    return ks

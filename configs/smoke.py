"""Smoke run: a randomly initialised tiny decoder (random:tiny) with ReMix on the synthetic reversal task.

Needs no files and no network. On a 2-core CPU it takes about 20-40 s (mostly compilation):

    python -m remix_jax.main --config=configs/smoke.py --workdir=/tmp/remix_smoke

Variants (``configs/smoke.py:VARIANT``): remix (default), remix_norloo, lora, rslora, dora, mixlora,
hydralora, uniform_random. Any field can be overridden, e.g. ``--config.train.num_steps=50``;
``--config.eval.heldout.num_batches=2`` adds a held-out loss on unseen synthetic batches (eval/heldout.json).
"""

from remix_jax.data import source_config
from remix_jax.run_config import default_config, eval_config


def get_config(variant: str = "remix"):
    c = default_config()
    c.seed = 0
    c.model.path = "random:tiny"
    c.adapter.num_experts = 4
    c.adapter.top_k = 2
    c.adapter.rank = 4
    c.adapter.alpha = 8.0
    c.data.synthetic = True
    c.data.batch_size = 8
    c.data.max_length = 32
    c.train.num_steps = 30
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.optimizer.adapter_lr = 3e-3
    c.optimizer.router_lr = 3e-2
    c.optimizer.warmup_steps = 3
    if variant == "remix_norloo":
        c.train.baseline = "none"
        variant = "remix"
    c.adapter.method = variant
    # Held-out loss on fresh synthetic batches, off by default: --config.eval.heldout.num_batches=2
    c.eval = eval_config()
    c.eval.heldout.source = source_config("synthetic")
    c.eval.heldout.num_batches = 0
    if variant != "remix":
        c.train.num_samples = 1
    return c

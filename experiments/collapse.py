"""The collapse measurement (paper Figure 3): routing ESS over training of the learned routers (MixLoRA:
top-k of a softmax, HydraLoRA: dense softmax) next to ReMix, on the same run length and data, with the
ESS logged often. ESS of the full softmax over n and of the weights actually applied, per block.

    python -m remix_jax.sweep --sweep=experiments/collapse.py
"""

from common import GSM8K_CONFIG, GSM8K_TASK, METHODS, SEEDS, small_scale, variant

from remix_jax.sweep import KEYS

ROUTED_METHODS = [m for m in METHODS if m["name"] in ("mixlora", "hydralora", "remix")]


def get_sweep():
    return {
        "config": GSM8K_CONFIG + variant("remix"),
        "base_overrides": {**small_scale(), KEYS.log_every: 10},
        "grid": [ROUTED_METHODS],
        "seeds": SEEDS,
        "report": {
            "tables": [{"title": "Final routing ESS and accuracy", "rows": ["variant"]}],
            "plots": [
                {"kind": "ess", "series": "variant", "block": "last", "file": "ess_last_block.png",
                 "title": "Routing ESS over training, last block"},
                {"kind": "ess", "series": "variant", "block": "mean", "file": "ess_mean_blocks.png",
                 "title": "Routing ESS over training, mean over blocks"},
                {"kind": "ess_blocks", "series": "variant", "metric": "routing/ess_softmax",
                 "file": "ess_softmax_per_block.png", "title": "Softmax ESS of every block's router"},
                {"kind": "bar", "x": "variant", "y": f"{GSM8K_TASK}/accuracy", "file": "accuracy.png"},
            ],
        },
    }

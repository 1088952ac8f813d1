"""Paper Figure 5: ReMix accuracy against the number of routing samples M per input (the training compute
budget), n = 8, k = 2, r = 8, 3 seeds each.

    python -m remix_jax.sweep --sweep=experiments/m_sweep.py
"""

from common import GSM8K_CONFIG, GSM8K_TASK, ROUTED, SEEDS, small_scale, variant

from remix_jax.sweep import KEYS


def get_sweep():
    return {
        "config": GSM8K_CONFIG + variant("remix"),
        "base_overrides": {**small_scale(), **ROUTED},
        "grid": [{KEYS.num_samples: [2, 4, 8, 32]}],
        "seeds": SEEDS,
        "report": {
            "tables": [{"title": "ReMix on GSM8K against M", "rows": [KEYS.num_samples]}],
            "plots": [{"kind": "line", "x": KEYS.num_samples, "y": f"{GSM8K_TASK}/accuracy", "xlog": True,
                       "file": "accuracy_vs_M.png", "title": "ReMix: GSM8K accuracy vs M (paper Figure 5)",
                       "xlabel": "M (routing samples per input)"}],
        },
    }

"""Paper Table 5: ReMix accuracy against the number of active experts k (n = 8, r = 8), 3 seeds each.

    python -m remix_jax.sweep --sweep=experiments/k_sweep.py

With $REMIX_SELECTED_LR (the 0.5B study) ReMix trains at the adapter learning rate chosen for it on validation
data and one routing sample at a time, as in the main table: k = 2 is then the main table's ReMix.
"""

from common import GSM8K_CONFIG, GSM8K_TASK, SEEDS, N, R, as_in_main_table, small_scale, variant

from remix_jax.sweep import KEYS


def get_sweep():
    return {
        "config": GSM8K_CONFIG + variant("remix"),
        "base_overrides": {**small_scale(), KEYS.num_experts: N, KEYS.rank: R, **as_in_main_table("remix")},
        "grid": [{KEYS.top_k: [1, 2, 3, 4]}],
        "seeds": SEEDS,
        "report": {
            "tables": [{"title": "ReMix on GSM8K against k (n=8, r=8)", "rows": [KEYS.top_k]}],
            "plots": [{"kind": "line", "x": KEYS.top_k, "y": f"{GSM8K_TASK}/accuracy",
                       "file": "accuracy_vs_k.png", "xlabel": "k",
                       "title": "ReMix: GSM8K accuracy vs k (paper Table 5)"}],
        },
    }

"""Paper Table 2: one LoRA of rank k*r against ReMix with k active rank-r experts (n = 8, r = 8), at the
same activated parameter count, for k = 1..4, 3 seeds each. If ReMix wins, it uses diverse subsets. A LoRA of
rank n*r = 64 (labelled k = 8) is the control for parameter count: as many trainable adapter parameters as
ReMix's eight experts, all of them active.

    python -m remix_jax.sweep --sweep=experiments/rank_comparison.py

With $REMIX_SELECTED_LR (the 0.5B study) ReMix and LoRA train at the adapter learning rates chosen for them on
validation data (LoRA's chosen at rank 16, used at every rank) and ReMix one routing sample at a time, as in the
main table.
"""

from common import GSM8K_CONFIG, GSM8K_TASK, SEEDS, N, R, as_in_main_table, small_scale, variant

from remix_jax.sweep import KEYS

KS = (1, 2, 3, 4)
CONTROL_K = N  # LoRA of rank N * R: ReMix's trainable adapter parameters in one adapter


def get_sweep():
    variants = []
    for k in KS:
        variants.append({"name": f"remix_k{k}", "config": variant("remix"), "labels": {"k": k, "family": "remix"},
                         "overrides": {KEYS.num_experts: N, KEYS.top_k: k, KEYS.rank: R,
                                       **as_in_main_table("remix")}})
        variants.append({"name": f"lora_r{k * R}", "config": variant("lora"), "labels": {"k": k, "family": "lora"},
                         "overrides": {KEYS.rank: k * R, **as_in_main_table("lora")}})
    variants.append({"name": f"lora_r{CONTROL_K * R}", "config": variant("lora"),
                     "labels": {"k": CONTROL_K, "family": "lora"},
                     "overrides": {KEYS.rank: CONTROL_K * R, **as_in_main_table("lora")}})
    return {
        "config": GSM8K_CONFIG + variant("remix"),
        "base_overrides": small_scale(),
        "grid": [variants],
        "seeds": SEEDS,
        "report": {
            "tables": [{"title": "Rank k*r LoRA vs ReMix with k rank-r experts", "rows": ["k", "family"]}],
            "plots": [{"kind": "line", "x": "k", "y": f"{GSM8K_TASK}/accuracy", "series": "family",
                       "file": "rank_comparison.png", "xlabel": "k (LoRA rank = k * 8)",
                       "title": "LoRA rank k*r vs ReMix k x rank r (paper Table 2)"}],
        },
    }

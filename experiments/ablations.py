"""Paper Figure 4: ReMix component ablations on GSM8K: full ReMix, without RLOO (plain REINFORCE, no
baseline), without top-k inference (sampling k experts at inference), 3 seeds each.

    python -m remix_jax.sweep --sweep=experiments/ablations.py

With $REMIX_SELECTED_LR (the 0.5B study) every variant trains at ReMix's chosen adapter learning rate, one routing
sample at a time, as in the main table: "remix" is then the main table's ReMix.
"""

from common import remix_variants_sweep

from remix_jax.sweep import KEYS


def get_sweep():
    return remix_variants_sweep([
        {"name": "remix"},
        {"name": "no_rloo", "overrides": {KEYS.baseline: "none"}},
        {"name": "no_topk", "overrides": {KEYS.sample_at_inference: True}},
    ], "ReMix ablations on GSM8K", "ablations.png", "ReMix ablations (paper Figure 4)")

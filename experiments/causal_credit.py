"""Causal credit (ours, not in the paper) against the paper's RLOO on GSM8K, 3 seeds: ReMix as in the main table
and the same ReMix with ``train.credit=causal``, whose advantage for a routing decision at token t uses the
leave-one-out difference of the losses from t on only (docs/method.md; the same expected gradient, tested against
exact enumeration in tests/training/test_causal_credit.py). Its router-gradient variance is measured in
experiments/README.md ("Router gradient signal-to-noise"); this sweep asks whether the lower variance shows in
accuracy or held-out loss.

    python -m remix_jax.sweep --sweep=experiments/causal_credit.py

With $REMIX_SELECTED_LR (the 0.5B study) both train at ReMix's chosen adapter learning rate, one routing sample at a
time, as in the main table: "remix" is then the main table's ReMix (run once in a queue with main_table.py).
"""

from common import remix_variants_sweep


def get_sweep():
    return remix_variants_sweep([{"name": "remix"}, {"name": "causal", "overrides": {"train.credit": "causal"}}],
                                "ReMix on GSM8K: RLOO (paper) against RLOO with causal credit", "accuracy.png",
                                "ReMix: RLOO against causal credit")

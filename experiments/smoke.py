"""A two-run sweep on configs/smoke.py (random tiny decoder, synthetic task; no files, no network): checks
the sweep machinery end to end with the real trainer in about a minute on a CPU.

    python -m remix_jax.sweep --sweep=experiments/smoke.py
"""

from remix_jax.sweep import KEYS


def get_sweep():
    return {
        "config": "configs/smoke.py:remix",
        "base_overrides": {KEYS.num_steps: 10, KEYS.log_every: 5},
        "grid": [[{"name": "remix"}, {"name": "mixlora", "config": ":mixlora"}]],
        "seeds": [0],
        "report": {"plots": [{"kind": "ess", "series": "variant", "block": "mean", "file": "ess.png"}]},
    }

"""Learning-rate selection for the main table: every method at three adapter learning rates, one seed, trained
on GSM8K train minus a carved validation split and scored by its held-out loss on that split (never the test
set). ``experiments/select_lr.py`` then picks each method's learning rate for the main table.

    python -m remix_jax.data --carve=GSM8K/train.jsonl --num_val=500 --out=GSM8K_VAL
    REMIX_TEMPLATE=plain REMIX_MODEL_PATH=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf REMIX_GSM8K_VAL_DIR=GSM8K_VAL \\
        python -m remix_jax.sweep --sweep=experiments/lr_grid.py --out_dir=experiments/results/qwen0.5b/lr_grid \\
        --parallel=4 --devices=0

The schedule is the small-scale one (300 steps of 16 packed rows of 512 tokens, 30 warmup steps, cosine decay);
the held-out loss covers 12 batches (192 packed rows, about the whole 500-row split). Router learning rates
stay at their defaults. ReMix processes its M=4 routing samples one at a time (same gradients, less memory),
so four runs share one GPU. ``$REMIX_LR_GRID`` widens the grid; e.g. the points beyond the first grid's edges:

    REMIX_LR_GRID=3e-5,1e-4,3e-4,1e-3,3e-3 ... python -m remix_jax.sweep --sweep=experiments/lr_grid.py \
        --out_dir=experiments/results/qwen0.5b/lr_grid \
        --only='^(remix|mixlora|hydralora)__adapter_lr=0.003_|^rslora__adapter_lr=3e-05_'
"""

import math
import os

from common import GSM8K_CONFIG, METHODS, model_path, remix_one_sample_at_a_time, validation_data, variant

from remix_jax.cli import UserError
from remix_jax.sweep import KEYS

LEARNING_RATES = [1e-4, 3e-4, 1e-3]


def learning_rates() -> list[float]:
    """The grid's adapter learning rates: $REMIX_LR_GRID (comma-separated) or LEARNING_RATES. Widen it when
    select_lr.py flags a choice at the grid's edge, and run only the new points with the sweep's --only (finished
    runs in the same --out_dir are reused)."""
    raw = os.environ.get("REMIX_LR_GRID", "")
    if not raw:
        return list(LEARNING_RATES)
    try:
        rates = [float(x) for x in raw.split(",")]
    except ValueError:
        raise UserError(f"$REMIX_LR_GRID={raw!r}: expected comma-separated learning rates, e.g. 1e-4,3e-4") from None
    if not all(r > 0 and math.isfinite(r) for r in rates) or len(set(rates)) != len(rates):
        raise UserError(f"$REMIX_LR_GRID={raw!r}: the rates must be positive, finite and distinct")
    return rates


def get_sweep():
    # ReMix first: the longest runs start first, so a parallel sweep ends sooner.
    methods = remix_one_sample_at_a_time(sorted(METHODS, key=lambda m: m["name"] != "remix"))
    return {
        "config": GSM8K_CONFIG + variant("remix"),
        "base_overrides": {KEYS.model_path: model_path(), **validation_data(), "eval.at_start": False,
                           "eval.heldout.num_batches": 12, "train.checkpoint_every": 0},
        "grid": [methods, {KEYS.adapter_lr: learning_rates()}],
        "seeds": [0],
        "report": {
            "tables": [{"title": "GSM8K validation loss (carved from train) by learning rate",
                        "rows": ["variant", KEYS.adapter_lr]}],
            "plots": [{"kind": "line", "x": KEYS.adapter_lr, "y": "heldout/heldout_loss", "series": "variant",
                       "file": "validation_loss.png", "title": "Validation loss against adapter learning rate"}],
        },
    }

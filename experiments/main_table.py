"""Paper Table 1 (GSM8K column) at small scale: LoRA, rsLoRA, DoRA, MixLoRA, HydraLoRA and ReMix at
comparable activated rank (see common.py), 3 seeds each; accuracy on GSM8K test and held-out loss.

    python -m remix_jax.sweep --sweep=experiments/main_table.py

Each method trains at its config's adapter learning rate, or, with $REMIX_SELECTED_LR naming the
selected_lr.json of ``experiments/select_lr.py``, at the rate chosen for it on validation data (lr_grid.py);
give such a table its own --out_dir (experiments/README.md, "The 0.5B study"). ReMix runs first (the longest
run, so a parallel sweep ends sooner) and processes its routing samples one at a time (same gradients, less
memory).
"""

from common import GSM8K_CONFIG, GSM8K_TASK, SEEDS, remix_one_sample_at_a_time, selected_methods, small_scale, variant


def get_sweep():
    return {
        "config": GSM8K_CONFIG + variant("remix"),
        "base_overrides": small_scale(),
        "grid": [remix_one_sample_at_a_time(sorted(selected_methods(), key=lambda m: m["name"] != "remix"))],
        "seeds": SEEDS,
        "report": {
            "tables": [{"title": "GSM8K (test), mean ± std over seeds", "rows": ["variant"]}],
            "plots": [
                {"kind": "bar", "x": "variant", "y": f"{GSM8K_TASK}/accuracy", "file": "accuracy.png",
                 "title": "GSM8K accuracy by method"},
                {"kind": "bar", "x": "variant", "y": f"{GSM8K_TASK}/heldout_loss", "file": "heldout_loss.png",
                 "title": "GSM8K held-out loss by method"},
                {"kind": "ess", "series": "variant", "block": "last", "file": "ess_last_block.png",
                 "title": "Routing ESS over training, last block (paper Figure 3)"},
            ],
        },
    }

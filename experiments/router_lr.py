"""ReMix's router learning rate at the 0.5B scale, on validation data: ReMix (n = 8, k = 2, r = 8, M = 4) at
router learning rates 3e-4, 1e-3 (the configs' default), 3e-3 and 1e-2, one seed, with the setting of
``lr_grid.py`` (GSM8K train minus the carved validation split, the small-scale schedule, scored by the held-out
loss on the carved rows; never the test set). The adapter learning rate is ReMix's choice in $REMIX_SELECTED_LR
(select_lr.py's output for the lr_grid sweep), else the config's; the other variables are lr_grid.py's:

    REMIX_TEMPLATE=plain REMIX_MODEL_PATH=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf REMIX_GSM8K_VAL_DIR=DATA/gsm8k_val \\
    REMIX_SELECTED_LR=experiments/results/qwen0.5b/lr_grid/selected_lr.json \\
        python -m remix_jax.sweep --sweep=experiments/router_lr.py --out_dir=experiments/results/qwen0.5b/router_lr \\
        --parallel=4 --devices=0

The known-routing experiment (scripts/known_routing.py) found ReMix's router best at 10-30 times the default
rate; this asks whether that holds on a real model, by validation loss and by how far the routing moves (softmax
ESS, logit scale, expert load in each run's metrics.jsonl).
"""

from common import (
    GSM8K_CONFIG,
    METHODS,
    model_path,
    remix_one_sample_at_a_time,
    selected_methods,
    validation_data,
    variant,
)

from remix_jax.sweep import KEYS

ROUTER_LRS = [3e-4, 1e-3, 3e-3, 1e-2]
# Four such runs sharing one H100 take about 1.9 s a step each (300 steps: about 10 minutes), so a run cut by a
# job's time limit resumes from its last checkpoint (every 50 steps) when the sweep is started again on the same
# workdirs.
RESUMABLE = {"train.checkpoint_every": 50}


def get_sweep():
    remix = remix_one_sample_at_a_time(selected_methods([m for m in METHODS if m["name"] == "remix"]))
    return {
        "config": GSM8K_CONFIG + variant("remix"),
        "base_overrides": {KEYS.model_path: model_path(), **validation_data(), "eval.at_start": False,
                           "eval.heldout.num_batches": 12, **RESUMABLE},
        "grid": [remix, {KEYS.router_lr: ROUTER_LRS}],
        "seeds": [0],
        "report": {
            "tables": [{"title": "ReMix: GSM8K validation loss (carved from train) by router learning rate",
                        "rows": [KEYS.router_lr]}],
            "plots": [{"kind": "line", "x": KEYS.router_lr, "y": "heldout/heldout_loss", "xlog": True,
                       "file": "validation_loss_vs_router_lr.png",
                       "title": "ReMix: validation loss against router learning rate",
                       "xlabel": "router learning rate"}],
        },
    }

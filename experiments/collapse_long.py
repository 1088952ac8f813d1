"""The collapse study over a long schedule (1,000 steps), at the 0.5B scale: the routing ESS of MixLoRA with and
without its load-balancing loss, HydraLoRA and ReMix, logged every 10 steps, with the held-out loss on the carved
GSM8K validation rows every 100 steps (never the test set). Each method at the adapter learning rate chosen for
it by lr_grid.py ($REMIX_SELECTED_LR; MixLoRA's rate for both MixLoRA runs), else its config's rate.

    REMIX_TEMPLATE=plain REMIX_MODEL_PATH=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf REMIX_GSM8K_VAL_DIR=DATA/gsm8k_val \\
    REMIX_SELECTED_LR=experiments/results/qwen0.5b/lr_grid/selected_lr.json \\
        python -m remix_jax.sweep --sweep=experiments/collapse_long.py \\
        --out_dir=experiments/results/qwen0.5b/collapse_long --parallel=4 --devices=0

The schedule is the ``_small`` one (16 packed rows of 512 tokens, 30 warm-up steps, the learning rate decaying
over the whole run) stretched to 1,000 steps: about five passes over the 6,973 carved training rows, so the
held-out loss shows where training starts to overfit while the routing keeps moving. One seed (``$REMIX_SEEDS``
gives more, comma-separated). ``collapse.py`` is the 300-step study at 135M.
"""

import os

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

NUM_STEPS = 1000
HELDOUT_EVERY = 100
NO_LOAD_BALANCE = {"adapter.load_balance_coef": 0.0}
ROUTING_STEPS = [10, 100, 300, 1000]
# routing/max_load: the share of tokens whose selection includes the block's most-used expert (top-k routers;
# uniform k/n), or the largest mean weight (dense routers; uniform 1/n). routing/distinct_subsets: the distinct
# expert subsets a batch uses (of C(n, k)).
ROUTING_CURVES = [("routing/ess_softmax", "Softmax ESS"), ("routing/max_load", "Max load"),
                  ("routing/distinct_subsets", "Distinct expert subsets")]


def methods() -> list[dict]:
    """MixLoRA, MixLoRA without its load-balancing loss, HydraLoRA and ReMix (first: the longest run)."""
    chosen = {m["name"]: m for m in selected_methods([m for m in METHODS if m["name"] in
                                                      ("mixlora", "hydralora", "remix")])}
    mix = chosen["mixlora"]
    no_lb = dict(mix, name="mixlora_nolb", overrides={**mix["overrides"], **NO_LOAD_BALANCE})
    return remix_one_sample_at_a_time([chosen["remix"], mix, no_lb, chosen["hydralora"]])


def seeds() -> list[int]:
    raw = os.environ.get("REMIX_SEEDS", "0")
    try:
        return [int(s) for s in raw.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"$REMIX_SEEDS: {raw!r} is not a comma-separated list of integers") from None


def get_sweep():
    return {
        "config": GSM8K_CONFIG + variant("remix"),
        "base_overrides": {KEYS.model_path: model_path(), **validation_data(), "eval.at_start": False,
                           "eval.heldout.num_batches": 12, "train.checkpoint_every": 0,
                           "train.loss_chunk_tokens": 2048,  # as table1.HUMANEVAL.memory (same loss up to rounding)
                           KEYS.num_steps: NUM_STEPS, KEYS.log_every: 10, "train.eval_every": HELDOUT_EVERY},
        "grid": [methods()],
        "seeds": seeds(),
        "report": {
            "tables": [{"title": "Routing ESS after 1,000 steps, and the validation loss", "rows": ["variant"]}],
            "curves": [
                {"title": "Validation loss (carved from train) every 100 steps", "metric": "eval/heldout_loss",
                 "rows": ["variant"]},
                *({"title": f"{title} on the training batches (mean over blocks)", "metric": metric,
                   "rows": ["variant"], "steps": ROUTING_STEPS} for metric, title in ROUTING_CURVES),
                {"title": "Softmax ESS of the last block's router", "metric": "routing/ess_softmax",
                 "rows": ["variant"], "steps": ROUTING_STEPS, "block": "last"},
            ],
            "plots": [
                {"kind": "ess", "series": "variant", "block": "last", "file": "ess_last_block.png",
                 "title": "Routing ESS over 1,000 steps, last block"},
                {"kind": "ess", "series": "variant", "block": "mean", "file": "ess_mean_blocks.png",
                 "title": "Routing ESS over 1,000 steps, mean over blocks"},
                {"kind": "ess_blocks", "series": "variant", "metric": "routing/ess_softmax",
                 "file": "ess_softmax_per_block.png", "title": "Softmax ESS of every block's router"},
                {"kind": "curve", "y": "eval/heldout_loss", "series": "variant", "file": "validation_loss.png",
                 "title": "Validation loss over 1,000 steps", "ylabel": "validation loss per response token"},
                {"kind": "curve", "y": "routing/max_load", "series": "variant", "file": "max_load.png",
                 "title": "Share of tokens routed to each block's most-used expert (mean over blocks)",
                 "ylabel": "max load"},
            ],
        },
    }

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
so four runs share one GPU. ``$REMIX_LR_GRID`` widens the grid (common.learning_rates); e.g. the points beyond the
first grid's edges:

    REMIX_LR_GRID=3e-5,1e-4,3e-4,1e-3,3e-3 ... python -m remix_jax.sweep --sweep=experiments/lr_grid.py \
        --out_dir=experiments/results/qwen0.5b/lr_grid \
        --only='^(remix|mixlora|hydralora)__adapter_lr=0.003_|^rslora__adapter_lr=3e-05_'
"""

from table1 import GSM8K, lr_grid_sweep


def get_sweep():
    return lr_grid_sweep(GSM8K)

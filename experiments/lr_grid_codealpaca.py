"""Learning rates for the HumanEval table (humaneval_table.py), as lr_grid.py chooses GSM8K's: every method at the
adapter learning rates 1e-4, 3e-4, 1e-3 ($REMIX_LR_GRID widens them), one seed, trained on a CodeAlpaca file minus
a carved validation split and scored by the held-out loss on that split (never HumanEval). Then
``experiments/select_lr.py`` picks each method's rate.

    python -m remix_jax.data --carve=DATA/code_alpaca/new_codealpaca.json --num_val=500 --out=DATA/codealpaca_val
    REMIX_TEMPLATE=plain REMIX_MODEL_PATH=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \\
    REMIX_CODEALPACA_VAL_DIR=DATA/codealpaca_val python -m remix_jax.sweep --sweep=experiments/lr_grid_codealpaca.py \\
        --out_dir=experiments/results/qwen0.5b/lr_grid_codealpaca --parallel=4 --devices=0

The schedule is configs/codealpaca.py's ``_small`` one (150 steps of 16 packed rows of 512 tokens); the held-out
loss reads the whole validation split (table1.py).
"""

from table1 import HUMANEVAL, lr_grid_sweep


def get_sweep():
    return lr_grid_sweep(HUMANEVAL)

"""Learning rates for the ARC-Challenge table (arc_c_table.py), as lr_grid.py chooses GSM8K's: every method at the
adapter learning rates 1e-4, 3e-4, 1e-3 ($REMIX_LR_GRID widens them), one seed, trained on the LLM-Adapters
ARC-Challenge train split minus a carved validation split and scored by the held-out loss on that split (never
the test split). Then ``experiments/select_lr.py`` picks each method's rate.

    python -m remix_jax.data --carve=DATA/llm_adapters/ARC-Challenge/train.json --num_val=200 --out=DATA/arc_c_val
    REMIX_TEMPLATE=plain REMIX_MODEL_PATH=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \\
    REMIX_ARC_C_VAL_DIR=DATA/arc_c_val python -m remix_jax.sweep --sweep=experiments/lr_grid_arc_c.py \\
        --out_dir=experiments/results/qwen0.5b/lr_grid_arc_c --parallel=4 --devices=0

The schedule is configs/arc_c.py's (210 steps of 16 questions); the held-out loss reads the whole validation split
(table1.py). The training target is "the correct answer is answerN", so the loss is mostly that of the answer token.
"""

from table1 import ARC_C, lr_grid_sweep


def get_sweep():
    return lr_grid_sweep(ARC_C)

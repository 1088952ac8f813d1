"""Learning rates for the ARC-Challenge table in OLMES's letter form (arc_c_mc_table.py), as lr_grid_arc_c.py
chooses them for the LLM-Adapters form: every method at the adapter learning rates 1e-4, 3e-4, 1e-3
($REMIX_LR_GRID widens them), one seed, trained on the LLM-Adapters ARC-Challenge train split minus a carved
validation split and scored by the held-out loss on that split (never the test split), both read in the letter form
(format ``arc_mc``, configs/arc_c_mc.py). Then ``experiments/select_lr.py`` picks each method's rate.

    python -m remix_jax.data --carve=DATA/llm_adapters/ARC-Challenge/train.json --num_val=200 --out=DATA/arc_c_val
    REMIX_TEMPLATE=plain REMIX_MODEL_PATH=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \\
    REMIX_ARC_C_VAL_DIR=DATA/arc_c_val python -m remix_jax.sweep --sweep=experiments/lr_grid_arc_c_mc.py \\
        --out_dir=experiments/results/qwen0.5b/lr_grid_arc_c_mc --parallel=4 --devices=0

The carve is lr_grid_arc_c.py's (the same rows, $REMIX_ARC_C_VAL_DIR); the schedule configs/arc_c_mc.py's (210 steps
of 16 questions). The training target is the answer letter " X", so the loss is that of the letter and EOS.
"""

from table1 import ARC_C_MC, lr_grid_sweep


def get_sweep():
    return lr_grid_sweep(ARC_C_MC)

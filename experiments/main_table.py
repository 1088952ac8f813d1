"""Paper Table 1 (GSM8K column) at small scale: LoRA, rsLoRA, DoRA, MixLoRA, HydraLoRA and ReMix at
comparable activated rank (see common.py), 3 seeds each; accuracy on GSM8K test and held-out loss.

    python -m remix_jax.sweep --sweep=experiments/main_table.py

Each method trains at its config's adapter learning rate, or, with $REMIX_SELECTED_LR naming the
selected_lr.json of ``experiments/select_lr.py``, at the rate chosen for it on validation data (lr_grid.py);
give such a table its own --out_dir (experiments/README.md, "The 0.5B study"). ReMix runs first (the longest
run, so a parallel sweep ends sooner) and processes its routing samples one at a time (same gradients, less
memory). The HumanEval and ARC-Challenge columns: humaneval_table.py, arc_c_table.py (table1.py).
"""

from table1 import GSM8K, table_sweep


def get_sweep():
    return table_sweep(GSM8K)

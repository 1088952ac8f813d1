"""Paper Table 1, ARC-Challenge column in OLMES's letter form: LoRA, rsLoRA, DoRA, MixLoRA, HydraLoRA and ReMix at
comparable activated rank (common.py), 3 seeds each, trained on the LLM-Adapters ARC-Challenge train split written
as "Question: ...\\n A. ...\\n B. ...\\nAnswer:" with the target " X" (format ``arc_mc``), and scored by the built-in
``arc_c_mc_0shot`` task (test split, zero-shot, the letters " A" .. " E" ranked by log-likelihood), the form it
trained in; the held-out loss on the test split in the same form (configs/arc_c_mc.py).

    REMIX_LLM_ADAPTERS_DIR=DATA/llm_adapters python -m remix_jax.sweep --sweep=experiments/arc_c_mc_table.py

Each method trains at its config's adapter learning rate, or, with $REMIX_ARC_C_MC_SELECTED_LR naming the
selected_lr.json that ``experiments/select_lr.py`` wrote for lr_grid_arc_c_mc.py, at the rate chosen for it on
validation rows carved from the train split.
"""

from table1 import ARC_C_MC, table_sweep


def get_sweep():
    return table_sweep(ARC_C_MC)

"""The letter-form ARC-Challenge table (``arc_c_mc_table.py``) at the adapter learning rates chosen by validation
*accuracy*: each method at the rate in the selected_lr.json that ``select_lr.py --maximize`` wrote for
``lr_grid_arc_c_mc_acc.py``, named by $REMIX_ARC_C_MC_ACC_SELECTED_LR, 3 seeds, the runs otherwise the table's.

Why a sweep of its own: the table proper keeps the rates chosen by validation loss (the protocol of every other
column). At 0.5B ReMix's, DoRA's, MixLoRA's and HydraLoRA's accuracy-chosen rate (1e-4) is one that
``arc_c_mc_table.py`` or ``arc_c_mc_rates.py`` already trained: queued with them, each of those runs here is the same
run as one of theirs and becomes a link to it (the sweep trains identical runs once), and only LoRA and rsLoRA,
whose choice on the widened grid is 1e-5, train here:

    REMIX_ARC_C_MC_SELECTED_LR=experiments/results/qwen0.5b/lr_grid_arc_c_mc/selected_lr.json \\
    REMIX_ARC_C_MC_ACC_SELECTED_LR=experiments/results/qwen0.5b/lr_grid_arc_c_mc_acc/selected_lr.json \\
    REMIX_TEMPLATE=plain REMIX_MODEL_PATH=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \\
    REMIX_LLM_ADAPTERS_DIR=DATA/llm_adapters python -m remix_jax.sweep \\
        --sweep=experiments/arc_c_mc_table.py,experiments/arc_c_mc_rates.py,experiments/arc_c_mc_table_acc.py \\
        --results_root=experiments/results/qwen0.5b
"""

from table1 import ARC_C_MC_ACC, table_sweep


def get_sweep():
    return table_sweep(ARC_C_MC_ACC, title="(test), each method at the rate chosen by validation accuracy")

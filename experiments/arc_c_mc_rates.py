"""The learning-rate control of the letter-form ARC-Challenge table (``arc_c_mc_table.py``): each method at the
adapter learning rates chosen for the *other* methods, 3 seeds, the runs otherwise the table's.

Why: that grid chose its rates on validation losses all within a few percent of a uniform guess among the letters,
and it gave the three single adapters 1e-3 and the three mixtures 1e-4; in the table the three at 1e-4 learned the
task and the three at 1e-3 stayed at chance, so the gap may be the rate's and not the method's. With the grid's
choices this sweep trains LoRA, rsLoRA and DoRA at 1e-4 and MixLoRA, HydraLoRA and ReMix at 1e-3:

    REMIX_ARC_C_MC_SELECTED_LR=experiments/results/qwen0.5b/lr_grid_arc_c_mc/selected_lr.json REMIX_TEMPLATE=plain \\
        REMIX_MODEL_PATH=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf REMIX_LLM_ADAPTERS_DIR=DATA/llm_adapters \\
        python -m remix_jax.sweep --sweep=experiments/arc_c_mc_rates.py --results_root=experiments/results/qwen0.5b \\
        --parallel=6 --devices=0

Variants are named ``<method>_at_<rate>`` (e.g. ``lora_at_0.0001``). Pair them with the table's runs with
``experiments/paired.py --results=experiments/results/qwen0.5b/arc_c_mc_rates
--also=experiments/results/qwen0.5b/arc_c_mc_table --task=arc_c_mc_0shot --pairs=lora_at_0.0001:lora,...``.
Requires the variable: without chosen rates there is nothing to swap.
"""

from table1 import ARC_C_MC, rate_control_sweep


def get_sweep():
    return rate_control_sweep(ARC_C_MC)

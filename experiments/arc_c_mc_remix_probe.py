"""Why does ReMix learn the letter-form ARC-Challenge task least? ReMix as in ``arc_c_mc_table_acc.py`` (at the
rate chosen by validation accuracy, $REMIX_ARC_C_MC_ACC_SELECTED_LR) against two changes of it, 3 seeds each
(``common.REMIX_PROBE_VARIANTS``; remix_probe.py asks the same on GSM8K):

- ``remix_alpha32``: alpha 32 instead of 16, so each selected expert enters with omega = alpha / (k r) = 2, the
  scale LoRA's rank-16 product has (alpha 32 / r 16). At alpha 16 a token's two experts are a rank-16 LoRA at half
  that scale. If ReMix learns less because its update is smaller, this closes the gap.
- ``uniform``: the same experts and weights with no router (``uniform_random``: k experts drawn uniformly for
  every token, in training and at inference), one routing sample a step (the library draws several only for
  ReMix, whose estimator needs them; ReMix's M averages its SFT gradient over M routings, which the M sweep found
  worth little on GSM8K). If the learned routing adds nothing on this task, ReMix and this reference score alike.

At 0.5B (experiments/README.md): ReMix 34.30%, alpha 32 36.80% (+2.50 points paired over seeds, [+1.76, +3.25]),
no router 32.82% (-1.48, [-3.33, +0.37]); the other five methods scored 36.6-41.2% at 1e-4. Queued with the
table's sweeps, "remix" is the table's run:

    REMIX_ARC_C_MC_SELECTED_LR=experiments/results/qwen0.5b/lr_grid_arc_c_mc/selected_lr.json \\
    REMIX_ARC_C_MC_ACC_SELECTED_LR=experiments/results/qwen0.5b/lr_grid_arc_c_mc_acc/selected_lr.json \\
    REMIX_TEMPLATE=plain REMIX_MODEL_PATH=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \\
    REMIX_LLM_ADAPTERS_DIR=DATA/llm_adapters python -m remix_jax.sweep \\
        --sweep=experiments/arc_c_mc_table.py,experiments/arc_c_mc_remix_probe.py \\
        --results_root=experiments/results/qwen0.5b --parallel=6 --devices=0
"""

from common import REMIX_PROBE_VARIANTS
from table1 import ARC_C_MC_ACC, method_variants_sweep


def get_sweep():
    return method_variants_sweep(ARC_C_MC_ACC, "remix", REMIX_PROBE_VARIANTS,
                                 "(test), ReMix at its accuracy-chosen rate against two changes of it")

"""ReMix on GSM8K against the two changes the letter-form ARC-Challenge probe tried (arc_c_mc_remix_probe.py,
``common.REMIX_PROBE_VARIANTS``), 3 seeds each, every run trained as the main table's ReMix:

- ``remix_alpha32``: alpha 32, each selected expert at LoRA r16's scale (omega = 2 instead of 1). On the letter-form
  task it gained 2.5 points; whether ReMix's default alpha is too small is settled only where ReMix is level with
  LoRA, as on GSM8K.
- ``uniform``: no router (k experts drawn uniformly per token, in training and at inference), one routing sample a
  step: what the learned routing is worth on GSM8K.
- ``uniform_m4``: the same without a router but with ReMix's four routing samples a step (the loss averaged over
  four uniform draws, one at a time as ReMix's): the main table's ReMix run but for the routing rule, so that
  what ``uniform`` loses is not put down to its fewer samples.

With $REMIX_SELECTED_LR (the 0.5B study) "remix" resolves to exactly the main table's ReMix run, so queued with
main_table.py it is that run and only the nine variant runs train:

    REMIX_SELECTED_LR=experiments/results/qwen0.5b/lr_grid/selected_lr.json REMIX_TEMPLATE=plain \\
    REMIX_MODEL_PATH=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf REMIX_GSM8K_DIR=DATA/gsm8k python -m remix_jax.sweep \\
        --sweep=experiments/main_table.py,experiments/remix_probe.py \\
        --results_root=experiments/results/qwen0.5b --parallel=4 --devices=0
"""

from common import REMIX_PROBE_VARIANTS, UNIFORM_M_SAMPLES, remix_variants_sweep


def get_sweep():
    return remix_variants_sweep([{"name": "remix"}, *REMIX_PROBE_VARIANTS, UNIFORM_M_SAMPLES],
                                "ReMix on GSM8K against alpha 32 (each expert at LoRA's scale) and no router",
                                "accuracy.png", "ReMix against alpha 32 and no router")

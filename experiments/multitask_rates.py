"""The learning-rate control of the multi-task run: each method of ``multitask.py`` at the adapter learning rates
chosen for the *other* methods, 3 seeds, so that together with ``multitask.py``'s runs every method is trained at
every rate any of them was given.

Why: the multi-task runs take each method's rate from another task's validation grid
($REMIX_MULTITASK_SELECTED_LR; the 0.5B study points it at the GSM8K grid's choice, where LoRA got 3e-4 and the
routed methods 1e-3), so a gap between LoRA and the routed methods on the mixture may be the rate's and not the
method's. This sweep separates the two: LoRA at 1e-3, MixLoRA / HydraLoRA / ReMix at 3e-4 (with that file).

    REMIX_MULTITASK_SELECTED_LR=experiments/results/qwen0.5b/lr_grid/selected_lr.json REMIX_TEMPLATE=plain \\
        REMIX_MODEL_PATH=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf REMIX_LLM_ADAPTERS_DIR=DATA/llm_adapters \\
        python -m remix_jax.sweep --sweep=experiments/multitask_rates.py --results_root=experiments/results/qwen0.5b \\
        --parallel=6 --devices=0

Variants are named ``<method>_at_<rate>`` (e.g. ``lora_at_0.001``); everything else (data, schedule, scoring,
routing statistics, ReMix's samples one at a time) is ``multitask.py``'s. Requires the variable: without chosen
rates there is nothing to swap.
"""

import os

from multitask import LR_ENV, methods, sweep_for

from remix_jax.cli import UserError
from remix_jax.sweep import KEYS


def swapped_methods() -> list[dict]:
    """Each of ``multitask.methods()`` at every adapter rate chosen for another method but not for itself."""
    if not os.environ.get(LR_ENV, ""):
        raise UserError(f"${LR_ENV} is not set: this sweep trains each method at the rates chosen for the others",
                        "point it at a select_lr.py output, e.g. experiments/results/qwen0.5b/lr_grid/selected_lr.json")
    chosen = methods()
    rates = sorted({m["overrides"][KEYS.adapter_lr] for m in chosen})
    return [dict(m, name=f"{m['name']}_at_{rate:g}", overrides={**m["overrides"], KEYS.adapter_lr: rate})
            for m in chosen for rate in rates if rate != m["overrides"][KEYS.adapter_lr]]


def get_sweep():
    return sweep_for(swapped_methods(), "One model, four tasks, each method at the other methods' rates: accuracy",
                     accuracy_plots=False)

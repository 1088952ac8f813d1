"""A setting the paper did not run: one model trained on a mixture of ARC-Challenge, ARC-Easy, BoolQ and
OpenBookQA (the LLM-Adapters commonsense splits) and evaluated on each, where experts specialised by task
should matter most. Methods at comparable activated rank (common.py), 3 seeds each.

Runs ``configs/multitask.py`` (variants per method, training on the mixture and writing eval/<task>.json
for the four tasks); set $REMIX_LLM_ADAPTERS_DIR to the folder of the LLM-Adapters files.

    REMIX_LLM_ADAPTERS_DIR=DATA python -m remix_jax.sweep --sweep=experiments/multitask.py
    python experiments/specialisation.py --results=experiments/results/multitask

Learning rates: every method at the config's 2e-4 (router 1e-3), or, with $REMIX_MULTITASK_SELECTED_LR naming a
``select_lr.py`` output, each method at the adapter learning rate chosen there. No grid has been run on the
mixture itself; the 0.5B study points the variable at the GSM8K grid's choice
(``experiments/results/qwen0.5b/lr_grid/selected_lr.json``), rates chosen on another task's validation loss, and
says so beside the results. With the variable set, ReMix also processes its routing samples one at a time
(``train.sample_chunk`` = 1, the same gradients in less memory), as in the 0.5B study's other sweeps, so that
several 0.5B runs share one GPU.

Scoring: zero-shot; each option is the continuation "the correct answer is <label>" (answer1 ... answer5, or true /
false for BoolQ: the training target) and the options are ranked by their log-likelihood per token
(``eval.mc_normalize``: the summed log-probability divided by the continuation's token count), so a label is not
favoured for tokenising into fewer pieces (the continuations differ only in the label, so the ranking changes
against the summed log-likelihood only where labels tokenise to different lengths). The table gives
each task's accuracy under that ranking (``<task>/accuracy``; ``acc_per_token`` in the jsons). Every task's json
also keeps the routing statistics of its scoring passes (``eval.routing_stats``: expert load, ESS and entropy per
block); ``specialisation.py`` reads them and reports which experts each task uses per block and how far the tasks'
routing differs (Jensen-Shannon divergence), for the routed methods (MixLoRA, HydraLoRA, ReMix).
"""

import os

from common import (
    METHODS,
    MULTITASK_CONFIG,
    MULTITASK_TASKS,
    SEEDS,
    model_path,
    multitask_data,
    remix_one_sample_at_a_time,
    selected_methods,
    variant,
)

from remix_jax.sweep import KEYS

SHOWN = [m for m in METHODS if m["name"] in ("lora", "mixlora", "hydralora", "remix")]
LR_ENV = "REMIX_MULTITASK_SELECTED_LR"
# Rank options by per-token log-likelihood, and record each task's routing statistics (specialisation.py).
SCORING = {"eval.mc_normalize": True, "eval.routing_stats": True}


def methods() -> list[dict]:
    """SHOWN at the rates $REMIX_MULTITASK_SELECTED_LR names (the 0.5B study: then ReMix one sample at a time)."""
    chosen = selected_methods(SHOWN, env=LR_ENV)
    return remix_one_sample_at_a_time(chosen) if os.environ.get(LR_ENV, "") else chosen


def sweep_for(variants: list[dict], title: str, accuracy_plots: bool = True) -> dict:
    """The multi-task sweep over ``variants`` (x SEEDS): the mixture, the scoring, one table of the four tasks'
    accuracies titled ``title``, per-task bar plots (unless ``accuracy_plots`` is False) and the ESS plot."""
    columns = [f"{t}/accuracy" for t in MULTITASK_TASKS]
    bars = [{"kind": "bar", "x": "variant", "y": c, "file": f"accuracy_{c.split('/')[0]}.png",
             "title": f"{c.split('/')[0]} accuracy (multi-task model)"} for c in columns] if accuracy_plots else []
    return {
        "config": MULTITASK_CONFIG + variant("remix"),
        "base_overrides": {KEYS.model_path: model_path(), **multitask_data(), **SCORING},
        "grid": [variants],
        "seeds": SEEDS,
        "report": {
            "tables": [{"title": title, "rows": ["variant"], "columns": columns}],
            "plots": bars + [{"kind": "ess", "series": "variant", "file": "ess_last_block.png"}],
        },
    }


def get_sweep():
    return sweep_for(methods(), "One model, four tasks: accuracy (options ranked by per-token log-likelihood)")

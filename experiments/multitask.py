"""A setting the paper did not run: one model trained on a mixture of ARC-Challenge, ARC-Easy, BoolQ and
OpenBookQA (the LLM-Adapters commonsense splits) and evaluated on each, where experts specialised by task
should matter most. Methods at comparable activated rank (common.py), 3 seeds each.

Runs ``configs/multitask.py`` (variants per method, training on the mixture and writing eval/<task>.json
for the four tasks); set $REMIX_LLM_ADAPTERS_DIR to the folder of the LLM-Adapters files.

    REMIX_LLM_ADAPTERS_DIR=DATA python -m remix_jax.sweep --sweep=experiments/multitask.py
"""

from common import METHODS, MULTITASK_CONFIG, MULTITASK_TASKS, SEEDS, model_path, multitask_data, variant

from remix_jax.sweep import KEYS

SHOWN = [m for m in METHODS if m["name"] in ("lora", "mixlora", "hydralora", "remix")]


def get_sweep():
    columns = [f"{t}/accuracy" for t in MULTITASK_TASKS]
    return {
        "config": MULTITASK_CONFIG + variant("remix"),
        "base_overrides": {KEYS.model_path: model_path(), **multitask_data()},
        "grid": [SHOWN],
        "seeds": SEEDS,
        "report": {
            "tables": [{"title": "One model, four tasks: accuracy", "rows": ["variant"], "columns": columns}],
            "plots": [{"kind": "bar", "x": "variant", "y": c, "file": f"accuracy_{c.split('/')[0]}.png",
                       "title": f"{c.split('/')[0]} accuracy (multi-task model)"} for c in columns]
                     + [{"kind": "ess", "series": "variant", "file": "ess_last_block.png"}],
        },
    }

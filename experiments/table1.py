"""The paper's Table 1 columns as sweeps (imported by the sweep files; not a sweep itself): GSM8K, HumanEval
(trained on CodeAlpaca) and ARC-Challenge (trained on its train split, in the LLM-Adapters form or in OLMES's letter
form). Each column has a learning-rate grid scored on validation rows carved from its training data
(``lr_grid_sweep``: lr_grid.py, lr_grid_codealpaca.py, lr_grid_arc_c.py, lr_grid_arc_c_mc.py) and a main table at
the rates ``select_lr.py`` chose from it (``table_sweep``: main_table.py, humaneval_table.py, arc_c_table.py,
arc_c_mc_table.py): the methods of common.py at comparable activated rank, ReMix first and
processing its routing samples one at a time (same gradients, less memory, so several runs share a GPU). A table's
rate control (``rate_control_sweep``: arc_c_mc_rates.py) trains each method at the rates chosen for the others.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from common import (
    ARC_C_CONFIG,
    ARC_C_MC_CONFIG,
    ARC_C_MC_HELDOUT_TASK,
    ARC_C_MC_TASK,
    ARC_C_TASK,
    CODEALPACA_CONFIG,
    GSM8K_CONFIG,
    GSM8K_TASK,
    HUMANEVAL_TASK,
    METHODS,
    SEEDS,
    arc_c_data,
    arc_c_mc_data,
    arc_c_mc_validation_data,
    arc_c_validation_data,
    codealpaca_data,
    codealpaca_validation_data,
    gsm8k_data,
    learning_rates,
    model_path,
    remix_one_sample_at_a_time,
    selected_methods,
    template,
    validation_data,
    variant,
)

from remix_jax.cli import UserError
from remix_jax.sweep import KEYS


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of Table 1: its config, evaluation and data, as the sweeps run it."""

    config: str  # the task config file (variants per method)
    task: str  # its evaluation's eval/<task>.json name
    score: str  # the task's score in eval/<task>.json ("accuracy", "pass@1")
    data_title: str  # the training data, in titles
    eval_title: str  # the evaluation, in titles
    selected_lr_env: str  # the variable naming select_lr.py's output for this column's grid
    data: Callable[[], dict]  # the table's data-path overrides
    validation: Callable[[], dict]  # the grid's overrides: train on a carve, held-out loss on its validation rows
    validation_batches: int  # the grid's held-out batches
    # Settings that change only memory and speed, given to the grid and the table alike (see HUMANEVAL).
    memory: dict = dataclasses.field(default_factory=dict)
    # The grid's evaluation of the validation rows besides their loss ("" = none): a task of the column's config
    # that scores eval.heldout's rows (ARC_C_MC: arc_c_mc_heldout, their letters), for select_lr.py --maximize.
    validation_task: str = ""

    @property
    def metric(self) -> str:
        return f"{self.task}/{self.score}"


GSM8K = Column(GSM8K_CONFIG, GSM8K_TASK, "accuracy", "GSM8K", "GSM8K", "REMIX_SELECTED_LR", gsm8k_data,
               validation_data, 12)
# The held-out loss of the new grids reads the whole validation split: it is read once, and 64 batches of 16 rows
# hold more than any 500-row split.
# Its cross-entropy runs in chunks of 2048 logits rows instead of the default 8192 (the same loss up to float
# rounding, training/losses.py). This was meant to save memory, on the reading that a GSM8K-size step's failed 14.9 GiB
# allocation was three float32 logits buffers (16 x 512 rows x Qwen2.5's 151,936-token vocabulary); it was not: the
# allocation is the step's whole temporary buffer, and with 2048-row chunks a CodeAlpaca step still asks for 14.1 GiB
# (LoRA), 15.0 GiB (ReMix, one routing sample at a time) and 18.5 GiB (DoRA) on an H100. Kept so that every run of
# the column records the same config; about four such runs share an 80 GB card.
HUMANEVAL = Column(CODEALPACA_CONFIG, HUMANEVAL_TASK, "pass@1", "CodeAlpaca", "HumanEval",
                   "REMIX_CODEALPACA_SELECTED_LR", codealpaca_data, codealpaca_validation_data, 64,
                   memory={"train.loss_chunk_tokens": 2048})
ARC_C = Column(ARC_C_CONFIG, ARC_C_TASK, "accuracy", "ARC-Challenge", "ARC-Challenge", "REMIX_ARC_C_SELECTED_LR",
               arc_c_data, arc_c_validation_data, 64)
# ARC-Challenge in OLMES's letter form (configs/arc_c_mc.py): the same rows, trained on " X" after the listed
# options and scored by the built-in arc_c_mc_0shot task; its own grid and rates.
ARC_C_MC = Column(ARC_C_MC_CONFIG, ARC_C_MC_TASK, "accuracy", "ARC-Challenge (letter form)",
                  "ARC-Challenge (letter form)", "REMIX_ARC_C_MC_SELECTED_LR", arc_c_mc_data, arc_c_mc_validation_data,
                  64, validation_task=ARC_C_MC_HELDOUT_TASK)


# The letter-form column at the rates chosen by validation accuracy (select_lr.py --maximize on
# lr_grid_arc_c_mc_acc.py): arc_c_mc_table_acc.py, arc_c_mc_remix_probe.py.
ARC_C_MC_ACC = dataclasses.replace(ARC_C_MC, selected_lr_env="REMIX_ARC_C_MC_ACC_SELECTED_LR")


def _remix_first(methods: list[dict]) -> list[dict]:
    # ReMix first: the longest runs start first, so a parallel sweep ends sooner.
    return remix_one_sample_at_a_time(sorted(methods, key=lambda m: m["name"] != "remix"))


def lr_grid_sweep(col: Column, score_validation: bool = False) -> dict:
    """Every method at the adapter learning rates of ``learning_rates()``, one seed, trained on the column's carve
    (``col.validation``) and scored by the held-out loss on its validation rows (never the test set); with
    ``score_validation``, also by ``col.validation_task`` on the same rows (its accuracy, for select_lr.py
    --maximize)."""
    if score_validation and not col.validation_task:
        raise ValueError(f"{col.eval_title}: the column has no validation task")
    plots = [{"kind": "line", "x": KEYS.adapter_lr, "y": "heldout/heldout_loss", "series": "variant",
              "file": "validation_loss.png", "title": "Validation loss against adapter learning rate"}]
    scored = {"eval.tasks": col.validation_task} if score_validation else {}
    if scored:
        plots.append({"kind": "line", "x": KEYS.adapter_lr, "y": f"{col.validation_task}/accuracy",
                      "series": "variant", "file": "validation_accuracy.png",
                      "title": "Validation accuracy against adapter learning rate"})
    return {
        "config": col.config + variant("remix"),
        "base_overrides": {KEYS.model_path: model_path(), **col.validation(), **scored, **col.memory,
                           "eval.at_start": False, "eval.heldout.num_batches": col.validation_batches,
                           "train.checkpoint_every": 0},
        "grid": [_remix_first(METHODS), {KEYS.adapter_lr: learning_rates()}],
        "seeds": [0],
        "report": {
            "tables": [{"title": f"{col.data_title} validation {'loss and accuracy' if scored else 'loss'} (carved "
                                 "from train) by learning rate", "rows": ["variant", KEYS.adapter_lr]}],
            "plots": plots,
        },
    }


def table_sweep(col: Column, title: str = "(test), mean ± std over seeds") -> dict:
    """The six methods x SEEDS on the column's full training data, scored on its test set: each method at the
    adapter learning rate in the selected_lr.json named by $``col.selected_lr_env``, else its config's rate.
    ``title`` follows the column's name in the report's table title."""
    return _test_sweep(col, _remix_first(selected_methods(METHODS, env=col.selected_lr_env)),
                       f"{col.eval_title} {title}")


def rate_control_sweep(col: Column) -> dict:
    """The column's table with each method at every adapter learning rate chosen for another method but not for
    itself (variants ``<method>_at_<rate>``), SEEDS seeds, the runs otherwise ``table_sweep``'s: together with the
    table, every method is trained at every rate any of them was given, so that a gap the rate explains is not
    read as the method's. Needs $``col.selected_lr_env`` (without chosen rates there is nothing to swap)."""
    _require_selection(col, "this sweep trains each method at the rates chosen for the others")
    chosen = _remix_first(selected_methods(METHODS, env=col.selected_lr_env))
    rates = sorted({m["overrides"][KEYS.adapter_lr] for m in chosen})
    swapped = [dict(m, name=f"{m['name']}_at_{rate:g}", overrides={**m["overrides"], KEYS.adapter_lr: rate})
               for m in chosen for rate in rates if rate != m["overrides"][KEYS.adapter_lr]]
    if not swapped:
        raise UserError(f"${col.selected_lr_env}: every method was given the rate {rates[0]:g}: there is no other "
                        "rate to train them at")
    return _test_sweep(col, swapped, f"{col.eval_title} (test), each method at the other methods' rates")


def method_variants_sweep(col: Column, method: str, variants: list[dict], title: str) -> dict:
    """``method`` as the column's table trains it (its rate from $``col.selected_lr_env``, which must be set) and
    its ``variants`` ({"name", "overrides"} on top of it), SEEDS seeds, scored on the column's test set; ``title``
    follows the column's name in the report. The unchanged method keeps the table's name, so queued with the
    table it is the table's run."""
    _require_selection(col, f"the variants train at the rate chosen for {method}")
    base = next(m for m in _remix_first(selected_methods(METHODS, env=col.selected_lr_env)) if m["name"] == method)
    changed = [dict(base, name=v["name"], overrides={**base["overrides"], **v["overrides"]}) for v in variants]
    return _test_sweep(col, [base, *changed], f"{col.eval_title} {title}")


def _require_selection(col: Column, why: str) -> None:
    """A UserError unless $``col.selected_lr_env`` names the rates a sweep needs (``why``)."""
    if not os.environ.get(col.selected_lr_env, ""):
        raise UserError(f"${col.selected_lr_env} is not set: {why}",
                        "point it at the select_lr.py output of the column's grid")


def _test_sweep(col: Column, methods: list[dict], title: str) -> dict:
    """``methods`` x SEEDS on the column's full training data, scored on its test set."""
    return {
        "config": col.config + variant("remix"),
        "base_overrides": {KEYS.model_path: model_path(), **col.data(), **template(), **col.memory,
                           "eval.at_start": False},
        "grid": [methods],
        "seeds": SEEDS,
        "report": {
            "tables": [{"title": title, "rows": ["variant"]}],
            "plots": [
                {"kind": "bar", "x": "variant", "y": col.metric, "file": "accuracy.png",
                 "title": f"{col.eval_title} {col.score} by method"},
                {"kind": "bar", "x": "variant", "y": f"{col.task}/heldout_loss", "file": "heldout_loss.png",
                 "title": f"{col.eval_title} held-out loss by method"},
                {"kind": "ess", "series": "variant", "block": "last", "file": "ess_last_block.png",
                 "title": "Routing ESS over training, last block (paper Figure 3)"},
            ],
        },
    }

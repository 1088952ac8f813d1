"""experiments/multitask.py: four methods x 3 seeds on the four-task mixture, at the config's learning rate, or at the
rates of the select_lr.py output that $REMIX_MULTITASK_SELECTED_LR names (never $REMIX_SELECTED_LR's), with ReMix's
routing samples then one at a time."""

import json
import pathlib

import pytest
from test_table1_sweeps import isolated_sweep_env, resolve

from remix_jax.cli import UserError
from remix_jax.sweep import KEYS, load_sweep

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
ENV = ("REMIX_MODEL_PATH", "REMIX_SCALE", "REMIX_LLM_ADAPTERS_DIR", "REMIX_SELECTED_LR",
       "REMIX_MULTITASK_SELECTED_LR")
RATES = {"lora": 3e-4, "mixlora": 1e-3, "hydralora": 1e-4, "remix": 3e-3}


def test_the_multitask_rates_come_from_their_own_variable(monkeypatch, tmp_path, data_dir):
    paths = isolated_sweep_env(monkeypatch, tmp_path, ENV, rates=RATES)
    monkeypatch.setenv("REMIX_LLM_ADAPTERS_DIR", str(data_dir / "llm_adapters"))
    other = tmp_path / "gsm8k_selected_lr.json"  # the GSM8K grid's choice: not read unless named for this sweep
    other.write_text(json.dumps({m: {"adapter_lr": 5e-5} for m in RATES}))
    monkeypatch.setenv("REMIX_SELECTED_LR", str(other))
    default = load_sweep(EXPERIMENTS / "multitask.py", workdir_root="/nonexistent").runs
    assert sorted({r.params["variant"] for r in default}) == sorted(RATES)
    assert len(default) == 12 and all(KEYS.adapter_lr not in r.overrides for r in default)
    assert all(KEYS.sample_chunk not in r.overrides for r in default)  # 135M: all samples at once
    assert resolve(default[0]).optimizer.adapter_lr == 2e-4
    monkeypatch.setenv("REMIX_MULTITASK_SELECTED_LR", str(paths["selected"]))
    runs = load_sweep(EXPERIMENTS / "multitask.py", workdir_root="/nonexistent").runs
    assert [r.name for r in runs] == [r.name for r in default]
    for run, before in zip(runs, default, strict=True):
        one_at_a_time = {KEYS.sample_chunk: 1} if run.params["variant"] == "remix" else {}
        assert run.overrides == {**before.overrides, KEYS.adapter_lr: RATES[run.params["variant"]], **one_at_a_time}
    for run in runs[::3]:
        assert resolve(run).optimizer.adapter_lr == RATES[run.params["variant"]]
    paths["selected"].write_text(json.dumps({m: {"adapter_lr": 1e-4} for m in RATES if m != "remix"}))
    with pytest.raises(UserError, match=r"^\$REMIX_MULTITASK_SELECTED_LR: .*no learning rate for method\(s\) remix"):
        load_sweep(EXPERIMENTS / "multitask.py", workdir_root="/nonexistent")

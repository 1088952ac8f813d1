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


def test_the_rate_control_trains_each_method_at_the_others_rates(monkeypatch, tmp_path, data_dir):
    """multitask_rates.py: with chosen rates {3e-4, 1e-3} each method runs at the one it was not given, ReMix still
    one sample at a time, and the runs are otherwise multitask.py's; without the variable it is an error."""
    rates = {"lora": 3e-4, "mixlora": 1e-3, "hydralora": 1e-3, "remix": 1e-3}
    paths = isolated_sweep_env(monkeypatch, tmp_path, ENV, rates=rates)
    monkeypatch.setenv("REMIX_LLM_ADAPTERS_DIR", str(data_dir / "llm_adapters"))
    with pytest.raises(UserError, match=r"REMIX_MULTITASK_SELECTED_LR is not set"):
        load_sweep(EXPERIMENTS / "multitask_rates.py", workdir_root="/nonexistent")
    monkeypatch.setenv("REMIX_MULTITASK_SELECTED_LR", str(paths["selected"]))
    main = {r.name: r for r in load_sweep(EXPERIMENTS / "multitask.py", workdir_root="/nonexistent").runs}
    runs = load_sweep(EXPERIMENTS / "multitask_rates.py", workdir_root="/nonexistent").runs
    assert sorted(r.name for r in runs) == sorted(
        f"{m}_at_{rate}__seed={s}" for m, rate in [("lora", "0.001"), ("mixlora", "0.0003"), ("hydralora", "0.0003"),
                                                   ("remix", "0.0003")] for s in (0, 1, 2))
    for run in runs:
        method, rate = run.params["variant"].split("_at_")
        twin = main[f"{method}__seed={run.params['seed']}"]
        assert run.overrides == {**twin.overrides, KEYS.adapter_lr: float(rate)}, run.name
        assert run.config == twin.config
    remix = resolve(next(r for r in runs if r.name == "remix_at_0.0003__seed=1"))
    assert remix.optimizer.adapter_lr == 3e-4 and remix.train.sample_chunk == 1 and remix.seed == 1

"""experiments/collapse_long.py: the 1,000-step collapse study expands to ReMix, MixLoRA, MixLoRA without its
load-balancing loss and HydraLoRA, trained on a GSM8K carve and scored on its validation rows only (never the test
set), each at the rate chosen on the GSM8K grid (MixLoRA's for both MixLoRA runs); every command resolves to a
config that validates."""

import pathlib

import pytest
from test_table1_sweeps import isolated_sweep_env, problems, resolve

from remix_jax.data import carve as carve_lib
from remix_jax.sweep import KEYS, load_sweep

REPO = pathlib.Path(__file__).resolve().parents[1]
SWEEP = REPO / "experiments" / "collapse_long.py"
ENV = ("REMIX_MODEL_PATH", "REMIX_SCALE", "REMIX_TEMPLATE", "REMIX_SELECTED_LR", "REMIX_GSM8K_VAL_DIR", "REMIX_SEEDS")
RATES = {"remix": 1e-3, "lora": 3e-4, "rslora": 1e-4, "dora": 3e-4, "mixlora": 3e-3, "hydralora": 3e-4}


@pytest.fixture
def env(tmp_path, monkeypatch, data_dir):
    selected = isolated_sweep_env(monkeypatch, tmp_path, ENV, RATES)["selected"]
    carve_lib.carve(data_dir / "gsm8k" / "train.jsonl", tmp_path / "gsm8k_val", 10)
    for k, v in {"REMIX_TEMPLATE": "plain", "REMIX_GSM8K_VAL_DIR": tmp_path / "gsm8k_val",
                 "REMIX_SELECTED_LR": selected}.items():
        monkeypatch.setenv(k, str(v))
    return tmp_path


def test_four_routed_runs_on_the_carve_at_the_selected_rates(env):
    runs = load_sweep(SWEEP, workdir_root=str(env / "runs")).runs
    assert [r.name for r in runs] == ["remix__seed=0", "mixlora__seed=0", "mixlora_nolb__seed=0", "hydralora__seed=0"]
    for run in runs:
        c = resolve(run)
        assert problems(run) == []
        assert c.train.num_steps == 1000 and c.train.log_every == 10 and c.train.eval_every == 100
        assert c.data.sources.gsm8k.path == str(env / "gsm8k_val" / "train.jsonl")
        assert c.eval.heldout.source.path == str(env / "gsm8k_val" / "validation.jsonl")
        assert c.eval.tasks == ""  # the validation rows only: no test-set scoring
        assert c.data.template == "plain"
        name = run.params["variant"]
        assert c.optimizer.adapter_lr == RATES["mixlora" if name == "mixlora_nolb" else name]
        assert c.adapter.load_balance_coef == (0.0 if name == "mixlora_nolb" else 0.01)
        assert c.adapter.num_experts == 8 and c.adapter.rank == 8
    assert resolve(runs[0]).adapter.method == "remix" and resolve(runs[0]).train.sample_chunk == 1
    assert {resolve(r).adapter.method for r in runs[1:3]} == {"mixlora"}
    assert resolve(runs[3]).adapter.method == "hydralora"


def test_seeds_variable(env, monkeypatch):
    monkeypatch.setenv("REMIX_SEEDS", "0,1,2")
    runs = load_sweep(SWEEP, workdir_root=str(env / "runs")).runs
    assert len(runs) == 12 and {r.overrides[KEYS.seed] for r in runs} == {0, 1, 2}
    monkeypatch.setenv("REMIX_SEEDS", "0,x")
    with pytest.raises(ValueError, match=r"\$REMIX_SEEDS: '0,x' is not a comma-separated list of integers"):
        load_sweep(SWEEP, workdir_root=str(env / "runs"))

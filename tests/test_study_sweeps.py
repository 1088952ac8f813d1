"""The study sweeps (k_sweep.py, m_sweep.py, ablations.py, rank_comparison.py, causal_credit.py) with
$REMIX_SELECTED_LR, as the 0.5B study runs them: every ReMix run at ReMix's chosen adapter rate and one routing
sample at a time, so that k = 2, M = 4, the full-ReMix ablation and causal credit's RLOO cell resolve to exactly the
main table's ReMix run; LoRA of the rank comparison at LoRA's chosen rate. Without the variable nothing changes
(the 135M results). Every command resolves to a config that validates."""

import pathlib
import sys

import pytest
from test_table1_sweeps import isolated_sweep_env, problems, resolve

from remix_jax.sweep import KEYS, load_sweep

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
ENV = ("REMIX_MODEL_PATH", "REMIX_SCALE", "REMIX_TEMPLATE", "REMIX_SELECTED_LR", "REMIX_GSM8K_DIR", "REMIX_SEEDS")
RATES = {"remix": 1e-3, "lora": 3e-4, "rslora": 1e-4, "dora": 3e-4, "mixlora": 3e-3, "hydralora": 3e-4}


@pytest.fixture
def env(tmp_path, monkeypatch, data_dir):
    selected = isolated_sweep_env(monkeypatch, tmp_path, ENV, RATES)["selected"]
    for k, v in {"REMIX_TEMPLATE": "plain", "REMIX_GSM8K_DIR": data_dir / "gsm8k"}.items():
        monkeypatch.setenv(k, str(v))
    return {"root": tmp_path, "selected": str(selected)}


def _runs(name, root):
    for mod in ("common", "select_lr", "table1"):
        sys.modules.pop(mod, None)
    return {r.name: r for r in load_sweep(EXPERIMENTS / f"{name}.py", workdir_root=str(root / name)).runs}


def test_study_cells_are_the_main_table_remix(env, monkeypatch):
    monkeypatch.setenv("REMIX_SELECTED_LR", env["selected"])
    main = resolve(_runs("main_table", env["root"])["remix__seed=0"])
    assert main.optimizer.adapter_lr == RATES["remix"] and main.train.sample_chunk == 1
    cells = {"k_sweep": "top_k=2__seed=0", "m_sweep": "M4__seed=0", "ablations": "remix__seed=0",
             "rank_comparison": "remix_k2__seed=0", "causal_credit": "remix__seed=0"}
    for sweep, name in cells.items():
        runs = _runs(sweep, env["root"])
        assert name in runs, (sweep, sorted(runs))
        assert resolve(runs[name]).to_dict() == main.to_dict(), sweep
        for run in runs.values():
            assert problems(run) == [], run.name
            c = resolve(run)
            if c.adapter.method == "remix":
                assert c.optimizer.adapter_lr == RATES["remix"] and c.train.sample_chunk == 1, run.name
            else:
                assert c.adapter.method == "lora" and c.optimizer.adapter_lr == RATES["lora"], run.name
    causal = resolve(_runs("causal_credit", env["root"])["causal__seed=1"]).to_dict()
    assert causal["train"].pop("credit") == "causal" and main.train.credit == "sequence"
    twin = resolve(_runs("main_table", env["root"])["remix__seed=1"]).to_dict()
    twin["train"].pop("credit")
    assert causal == twin  # the main table's ReMix of the same seed, credit aside
    m32 = resolve(_runs("m_sweep", env["root"])["M32__seed=0"])
    assert m32.train.num_samples == 32 and m32.train.sample_chunk == 1


def test_without_the_variable_nothing_changes(env):
    k2 = resolve(_runs("k_sweep", env["root"])["top_k=2__seed=0"])
    assert k2.train.sample_chunk == 0 and k2.optimizer.adapter_lr != RATES["remix"]
    m = _runs("m_sweep", env["root"])
    assert resolve(m["M32__seed=0"]).train.sample_chunk == 8 and resolve(m["M4__seed=0"]).train.sample_chunk == 0
    lora = resolve(_runs("rank_comparison", env["root"])["lora_r16__seed=0"])
    assert lora.adapter.rank == 16 and lora.optimizer.adapter_lr != RATES["lora"]
    assert KEYS.adapter_lr == "optimizer.adapter_lr"


def test_rank_comparison_has_a_rank_64_lora_control(env, monkeypatch):
    monkeypatch.setenv("REMIX_SELECTED_LR", env["selected"])
    runs = _runs("rank_comparison", env["root"])
    control = [resolve(runs[f"lora_r64__seed={s}"]) for s in (0, 1, 2)]
    assert all(c.adapter.method == "lora" and c.adapter.rank == 64 for c in control)
    assert all(c.optimizer.adapter_lr == RATES["lora"] for c in control)
    assert {k: runs["lora_r64__seed=0"].params[k] for k in ("k", "family")} == {"k": 8, "family": "lora"}


def test_remix_probe_changes_one_thing_of_the_main_table_remix(env, monkeypatch):
    """remix_probe.py: "remix" is the main table's ReMix run (queued with main_table.py, the same run); alpha 32
    differs from it in alpha only, the router-free reference in the routing rule and one routing sample a step, and
    the router-free reference with four samples in the routing rule only."""
    from remix_jax.sweep.runner import link_duplicates

    monkeypatch.setenv("REMIX_SELECTED_LR", env["selected"])
    main = _runs("main_table", env["root"])
    probe = _runs("remix_probe", env["root"])
    assert sorted(probe) == sorted(f"{v}__seed={s}" for v in ("remix", "remix_alpha32", "uniform", "uniform_m4")
                                 for s in (0, 1, 2))
    _, aliases = link_duplicates([*main.values(), *probe.values()], create=False)
    assert {pathlib.Path(w).name: pathlib.Path(p.workdir).parent.name for w, p in aliases.items()} == {
        f"remix__seed={s}": "main_table" for s in (0, 1, 2)}
    for seed in (0, 1, 2):
        twin = resolve(main[f"remix__seed={seed}"]).to_dict()
        for name, want in {"remix": {}, "remix_alpha32": {("adapter", "alpha"): 32.0},
                           "uniform": {("adapter", "method"): "uniform_random", ("train", "num_samples"): 1,
                                       ("train", "sample_chunk"): 0},
                           "uniform_m4": {("adapter", "method"): "uniform_random"}}.items():
            run = probe[f"{name}__seed={seed}"]
            assert problems(run) == [], run.name
            got = resolve(run).to_dict()
            diff = {(a, b): got[a][b] for a in got if isinstance(got[a], dict) for b in got[a]
                    if got[a][b] != twin[a].get(b)}
            assert diff == want, run.name
    assert twin["adapter"]["alpha"] == 16.0 and twin["train"]["num_samples"] == 4

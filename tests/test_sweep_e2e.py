"""The sweep tool end to end with the real trainer: two tiny runs of configs/smoke.py (random tiny decoder,
synthetic task, held-out loss) through ``python -m remix_jax.main``: expansion, running, skipping finished
runs on a second invocation, aggregation (results.csv / results.md) and plots. Also: every sweep in
experiments/ expands to runs whose overrides parse against the real config schema."""

import csv
import json
import os
import pathlib
import shlex
import subprocess
import sys
import textwrap

import pytest

from remix_jax import sweep as sweep_lib
from remix_jax.sweep import runner as sweep_runner
from remix_jax.sweep.__main__ import main as sweep_main
from remix_jax.sweep.preflight import resolved_config
from tests.tiny_run import CHILD_XLA_FLAGS

REPO = pathlib.Path(__file__).resolve().parents[1]

SWEEP = textwrap.dedent('''
    import sys
    from remix_jax.sweep import KEYS

    def get_sweep():
        return {
            "config": CONFIG + ":remix",
            "base_overrides": {KEYS.num_steps: 4, KEYS.log_every: 2, "train.checkpoint_every": 0,
                               KEYS.max_length: 16, "eval.heldout.num_batches": 2},
            "grid": [[{"name": "remix"}, {"name": "mixlora", "config": ":mixlora"}]],
            "seeds": [0],
            "runner": [sys.executable, "-m", "remix_jax.main"],
            "report": {
                "tables": [{"title": "tiny", "rows": ["variant"],
                            "columns": ["heldout/heldout_loss", "train/final_loss"]}],
                "plots": [{"kind": "ess", "series": "variant", "block": "mean", "file": "ess.png"},
                          {"kind": "bar", "x": "variant", "y": "heldout/heldout_loss",
                           "file": "heldout.png"}],
            },
        }
''')


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """Runs the sweep once (both runs train) and returns (paths, first invocation's output)."""
    root = tmp_path_factory.mktemp("sweep_e2e")
    path = root / "tiny.py"
    path.write_text(f"CONFIG = {str(REPO / 'configs' / 'smoke.py')!r}\n" + SWEEP)
    env_before = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = CHILD_XLA_FLAGS  # the subprocesses: one CPU device, quick codegen
    try:
        r = subprocess.run([sys.executable, "-m", "remix_jax.sweep", f"--sweep={path}", "--quiet",
                            f"--out_dir={root / 'out'}", f"--workdir_root={root / 'runs'}"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        if env_before is not None:
            os.environ["XLA_FLAGS"] = env_before
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root, path, r.stdout


def test_runs_train_evaluate_and_finish(finished_sweep):
    root, _, out = finished_sweep
    names = ["remix__seed=0", "mixlora__seed=0"]
    for i, name in enumerate(names):
        assert f"[{i + 1}/2] {name}: running" in out
        wd = root / "runs" / name
        done = json.loads((wd / "run_complete.json").read_text())
        assert done["step"] == 4 and done["wall_s"] > 0
        rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
        # step 0: held-out loss of the initial (identity) adapters; then training rows and the final eval
        assert rows[0]["step"] == 0 and "eval/heldout_loss" in rows[0] and "loss" not in rows[0]
        assert [r["step"] for r in rows if "loss" in r] == [2, 4]
        finals = [r for r in rows if r["step"] == 4 and "eval/heldout_loss" in r]
        assert len(finals) == 1
        heldout = json.loads((wd / "eval" / "heldout.json").read_text())
        assert heldout["metrics"]["heldout_loss"] == pytest.approx(finals[0]["eval/heldout_loss"])
        assert heldout["metrics"]["num_batches"] == 2
        assert (wd / "eval_history" / "step_0" / "eval" / "heldout.json").is_file()
        assert (wd / "export" / "adapters.safetensors").is_file()
        assert "--config.eval.heldout.num_batches=2" in (wd / "command.txt").read_text()


def test_aggregates_results_and_plots(finished_sweep):
    root, _, _ = finished_sweep
    with open(root / "out" / "results.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"remix__seed=0", "mixlora__seed=0"}
    for name, row in rows.items():
        assert row["status"] == "complete"
        wd = root / "runs" / name
        heldout = json.loads((wd / "eval" / "heldout.json").read_text())["metrics"]["heldout_loss"]
        assert float(row["heldout/heldout_loss"]) == pytest.approx(heldout)
        assert float(row["routing/ess_softmax_final"]) > 1.0  # routed methods log their ESS
        # both: n=4, k=2, r=4 on random:tiny's gate/up/down: experts 2 x 4 x 4 x 576, block router 2 x 64 x 4
        assert (int(row["params/trainable"]), int(row["params/active"])) == (18432 + 512, 512 + 18432 // 2)
    md = (root / "out" / "results.md").read_text()
    assert "remix" in md and "mixlora" in md
    assert "| variant | seeds | params/trainable | params/active | heldout/heldout_loss | train/final_loss |" in md
    assert "| remix | 1 | 18.9K | 9.73K |" in md and "| mixlora | 1 | 18.9K | 9.73K |" in md
    for png in ("ess.png", "heldout.png"):
        data = (root / "out" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_second_invocation_skips_finished_runs(finished_sweep):
    root, path, _ = finished_sweep
    wd = root / "runs" / "remix__seed=0"
    before = {p: (wd / p).read_bytes() for p in ("metrics.jsonl", "run_complete.json")}
    calls = []
    orig = sweep_runner.run_one
    sweep_runner.run_one = lambda *a, **k: calls.append(a) or orig(*a, **k)
    try:
        rc = sweep_main([f"--sweep={path}", "--quiet", f"--out_dir={root / 'out'}",
                             f"--workdir_root={root / 'runs'}"])
    finally:
        sweep_runner.run_one = orig
    assert rc == 0 and calls == []
    assert {p: (wd / p).read_bytes() for p in before} == before
    # the entry point itself does not retrain a finished run either (its own command: the same config)
    env = {**os.environ, "XLA_FLAGS": CHILD_XLA_FLAGS}
    r = subprocess.run(shlex.split((wd / "command.txt").read_text()), cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "already finished" in r.stdout and json.loads(r.stdout.strip().splitlines()[-1])["skipped"]
    assert {p: (wd / p).read_bytes() for p in before} == before


def test_a_sweep_whose_runs_would_stop_at_their_first_line_starts_none(tmp_path, capsys):
    """The runs' configs are checked before any starts (sweep/preflight.py): a missing model file and an unknown
    task, in two of three runs, are one message naming each run and key, exit status 2, no run started; the third,
    valid, run has no problem; --no_check starts them (each failing on its own) instead."""
    from remix_jax.sweep import preflight

    path = tmp_path / "bad.py"
    path.write_text(f"CONFIG = {str(REPO / 'configs' / 'smoke.py')!r}\n" + SWEEP.replace(
        '"grid": [[{"name": "remix"}, {"name": "mixlora", "config": ":mixlora"}]],',
        '"grid": [[{"name": "remix"}, {"name": "gone", "overrides": {"model.path": "/nonexistent/model.gguf"}},'
        ' {"name": "task", "overrides": {"eval.tasks": "nope"}}]],'))
    args = [f"--sweep={path}", "--quiet", f"--out_dir={tmp_path / 'out'}", f"--workdir_root={tmp_path / 'runs'}"]
    calls = []
    orig = sweep_runner.run_one
    sweep_runner.run_one = lambda *a, **k: calls.append(a) or (False, "not run in this test")
    try:
        assert sweep_main(args) == 2
        err = capsys.readouterr().err
        assert calls == [] and not (tmp_path / "runs").exists()
        assert "2 of 3 run(s) would stop before training:" in err
        assert "  gone__seed=0:\n    model.path: '/nonexistent/model.gguf' does not exist" in err
        assert "  task__seed=0:\n    eval.tasks: unknown task(s) ['nope']" in err
        assert "remix__seed=0" not in err and "--no_check" in err
        sweep = sweep_lib.load_sweep(path, workdir_root=str(tmp_path / "runs"))
        assert preflight.run_problems(sweep.runs[0]) == []
        assert sweep_main(args + ["--no_check"]) == 1 and len(calls) == 3
    finally:
        sweep_runner.run_one = orig


def test_the_check_takes_no_device(tmp_path):
    """Checking a run's config initialises no jax backend (on a GPU host it would take the device's memory)."""
    code = ("import sys; from remix_jax.sweep import load_sweep, preflight; "
            f"runs = load_sweep({str(REPO / 'experiments' / 'smoke.py')!r}, workdir_root={str(tmp_path)!r}).runs; "
            "print([preflight.run_problems(r) for r in runs]); "
            "from jax._src import xla_bridge; print('backends', bool(xla_bridge._backends))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[-2:] == ["[[], []]", "backends False"]


# experiments/ modules that define no sweep
NOT_SWEEPS = ("common", "paired", "select_lr", "specialisation", "table1", "trend")
# sweeps that need a variable to define their runs: set to a committed file, as the study sets it
SWEEP_ENV = {"multitask_rates": {
    "REMIX_MULTITASK_SELECTED_LR": "experiments/results/qwen0.5b/lr_grid/selected_lr.json"},
    "arc_c_mc_rates": {"REMIX_ARC_C_MC_SELECTED_LR": "experiments/results/qwen0.5b/lr_grid_arc_c_mc/selected_lr.json"},
    "arc_c_mc_table_acc": {
        "REMIX_ARC_C_MC_ACC_SELECTED_LR": "experiments/results/qwen0.5b/lr_grid_arc_c_mc_acc/selected_lr.json"},
    "arc_c_mc_remix_probe": {
        "REMIX_ARC_C_MC_ACC_SELECTED_LR": "experiments/results/qwen0.5b/lr_grid_arc_c_mc_acc/selected_lr.json"}}


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "experiments").glob("*.py")
                                        if p.stem not in NOT_SWEEPS))
def test_experiment_sweeps_match_the_config_schema(name, monkeypatch):
    from remix_jax.run_config import split_config, validate_config

    monkeypatch.chdir(REPO)
    for key, value in SWEEP_ENV.get(name, {}).items():
        monkeypatch.setenv(key, str(REPO / value))
    sweep = sweep_lib.load_sweep(REPO / "experiments" / f"{name}.py", workdir_root="/nonexistent")
    assert sweep.runs
    for run in sweep.runs:
        config = resolved_config(run)  # an unknown key or a wrongly typed value fails here
        for key, value in run.overrides.items():
            node = config
            for part in key.split("."):
                node = node[part]
            assert node == (tuple(value) if isinstance(value, list) else value), (run.name, key)
        train_cfg, ev = split_config(config)
        with config.unlocked():
            for k in ("dtype", "param_dtype"):
                train_cfg.model[k] = "float32"
        validate_config(train_cfg, check_paths=False)
        if ev is not None and str(ev.tasks).strip():
            from remix_jax.evaluation.eval_config import task_names
            task_names(ev)

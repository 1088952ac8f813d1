"""experiments/select_lr.py on the outputs of experiments/lr_grid.py, and experiments/main_table.py taking its
choice. The sweep's output folder is made as a real sweep makes it: lr_grid.py expanded by the sweep package,
each run's workdir holding what the trainer writes (eval/heldout.json through the evaluation's own writer,
run_complete.json only for finished runs), and results.csv written by the sweep's report."""

import csv
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from remix_jax.cli import UserError
from remix_jax.evaluation.results import write_task_results
from remix_jax.sweep import KEYS, load_sweep
from remix_jax.sweep.report import write_report

REPO = pathlib.Path(__file__).resolve().parents[1]
METHODS = ["remix", "lora", "rslora", "dora", "mixlora", "hydralora"]  # lr_grid.py's order: ReMix first
LRS = [1e-4, 3e-4, 1e-3]
UNFINISHED = "unfinished"  # a run without run_complete.json (its held-out loss is written: it must be ignored)

# Validation loss of each run, by method, at 1e-4, 3e-4, 1e-3.
LOSSES = {
    "lora": [0.70, 0.65, 0.68],  # interior minimum
    "rslora": [0.60, 0.62, 0.70],  # lowest rate: extend the grid below
    "dora": [0.80, 0.75, 0.71],  # highest rate: extend the grid above
    "mixlora": [0.70, math.nan, 0.69],  # NaN (lower than anything if compared naively) excluded
    "hydralora": [0.72, 0.70, math.inf],  # diverged at 1e-3: bounds the choice from above, no edge
    "remix": [(UNFINISHED, 0.50), 0.77, 0.78],  # the unfinished 1e-4 run would win: excluded, no run below
}
EXPECTED = {"lora": 3e-4, "rslora": 1e-4, "dora": 1e-3, "mixlora": 1e-3, "hydralora": 3e-4, "remix": 3e-4}
EXPECTED_EDGE = {"lora": False, "rslora": True, "dora": True, "mixlora": True, "hydralora": False, "remix": True}


def _load_select_lr():
    spec = importlib.util.spec_from_file_location("select_lr", REPO / "experiments" / "select_lr.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["select_lr"] = module  # the name experiments/common.py imports it by
    spec.loader.exec_module(module)
    return module


select_lr = _load_select_lr()


def make_sweep_output(root: pathlib.Path, losses: dict, monkeypatch) -> pathlib.Path:
    """The --out_dir of ``python -m remix_jax.sweep --sweep=experiments/lr_grid.py`` whose runs ended with
    ``losses``; returns it."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("REMIX_MODEL_PATH", "model.gguf")
    monkeypatch.setenv("REMIX_GSM8K_VAL_DIR", "val")
    sweep = load_sweep(REPO / "experiments" / "lr_grid.py", workdir_root=str(root / "runs"), out_dir=str(root / "out"))
    assert [(r.params["variant"], r.params[KEYS.adapter_lr]) for r in sweep.runs] == [
        (m, lr) for m in METHODS for lr in LRS]
    for run in sweep.runs:
        loss = losses[run.params["variant"]][LRS.index(run.params[KEYS.adapter_lr])]
        finished = not (isinstance(loss, tuple) and loss[0] == UNFINISHED)
        loss = loss if finished else loss[1]
        wd = pathlib.Path(run.workdir)
        wd.mkdir(parents=True)
        metrics = {"heldout_loss": loss, "num_batches": 12, "num_tokens": 90000}
        if math.isfinite(loss):
            write_task_results(wd, "heldout", metrics, [], extra={"step": 300})
        else:  # the evaluation's writer refuses non-finite values; a hand-made file is read the same way
            (wd / "eval").mkdir()
            (wd / "eval" / "heldout.json").write_text(json.dumps({"task": "heldout", "metrics": metrics}))
        (wd / "metrics.jsonl").write_text(json.dumps({"step": 300, "loss": 0.7}) + "\n")
        if finished:
            (wd / "run_complete.json").write_text(json.dumps({"step": 300, "wall_s": 20.0}))
    write_report(dataclasses.replace(sweep, report={}))  # results.csv as the sweep writes it (no plots)
    return root / "out"


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "experiments" / "select_lr.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def grid_out(tmp_path, monkeypatch):
    return make_sweep_output(tmp_path, LOSSES, monkeypatch)


def test_picks_the_lowest_valid_loss_per_method(grid_out, tmp_path, capsys):
    out = tmp_path / "selected_lr.json"
    assert select_lr.main([f"--results={grid_out}", f"--out={out}"]) == 0
    data = json.loads(out.read_text())
    assert list(data) == METHODS
    assert {m: d["adapter_lr"] for m, d in data.items()} == EXPECTED
    assert {m: d["edge"] for m, d in data.items()} == EXPECTED_EDGE
    assert data["lora"]["losses"] == {"0.0001": 0.70, "0.0003": 0.65, "0.001": 0.68}
    assert data["mixlora"]["losses"] == {"0.0001": 0.70, "0.001": 0.69}
    assert data["mixlora"]["excluded"] == {"0.0003": "mixlora__adapter_lr=0.0003__seed=0: heldout/heldout_loss is nan"}
    assert data["hydralora"]["excluded"] == {
        "0.001": "hydralora__adapter_lr=0.001__seed=0: heldout/heldout_loss is inf"}
    assert data["remix"]["losses"] == {"0.0003": 0.77, "0.001": 0.78}
    assert data["remix"]["excluded"] == {"0.0001": "remix__adapter_lr=0.0001__seed=0 did not finish (incomplete)"}
    assert data["lora"]["excluded"] == {}
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert table[0] == ("| method | heldout/heldout_loss @ 0.0001 | heldout/heldout_loss @ 0.0003 | "
                        "heldout/heldout_loss @ 0.001 | chosen adapter LR |")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table[2:8]}
    assert rows["lora"] == "| lora | 0.7000 | **0.6500** | 0.6800 | 0.0003 |"
    assert rows["mixlora"] == "| mixlora | 0.7000 | diverged | **0.6900** | 0.001 (edge) |"
    assert rows["remix"] == "| remix | excluded | **0.7700** | 0.7800 | 0.0003 (edge) |"
    warnings = [w for w in captured.err.splitlines() if w.startswith("warning: ")]
    assert sorted(warnings) == sorted([
        "warning: rslora: the best adapter LR 0.0001 is the lowest of the grid: extend the grid below 0.0001",
        "warning: dora: the best adapter LR 0.001 is the highest of the grid: extend the grid above 0.001",
        "warning: mixlora: adapter LR 0.0003 excluded: mixlora__adapter_lr=0.0003__seed=0: heldout/heldout_loss is nan",
        "warning: mixlora: the best adapter LR 0.001 is the highest of the grid: extend the grid above 0.001",
        "warning: hydralora: adapter LR 0.001 excluded: hydralora__adapter_lr=0.001__seed=0: heldout/heldout_loss "
        "is inf",
        "warning: remix: adapter LR 0.0001 excluded: remix__adapter_lr=0.0001__seed=0 did not finish (incomplete)",
        "warning: remix: the best adapter LR 0.0003 has no finished run below it: finish the excluded runs below it",
    ])


def test_tie_goes_to_the_smaller_rate_whatever_the_row_order(tmp_path, monkeypatch):
    # also: hydralora's run above its best rate did not finish, so nothing bounds the choice from above
    losses = {**LOSSES, "lora": [0.70, 0.65, 0.65], "hydralora": [0.72, 0.70, (UNFINISHED, 0.1)]}
    out_dir = make_sweep_output(tmp_path, losses, monkeypatch)
    path, rows = select_lr.read_results(out_dir)
    for order in (rows, rows[::-1]):
        choices = select_lr.select(order)
        assert choices["lora"].adapter_lr == 3e-4 and choices["lora"].tied == [3e-4, 1e-3]
        assert not choices["lora"].edge
        assert choices["hydralora"].adapter_lr == 3e-4 and choices["hydralora"].unbounded == ["above"]
    warnings = select_lr.warnings(select_lr.select(rows[::-1]))
    assert "lora: adapter LRs 0.0003, 0.001 tie at 0.65; the smaller, 0.0003, is chosen" in warnings
    assert ("hydralora: the best adapter LR 0.0003 has no finished run above it: finish the excluded runs above it"
            in warnings)


def _row(line, method, lr, seed, loss, status="complete"):
    return {"line": line, "name": f"{method}__adapter_lr={lr!r}__seed={seed}", "status": status, "variant": method,
            KEYS.adapter_lr: repr(lr), "seed": str(seed), select_lr.METRIC: repr(loss)}


def test_several_seeds_average_and_one_bad_seed_excludes_the_rate():
    rows = [_row(2, "lora", 1e-4, 0, 0.60), _row(3, "lora", 1e-4, 1, 0.80),  # mean 0.70
            _row(4, "lora", 3e-4, 0, 0.69), _row(5, "lora", 3e-4, 1, 0.69),
            _row(6, "lora", 1e-3, 0, 0.50), _row(7, "lora", 1e-3, 1, math.nan)]  # 0.50 alone would win
    c = select_lr.select(rows)["lora"]
    assert c.losses == {1e-4: pytest.approx(0.70, abs=1e-15), 3e-4: 0.69}
    assert c.adapter_lr == 3e-4 and c.excluded == {1e-3: "lora__adapter_lr=0.001__seed=1: heldout/heldout_loss is nan"}
    assert c.diverged == {1e-3} and not c.edge
    rows[2][select_lr.METRIC] = "0.6x"
    with pytest.raises(UserError, match=r"^results.csv:4: heldout/heldout_loss '0.6x' is not a number$"):
        select_lr.select(rows)


def test_a_method_without_a_valid_run_is_an_error_naming_it(tmp_path, monkeypatch):
    losses = {**LOSSES, "dora": [(UNFINISHED, 0.5), math.nan, (UNFINISHED, 0.5)]}
    out_dir = make_sweep_output(tmp_path, losses, monkeypatch)
    out = tmp_path / "selected_lr.json"
    r = run_cli(f"--results={out_dir}", f"--out={out}")
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[0] == (
        f"error: {out_dir / 'results.csv'}: no valid run for method(s): dora (dora__adapter_lr=0.0001__seed=0 did "
        "not finish (incomplete); dora__adapter_lr=0.0003__seed=0: heldout/heldout_loss is nan; "
        "dora__adapter_lr=0.001__seed=0 did not finish (incomplete))")
    assert "Traceback" not in r.stderr and not out.exists()


def test_a_different_selection_never_overwrites_the_file_without_force(tmp_path, monkeypatch):
    first = make_sweep_output(tmp_path / "a", LOSSES, monkeypatch)
    changed = make_sweep_output(tmp_path / "b", {**LOSSES, "lora": [0.60, 0.65, 0.68]}, monkeypatch)
    out = tmp_path / "selected_lr.json"
    r = run_cli(f"--results={first}", f"--out={out}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"wrote {out}"
    kept = out.read_bytes()
    r = run_cli(f"--results={first}", f"--out={out}")  # the same selection again: nothing to do
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == f"{out} holds this selection already (unchanged)"
    r = run_cli(f"--results={changed}", f"--out={out}")
    assert r.returncode == 2
    assert r.stderr.splitlines()[-2:] == [f"error: {out} exists with a different selection; it is kept",
                                     "hint: pass --force to overwrite it, or choose another --out"]
    assert out.read_bytes() == kept
    r = run_cli(f"--results={changed}", f"--out={out}", "--force")
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == f"overwrote {out}"
    assert json.loads(out.read_text())["lora"]["adapter_lr"] == 1e-4


def test_results_that_are_not_an_lr_grid_are_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows([["name", "status", "variant", "seed"], ["lora__seed=0", "complete", "lora", "0"]])
    with pytest.raises(UserError, match=r"results.csv: no column\(s\) optimizer.adapter_lr: not the results"):
        select_lr.read_results(out)
    with pytest.raises(UserError, match=r"nothing.csv: no such file"):
        select_lr.read_results(tmp_path / "nothing.csv")


def _accuracy_grid(root: pathlib.Path, runs: dict, digest: dict | None = None) -> pathlib.Path:
    """A grid's results.csv (accuracy column "acc") and each run's eval/val.json holding its per-example verdicts,
    as the sweep and the evaluation lay them out; ``runs``: {(rate, seed): "0"/"1" verdicts}. Returns results.csv."""
    rows = []
    for (lr, seed), values in runs.items():
        name = f"lora__adapter_lr={lr!r}__seed={seed}"
        (root / "runs" / name / "eval").mkdir(parents=True)
        outcomes = {"key": "correct", "values": values, "ids_sha256": (digest or {}).get((lr, seed), "ids-1")}
        (root / "runs" / name / "eval" / "val.json").write_text(json.dumps({"task": "val", "outcomes": outcomes}))
        rows.append([name, "complete", "lora", repr(lr), str(seed), values.count("1") / len(values)])
    with open(root / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows([["name", "status", "variant", KEYS.adapter_lr, "seed", "acc"], *rows])
    return root / "results.csv"


# 3e-4 is chosen (0.8). Against 1e-4 the paired differences are four 1s of ten: mean 0.4, standard error
# sqrt((4 * 0.6^2 + 6 * 0.4^2) / 9 / 10) = 0.1633, separated (0.4 > 2 x 0.1633). 1e-3 has two seeds, averaged per
# example (0.5 on the eighth): the differences are one 0.5 of ten, mean 0.05, error
# sqrt((0.45^2 + 9 x 0.05^2) / 9 / 10) = 0.05, not separated.
SEPARATION_RUNS = {(1e-4, 0): "1111000000", (3e-4, 0): "1111111100", (1e-3, 0): "1111111000", (1e-3, 1): "1111111100"}


def test_outcomes_report_the_rates_the_validation_data_do_not_separate(tmp_path, capsys):
    results = _accuracy_grid(tmp_path, SEPARATION_RUNS)
    out = tmp_path / "selected_lr.json"
    assert select_lr.main([f"--results={results}", f"--out={out}", "--metric=acc", "--maximize",
                           "--outcomes=val"]) == 0
    data = json.loads(out.read_text())["lora"]
    assert data["adapter_lr"] == 3e-4 and data["outcomes_task"] == "val"
    assert data["paired"] == {"0.0001": {"difference": pytest.approx(0.4), "stderr": pytest.approx(0.163299, abs=1e-6)},
                              "0.001": {"difference": pytest.approx(0.05), "stderr": pytest.approx(0.05)}}
    assert data["not_separated"] == ["0.001"]
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert table[0].endswith("| chosen adapter LR | not separated from it (2 paired SE) |")
    assert table[2] == "| lora | 0.4000 | **0.8000** | 0.7500 | 0.0003 | 0.001 |"
    assert ("warning: lora: adapter LR(s) 0.001 within 2 paired standard errors of the chosen 0.0003: the validation "
            "data do not separate them") in captured.err.splitlines()
    # without --outcomes the file is as before
    plain = tmp_path / "plain.json"
    assert select_lr.main([f"--results={results}", f"--out={plain}", "--metric=acc", "--maximize"]) == 0
    assert set(json.loads(plain.read_text())["lora"]) == {"adapter_lr", "metric", "maximize", "scores", "edge",
                                                          "excluded"}


def test_outcomes_of_other_examples_or_missing_are_errors_naming_the_file(tmp_path):
    results = _accuracy_grid(tmp_path / "a", SEPARATION_RUNS, digest={(1e-3, 1): "ids-2"})
    path, rows = select_lr.read_results(results, "acc")
    choices = select_lr.select(rows, "acc", where=str(path), maximize=True)
    with pytest.raises(UserError, match=r"lora__adapter_lr=0.001__seed=1/eval/val.json and .*seed=0/eval/val.json "
                                        r"scored different examples \(or in a different order\)$"):
        select_lr.separate(choices, "val", path)
    with pytest.raises(UserError, match=r"results.csv:2: lora__adapter_lr=0.0001__seed=0: no other evaluation "
                                        r"\(.*lora__adapter_lr=0.0001__seed=0/eval/other.json is missing\)$"):
        select_lr.separate(choices, "other", path)
    results = _accuracy_grid(tmp_path / "b", SEPARATION_RUNS)
    (tmp_path / "b" / "runs" / "lora__adapter_lr=0.0003__seed=0" / "eval" / "val.json").write_text('{"task": "val"}')
    path, rows = select_lr.read_results(results, "acc")
    with pytest.raises(UserError, match=r"seed=0/eval/val.json: no per-example outcomes and no predictions file "
                                        r"val.predictions.jsonl$"):
        select_lr.separate(select_lr.select(rows, "acc", where=str(path), maximize=True), "val", path)


def _resolved_adapter_lr(run) -> float:
    """The run's optimizer.adapter_lr as the entry point's --config flags give it."""
    from absl import flags
    from ml_collections import config_flags

    argv = [a for a in run.command(["prog"]) if not a.startswith("--workdir=")]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv, known_only=True)
    return fv.config.optimizer.adapter_lr


def test_main_table_trains_each_method_at_its_selected_rate(grid_out, tmp_path, monkeypatch):
    out = tmp_path / "selected_lr.json"
    assert select_lr.main([f"--results={grid_out}", f"--out={out}"]) == 0
    monkeypatch.delenv("REMIX_SELECTED_LR", raising=False)
    default = load_sweep(REPO / "experiments" / "main_table.py", workdir_root="/nonexistent")
    assert all(KEYS.adapter_lr not in r.overrides for r in default.runs)  # the small-scale table as it was run
    assert {_resolved_adapter_lr(r) for r in default.runs[::3]} == {5e-4}  # configs/gsm8k.py's *_small rate
    monkeypatch.setenv("REMIX_SELECTED_LR", str(out))
    sweep = load_sweep(REPO / "experiments" / "main_table.py", workdir_root="/nonexistent")
    assert [r.name for r in sweep.runs] == [r.name for r in default.runs]
    assert len(sweep.runs) == 18
    for run, before in zip(sweep.runs, default.runs, strict=True):
        assert run.overrides == {**before.overrides, KEYS.adapter_lr: EXPECTED[run.params["variant"]]}
    for run in sweep.runs[::3]:  # one seed per method: the value reaches the config
        assert _resolved_adapter_lr(run) == EXPECTED[run.params["variant"]]


def test_main_table_with_a_selection_that_lacks_a_method_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "selected_lr.json"
    path.write_text(json.dumps({m: {"adapter_lr": 3e-4} for m in METHODS if m != "dora"}))
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("REMIX_MODEL_PATH", "model.gguf")
    monkeypatch.setenv("REMIX_SELECTED_LR", str(path))
    with pytest.raises(UserError) as e:
        load_sweep(REPO / "experiments" / "main_table.py", workdir_root="/nonexistent")
    assert str(e.value) == (f"$REMIX_SELECTED_LR: {path}: no learning rate for method(s) dora (it has remix, lora, "
                            "rslora, mixlora, hydralora)")
    path.write_text(json.dumps({m: {"adapter_lr": math.nan if m == "lora" else 3e-4} for m in METHODS}))
    with pytest.raises(UserError, match=r"selected_lr.json: lora: adapter_lr must be a positive number, got nan"):
        load_sweep(REPO / "experiments" / "main_table.py", workdir_root="/nonexistent")
    r = subprocess.run([sys.executable, "-m", "remix_jax.sweep", "--sweep=experiments/main_table.py", "--dry_run"],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "REMIX_SELECTED_LR": str(tmp_path / "missing.json")})
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == f"error: $REMIX_SELECTED_LR: {tmp_path / 'missing.json'}: no such file"


def test_template_variable_sets_the_training_template_of_both_sweeps(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("REMIX_MODEL_PATH", "model.gguf")
    monkeypatch.delenv("REMIX_SELECTED_LR", raising=False)
    monkeypatch.delenv("REMIX_TEMPLATE", raising=False)
    for name in ("lr_grid.py", "main_table.py"):
        assert all("data.template" not in r.overrides
                   for r in load_sweep(REPO / "experiments" / name, workdir_root="/nonexistent").runs)
    monkeypatch.setenv("REMIX_TEMPLATE", "plain")
    for name in ("lr_grid.py", "main_table.py"):
        runs = load_sweep(REPO / "experiments" / name, workdir_root="/nonexistent").runs
        assert len(runs) == 18 and all(r.overrides["data.template"] == "plain" for r in runs)
        assert all(r.overrides.get(KEYS.sample_chunk) == (1 if r.params["variant"] == "remix" else None)
                   for r in runs)
    monkeypatch.setenv("REMIX_TEMPLATE", "Plain")
    with pytest.raises(UserError, match=r"^\$REMIX_TEMPLATE='Plain': expected 'plain' or 'chat'$"):
        load_sweep(REPO / "experiments" / "main_table.py", workdir_root="/nonexistent")


def test_lr_grid_variable_widens_the_grid_keeping_run_names(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("REMIX_MODEL_PATH", "model.gguf")
    monkeypatch.delenv("REMIX_LR_GRID", raising=False)
    first = load_sweep(REPO / "experiments" / "lr_grid.py", workdir_root="/nonexistent").runs
    monkeypatch.setenv("REMIX_LR_GRID", "3e-5,1e-4,3e-4,1e-3,3e-3")
    wide = load_sweep(REPO / "experiments" / "lr_grid.py", workdir_root="/nonexistent").runs
    assert [(r.params["variant"], r.params[KEYS.adapter_lr]) for r in wide] == [
        (m, lr) for m in METHODS for lr in [3e-5, 1e-4, 3e-4, 1e-3, 3e-3]]
    assert {r.name for r in first} < {r.name for r in wide}  # the first grid's runs keep their folders
    assert "remix__adapter_lr=0.003__seed=0" in {r.name for r in wide}
    for bad, why in [("1e-4,x", "expected comma-separated learning rates"), ("1e-4,1e-4", "distinct"),
                     ("0,1e-4", "positive")]:
        monkeypatch.setenv("REMIX_LR_GRID", bad)
        with pytest.raises(UserError, match=why):
            load_sweep(REPO / "experiments" / "lr_grid.py", workdir_root="/nonexistent")


def test_router_lr_sweep_trains_remix_at_its_selected_adapter_rate(tmp_path, monkeypatch):
    path = tmp_path / "selected_lr.json"
    path.write_text(json.dumps({m: {"adapter_lr": 2e-3 if m == "remix" else 1e-4} for m in METHODS}))
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("REMIX_MODEL_PATH", "model.gguf")
    monkeypatch.setenv("REMIX_GSM8K_VAL_DIR", "val")
    monkeypatch.setenv("REMIX_TEMPLATE", "plain")
    monkeypatch.setenv("REMIX_SELECTED_LR", str(path))
    runs = load_sweep(REPO / "experiments" / "router_lr.py", workdir_root="/nonexistent").runs
    assert [r.params[KEYS.router_lr] for r in runs] == [3e-4, 1e-3, 3e-3, 1e-2]
    for run in runs:
        assert run.params["variant"] == "remix"
        assert run.overrides[KEYS.adapter_lr] == 2e-3 and run.overrides[KEYS.router_lr] == run.params[KEYS.router_lr]
        assert run.overrides[KEYS.sample_chunk] == 1 and run.overrides["data.template"] == "plain"
        assert run.overrides["train.checkpoint_every"] == 50  # resumable after a job's time limit
        assert run.overrides["eval.tasks"] == "" and run.overrides[KEYS.heldout_path] == os.path.join("val",
                                                                                                      "validation.jsonl")

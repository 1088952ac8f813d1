"""``python -m remix_jax.evaluate`` never overwrites results: on a training run (or a folder that already holds
results) it writes to WORKDIR/evals/<name>/ and says where; the run's own eval/ is left byte for byte."""

import json
import os
import re
import runpy

import pytest
from tiny_run import cli, copy_run, stderr_lines

from remix_jax.training import evaluate_run


@pytest.fixture(scope="module")
def trained_run(tiny_gsm8k_run, tmp_path_factory):
    """A finished run evaluated on GSM8K (2 questions) at its end only: RUN/eval/gsm8k.json (this module's copy
    of the tiny_gsm8k_run fixture's run, tests/conftest.py)."""
    return copy_run(tiny_gsm8k_run, tmp_path_factory.mktemp("evalrun") / "run")


def test_the_evaluation_says_where_its_time_went(trained_run):
    """The run's end-of-training evaluation logs its time by part, and how much of each part was compiling, and
    writes each task's seconds."""
    steps = trained_run["steps"]
    line = next(x for x in trained_run["stdout"].splitlines() if f"evaluation at step {steps} (" in x)
    c = r"(?: \[compiling ([\d.]+) s\])?"
    m = re.search(rf"evaluation at step {steps} \(([\d.]+) s; gsm8k ([\d.]+) s \(generation ([\d.]+) s{c}, "
                  rf"routing statistics ([\d.]+) s{c}\)\): ", line)
    assert m, line
    total, task, gen, gen_c, stats, stats_c = (float(x or 0.0) for x in m.groups())
    # Each figure is rounded to 0.1 s on its own: a sum of two may exceed the rounded whole by up to 0.15 s (and
    # 2.6 + 1.3 is 3.9000000000000004 in floating point).
    assert 0 < gen + stats <= task + 0.15 + 1e-9 and task <= total + 0.1 + 1e-9
    assert gen_c <= gen + 0.1 and stats_c <= stats + 0.1
    seconds = json.loads((trained_run["run"] / "eval" / "gsm8k.json").read_text())["seconds"]
    assert set(seconds) == {"total", "generation", "generation compiling", "routing statistics",
                            "routing statistics compiling"}
    assert seconds["generation"] + seconds["routing statistics"] <= seconds["total"] + 0.02
    # this process compiled the generation program for this evaluation (a new model: nothing was cached)
    assert 0 < seconds["generation compiling"] <= seconds["generation"] + 0.01
    assert 0 <= seconds["routing statistics compiling"] <= seconds["routing statistics"] + 0.01
    done = json.loads((trained_run["run"] / "run_complete.json").read_text())
    assert 0 < done["compile_s"] < done["wall_s"]
    assert f"({done['compile_s']:.0f} s of it compiling)" in trained_run["stdout"]


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_evaluate_on_a_training_run_writes_a_new_folder(trained_run):
    run, cfg = trained_run["run"], trained_run["cfg"]
    own = _snapshot(run / "eval")
    assert set(own) == {"gsm8k.json", "gsm8k.predictions.jsonl"}
    r = cli("evaluate", f"--config={cfg}", f"--workdir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    (name,) = os.listdir(run / "evals")
    assert re.fullmatch(r"\d{8}-\d{6}", name)
    out = run / "evals" / name
    assert f"results written to {out}" in r.stdout
    assert _snapshot(run / "eval") == own  # the run's results are untouched
    rec = json.loads((out / "gsm8k.json").read_text())
    assert rec["adapters"] == f"export {run / 'export'}" and rec["metrics"]["num_examples"] == 2
    # the same greedy evaluation of the same adapters: the same predictions as the run's own
    assert (out / "gsm8k.predictions.jsonl").read_bytes() == own["gsm8k.predictions.jsonl"]


def test_named_evaluations_are_never_overwritten(trained_run):
    run, cfg = trained_run["run"], trained_run["cfg"]
    config = runpy.run_path(str(cfg))["get_config"]()
    logs = []
    config.eval.limit = 1
    config.adapter.alpha = 9.0  # not what the run trained with: the export's own configuration is used, and named
    evaluate_run.run(config, str(run), log=logs.append, name="limit1")
    assert f"warning: the run in {run} was trained with another setting: adapter.alpha: 8.0 -> 9.0" in logs
    assert any(line.startswith(f"model {trained_run['model']} with adapters from export ") for line in logs)
    out = run / "evals" / "limit1"
    assert json.loads((out / "gsm8k.json").read_text())["metrics"]["num_examples"] == 1
    assert logs[-1] == f"results written to {out}"
    took = next(line for line in logs if line.startswith("gsm8k took "))
    c = r"(?: \[compiling [\d.]+ s\])?"
    assert re.fullmatch(rf"gsm8k took [\d.]+ s \(generation [\d.]+ s{c}, routing statistics [\d.]+ s{c}\)", took), took
    before = _snapshot(out)
    r = cli("evaluate", f"--config={cfg}", f"--workdir={run}", "--eval_name=limit1")
    assert (r.returncode, stderr_lines(r)) == (2, [f"error: {out} already holds results",
                                                   "hint: choose another --eval_name"])
    assert _snapshot(out) == before


def test_a_fresh_folder_gets_eval_then_evals(trained_run, tmp_path):
    """A folder that is no training run and holds no results: WORKDIR/eval/ as before; the next evaluation of
    the same folder goes to WORKDIR/evals/<time>/."""
    config = runpy.run_path(str(trained_run["cfg"]))["get_config"]()
    config.eval.limit = 1
    evaluate_run.run(config, str(tmp_path), log=lambda _: None)
    first = _snapshot(tmp_path / "eval")
    assert set(first) == {"gsm8k.json", "gsm8k.predictions.jsonl"}
    logs = []
    evaluate_run.run(config, str(tmp_path), log=logs.append)
    (name,) = os.listdir(tmp_path / "evals")
    assert logs[-1] == f"results written to {tmp_path / 'evals' / name}"
    assert _snapshot(tmp_path / "eval") == first

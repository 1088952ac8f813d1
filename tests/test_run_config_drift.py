"""A workdir records its config: an identical rerun of a finished run prints its summary without training, a
changed config is refused with the differing keys listed, --continue_with_changes extends train.num_steps (and
keeps the earlier final results), changes that make resuming meaningless are refused even then, and a resumed
run's summary reads its step-0 evaluation back from its files."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.tiny_run import CHILD_XLA_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/smoke.py (random:tiny, synthetic data) with a held-out loss on one synthetic batch, evaluated at step 0
# and at the end.
BASE = ["--config=configs/smoke.py", "--config.train.num_steps=3", "--config.train.log_every=1",
        "--config.train.checkpoint_every=0", "--config.data.max_length=16", "--config.eval.heldout.num_batches=1",
        "--config.train.progress=False"]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu",  # one CPU device, quick codegen: quicker to compile
           "XLA_FLAGS": CHILD_XLA_FLAGS}


def _main(workdir, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "remix_jax.main", f"--workdir={workdir}", *BASE, *args],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _rows(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _summary(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 3-step run (metrics of steps 1..3, held-out loss at steps 0 and 3)."""
    wd = tmp_path_factory.mktemp("finished") / "run"
    r = _main(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    return wd


@pytest.fixture
def run_copy(finished_run, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(finished_run, wd)
    return wd


def test_identical_rerun_of_a_finished_run_prints_its_summary(run_copy):
    before = (run_copy / "metrics.jsonl").read_text()
    r = _main(run_copy)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "already finished" in r.stdout and "not trained again" in r.stdout
    assert "train step memory" not in r.stdout + r.stderr  # nothing was compiled
    summary = _summary(r.stdout)
    assert summary["skipped"] is True and summary["step"] == 3
    assert set(summary["eval"]) == {"0", "3"} and "heldout_loss" in summary["eval"]["0"]
    assert (run_copy / "metrics.jsonl").read_text() == before
    assert not (run_copy / "config.1.json").exists()


def test_changed_config_is_refused_listing_the_keys(run_copy):
    recorded = (run_copy / "config.json").read_text()
    r = _main(run_copy, "--config.train.num_steps=5", "--config.optimizer.adapter_lr=0.001")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"error: {run_copy} holds a run (finished at step 3) with another config; differing keys (old -> new):",
        "  optimizer.adapter_lr: 0.003 -> 0.001",
        "  train.num_steps: 3 -> 5",
        f"hint: rerun with the config of {run_copy / 'config.json'}, use a new --workdir, or pass "
        "--continue_with_changes to continue this run under the new config",
    ], r.stderr
    assert (run_copy / "config.json").read_text() == recorded  # the record of what ran is untouched
    assert (run_copy / "run_complete.json").exists()


def test_continue_with_changes_trains_the_extra_steps(run_copy):
    final_before = json.loads((run_copy / "eval" / "heldout.json").read_text())
    r = _main(run_copy, "--config.train.num_steps=5", "--continue_with_changes")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert f"continuing {run_copy} from step 3 to step 5" in out
    assert "the learning-rate schedule spans train.num_steps, so it now runs over 5 steps instead of 3" in out
    assert "resumed from step 3" in out
    rows = [row for row in _rows(run_copy) if "loss" in row]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]  # steps 4 and 5 were trained
    assert json.loads((run_copy / "run_complete.json").read_text())["step"] == 5
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["3", "5"]
    # the earlier final results are kept, not overwritten
    kept = run_copy / "eval_history" / "step_3"
    assert json.loads((kept / "eval" / "heldout.json").read_text()) == final_before
    assert json.loads((kept / "run_complete.json").read_text())["step"] == 3
    assert json.loads((run_copy / "eval" / "heldout.json").read_text())["step"] == 5
    # the config history
    assert json.loads((run_copy / "config.1.json").read_text())["train"]["num_steps"] == 3
    assert json.loads((run_copy / "config.json").read_text())["train"]["num_steps"] == 5
    (change,) = [json.loads(x) for x in (run_copy / "config_changes.jsonl").read_text().splitlines()]
    assert change["step"] == 3 and change["previous"] == "config.1.json"
    assert change["changes"] == {"train.num_steps": [3, 5]}
    # the summary: before = step 0 of the first process, after = step 5
    summary = _summary(r.stdout)
    assert summary["step"] == 5 and set(summary["eval"]) == {"0", "3", "5"}
    step0 = next(row for row in _rows(run_copy) if row["step"] == 0)
    assert summary["eval"]["0"]["heldout_loss"] == step0["eval/heldout_loss"]
    assert f"held-out loss: before {step0['eval/heldout_loss']:.4f} -> after " in r.stdout
    # the same command again: nothing left to train
    again = _main(run_copy, "--config.train.num_steps=5")
    assert again.returncode == 0 and _summary(again.stdout)["skipped"] is True


@pytest.mark.parametrize("override, reason", [
    ("--config.seed=1", "seed: 0 -> 1: the adapters' initialisation and the routing samples follow it"),
    ("--config.adapter.rank=2", "adapter.rank: 4 -> 2: the checkpoint holds adapters of the old adapter "
                                "configuration"),
    ("--config.data.max_length=32", "data.max_length: 16 -> 32: the checkpoint's data position refers to the "
                                    "old data stream"),
    ("--config.train.num_steps=2", "train.num_steps: 3 -> 2: the run has already trained 3 steps"),
])
def test_unsafe_changes_are_refused_even_with_the_flag(run_copy, override, reason):
    r = _main(run_copy, override, "--continue_with_changes", timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [
        f"error: {run_copy} (finished at step 3) cannot continue under this config, even with "
        f"--continue_with_changes: {reason}",
        "hint: start a new --workdir for these changes"]
    assert not (run_copy / "config.1.json").exists() and (run_copy / "run_complete.json").exists()


def test_finished_run_with_only_new_eval_settings_points_to_evaluate(run_copy):
    r = _main(run_copy, "--config.eval.heldout.num_batches=2", "--continue_with_changes", timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {run_copy} finished at step 3 and train.num_steps=3 adds no steps: nothing to continue under "
        "the changed key(s) eval.heldout.num_batches",
        "hint: to train longer raise --config.train.num_steps; to score the run under other evaluation settings "
        f"use python -m remix_jax.evaluate --config=... --workdir={run_copy} (it writes {run_copy}/evals/)"]


def test_resumed_run_summary_reads_step_0_from_the_files(tmp_path):
    """A run killed after step 2 (as if the process died), then resumed by the same command: the summary of
    the second process, which did not evaluate step 0, still shows the step-0 held-out loss."""
    wd = tmp_path / "run"
    args = [*BASE, "--config.train.num_steps=4", "--config.train.checkpoint_every=2"]
    script = (
        "import functools, sys\n"
        "from absl import flags\n"
        "from remix_jax import main\n"
        "from remix_jax.training import loop, run\n"
        "main._define_flags()\n"
        "flags.FLAGS(sys.argv)\n"
        "train = loop.train\n"
        "def killed(*a, **kw):\n"
        "    train(*a, stop_after=2, **kw)\n"
        "    raise SystemExit(3)\n"
        "loop.train = killed\n"
        "run.run(flags.FLAGS.config, flags.FLAGS.workdir)\n"
    )
    first = subprocess.run([sys.executable, "-c", script, f"--workdir={wd}", *args], cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 3, first.stderr[-3000:]
    assert not (wd / "run_complete.json").exists() and os.listdir(wd / "checkpoints") == ["2"]
    step0 = next(row for row in _rows(wd) if row["step"] == 0)["eval/heldout_loss"]
    second = subprocess.run([sys.executable, "-m", "remix_jax.main", f"--workdir={wd}", *args], cwd=REPO,
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from step 2" in second.stdout + second.stderr
    assert "evaluation at step 0" not in second.stdout  # this process did not evaluate the base model
    summary = _summary(second.stdout)
    assert summary["eval"]["0"]["heldout_loss"] == step0 and "heldout_loss" in summary["eval"]["4"]
    assert f"held-out loss: before {step0:.4f} -> after {summary['eval']['4']['heldout_loss']:.4f}" in second.stdout

"""Resuming after damage: a damaged newest checkpoint is moved aside and the previous one used, metrics rows
of the interrupted run after the resumed step are dropped, and rates leave out evaluation and saving time."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from remix_jax.training import checkpointing, loop
from remix_jax.training import metrics as metrics_lib
from remix_jax.training import optimizer as opt_lib

STEPS, EVAL_ROW = 8, {"step": 0, "eval/heldout_loss": 5.5}  # the step-0 evaluation remix_jax.main logs


def _mesh():
    return jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1],
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _config(make_config):
    return make_config("remix", num_steps=STEPS, checkpoint_every=2, log_every=1)


def _train(config, workdir, bundle, lines=None, **kw):
    log_fn = (lines.append if lines is not None else lambda s: None)
    return loop.train(config, str(workdir), bundle=bundle, mesh=_mesh(), log_fn=log_fn, **kw)


class FakeClock:
    """Time moves only when the test says: 1 s per batch drawn, 1000 s per evaluation, 500 s per save."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class TickingLoader:
    def __init__(self, inner, clock):
        self.inner, self.clock = inner, clock

    def __iter__(self):
        return self

    def __next__(self):
        self.clock.t += 1.0
        return next(self.inner)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_config, remix_bundle):
    """An uninterrupted 8-step run (fake clock, an evaluation every 2 steps, the bar on) and a run killed
    after step 6 (checkpoints at 2, 4, 6; metrics rows 1..6 after a step-0 evaluation row)."""
    root = tmp_path_factory.mktemp("recovery")
    config = _config(make_config)
    clock, progress_log = FakeClock(), []

    class RecordingProgress(metrics_lib.Progress):
        def update(self, step, info):
            super().update(step, info)
            progress_log.append((step, self.rate, self.eta_s, str(self.bar)))

    save = checkpointing.Checkpointer.save

    def slow_save(self, *a, **kw):
        clock.t += 500.0
        return save(self, *a, **kw)

    def eval_fn(step, state):
        clock.t += 1000.0
        return {"score": float(step)}

    full_cfg = _config(make_config)
    full_cfg.train.eval_every = 2
    full_cfg.train.progress = True
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics_lib, "Progress", RecordingProgress)
        mp.setattr(checkpointing.Checkpointer, "save", slow_save)
        loader = TickingLoader(loop.build_loader(full_cfg, remix_bundle), clock)
        full = _train(full_cfg, root / "full", remix_bundle, loader=loader, eval_fn=eval_fn, clock=clock)
    killed = root / "killed"
    killed.mkdir()
    (killed / "metrics.jsonl").write_text(json.dumps(EVAL_ROW) + "\n")
    part = _train(config, killed, remix_bundle, stop_after=6)
    assert part["step"] == 6
    return {"config": config, "full": full, "full_dir": root / "full", "killed": killed, "root": root,
            "progress": progress_log}


def _resume(runs, name, damage, bundle):
    """Copy the killed run, damage it with ``damage(checkpoints_dir)``, resume it:
    (result, log lines, workdir, what damage returned)."""
    workdir = runs["root"] / name
    shutil.copytree(runs["killed"], workdir)
    what = damage(workdir / "checkpoints")
    lines = []
    return _train(runs["config"], workdir, bundle, lines=lines), lines, workdir, what


def _assert_same_final_state(a, b):
    for part in ("trainable", "opt_state"):
        for x, y in zip(jax.tree.leaves(getattr(a["state"], part)), jax.tree.leaves(getattr(b["state"], part)),
                        strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _assert_metrics_like_uninterrupted(runs, workdir):
    rows = metrics_lib.read_metrics(str(workdir))
    assert rows[0] == EVAL_ROW
    train_rows = rows[1:]
    assert [r["step"] for r in train_rows] == list(range(1, STEPS + 1))  # each step once
    full = {r["step"]: r for r in metrics_lib.read_metrics(str(runs["full_dir"]))}
    for r in train_rows:
        assert r["loss"] == full[r["step"]]["loss"] and r["grad_norm"] == full[r["step"]]["grad_norm"]


def _truncate_largest_array_file(ckdir):
    data = ckdir / "6" / "state" / "ocdbt.process_0" / "d"
    target = max(data.iterdir(), key=lambda p: p.stat().st_size)
    os.truncate(target, target.stat().st_size // 2)
    return target.relative_to(ckdir / "6")


def test_truncated_array_file_resumes_from_previous_checkpoint(runs, remix_bundle):
    out, lines, workdir, rel = _resume(runs, "array", _truncate_largest_array_file, remix_bundle)
    ckdir = workdir / "checkpoints"
    damaged = [x for x in lines if "is damaged" in x]
    assert len(damaged) == 1 and "\n" not in damaged[0]
    moved = ckdir / "damaged" / os.listdir(ckdir / "damaged")[0]
    assert os.listdir(ckdir / "damaged") == [moved.name] and moved.name.startswith("step_6-")
    assert damaged[0].startswith(f"checkpoint step 6 in {ckdir} is damaged ({rel} (array ")
    assert ": OUT_OF_RANGE: " in damaged[0] and damaged[0].endswith(f"); moved it to {moved}")
    assert f"resumed from step 4 in {ckdir}" in lines
    # kept aside as it was, the truncated file included; the run saved a new step 6 and went on to 8
    assert (moved / rel).stat().st_size == (runs["killed"] / "checkpoints" / "6" / rel).stat().st_size // 2
    assert checkpointing.Checkpointer(str(ckdir)).all_steps() == [4, 6, 8]
    assert out["step"] == STEPS
    _assert_same_final_state(out, runs["full"])
    _assert_metrics_like_uninterrupted(runs, workdir)


def test_truncated_loader_state_resumes_from_previous_checkpoint(runs, remix_bundle):
    def damage(ckdir):
        f = ckdir / "6" / "data" / "metadata"
        f.write_bytes(f.read_bytes()[:10])

    out, lines, workdir, _ = _resume(runs, "json", damage, remix_bundle)
    ckdir = workdir / "checkpoints"
    damaged = [x for x in lines if "is damaged" in x]
    moved = ckdir / "damaged" / os.listdir(ckdir / "damaged")[0]
    assert damaged == [f"checkpoint step 6 in {ckdir} is damaged (data/metadata (loader state): malformed JSON "
                       f"(Expecting value: line 1 column 11, 10 bytes)); moved it to {moved}"]
    assert (moved / "data" / "metadata").read_bytes() == b'{"loader":'
    _assert_same_final_state(out, runs["full"])
    _assert_metrics_like_uninterrupted(runs, workdir)


def test_metrics_after_resume_keep_each_step_once(runs, remix_bundle):
    """Killed after its checkpoint at step 4 with metrics logged up to step 6 (no checkpoint 6 committed)."""
    out, lines, workdir, _ = _resume(runs, "metrics", lambda d: shutil.rmtree(d / "6"), remix_bundle)
    before = metrics_lib.read_metrics(str(runs["killed"]))
    assert [r["step"] for r in before] == [0, 1, 2, 3, 4, 5, 6]
    assert f"{workdir / 'metrics.jsonl'}: dropped 2 rows logged after step 4 by the interrupted run" in lines
    _assert_metrics_like_uninterrupted(runs, workdir)
    assert not (workdir / "checkpoints" / "damaged").exists()


def _state(config, bundle):
    tx, _ = opt_lib.make_optimizer(loop.optimizer_config(config))
    return loop.shard_state(bundle, tx, _mesh())[0]


def test_no_intact_checkpoint_is_an_error_and_deletes_nothing(runs, remix_bundle, tmp_path):
    ckdir = tmp_path / "checkpoints"
    shutil.copytree(runs["killed"] / "checkpoints", ckdir)
    for step in ("2", "4", "6"):
        (ckdir / step / "meta" / "metadata").write_text("")
    state, lines = _state(runs["config"], remix_bundle), []
    ck = checkpointing.Checkpointer(str(ckdir))
    with pytest.raises(checkpointing.NoIntactCheckpointError, match=r"no intact checkpoint to resume from .*"
                       r"step 6 -> .*step 4 -> .*step 2 -> .*Not starting again from step 0 on its own"):
        ck.restore_newest_intact(state, log_fn=lines.append)
    assert [x.split(" (")[0] for x in lines] == [f"checkpoint step {s} in {ckdir} is damaged" for s in (6, 4, 2)]
    assert all("(meta/metadata (run metadata): empty file)" in x for x in lines)
    assert sorted(n.split("-")[0] for n in os.listdir(ckdir / "damaged")) == ["step_2", "step_4", "step_6"]
    # a second attempt does not quietly start from step 0 either
    with pytest.raises(checkpointing.NoIntactCheckpointError):
        checkpointing.Checkpointer(str(ckdir)).restore_newest_intact(state, log_fn=lines.append)


def test_other_layout_is_not_damage(runs, lora_bundle, make_config, tmp_path):
    """A checkpoint of another adapter layout fails as is: nothing is moved aside."""
    ckdir = tmp_path / "checkpoints"
    shutil.copytree(runs["killed"] / "checkpoints", ckdir)
    state = _state(make_config("lora", num_samples=1), lora_bundle)
    with pytest.raises(ValueError, match="tree structures do not match"):
        checkpointing.Checkpointer(str(ckdir)).restore_newest_intact(state)
    assert sorted(os.listdir(ckdir)) == ["2", "4", "6"]


def test_rates_exclude_evaluation_and_checkpoint_time(runs):
    """1 s per step, 1000 s per evaluation and 500 s per save on the fake clock: rates stay 1 step/s."""
    rows = [r for r in metrics_lib.read_metrics(str(runs["full_dir"])) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["eval/score"] for r in rows if "eval/score" in r] == [2.0, 4.0, 6.0, 8.0]
    assert all(r["steps_per_s"] == 1.0 and r["tokens_per_s"] == r["tokens"] for r in rows)
    prog = runs["progress"]
    assert [(s, rate, eta) for s, rate, eta, _ in prog] == [(s, 1.0, STEPS - s) for s in range(1, STEPS + 1)]
    assert re.search(r"3/8 \[[0-9:]+<00:05, +1\.00step/s", prog[2][3]), prog[2][3]  # ETA and rate at step 3


def test_drop_rows_after(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "eval/a": 1.0}, {"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0, "eval/a": 0.5},
            {"step": 2, "eval/b": 0.1}, {"step": 3, "loss": 1.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')  # killed mid-line
    assert metrics_lib.drop_rows_after(str(path), 2) == 3  # the final eval row at 2, step 3, the cut line
    assert metrics_lib.read_metrics(str(tmp_path)) == rows[:3]
    assert metrics_lib.drop_rows_after(str(path), 2) == 0
    assert metrics_lib.drop_rows_after(str(path), 0) == 2 and metrics_lib.read_metrics(str(tmp_path)) == rows[:1]
    path.write_text(json.dumps(rows[0]) + "\nnot json\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: not a metrics row"):
        metrics_lib.drop_rows_after(str(path), 1)
    assert path.read_text().count("\n") == 3  # left as it was

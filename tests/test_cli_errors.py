"""Expected failures of every entry point end in one or two lines on stderr (the problem, then the fix) with exit
status 2 and no traceback; --debug or REMIX_DEBUG=1 shows the traceback. Every file a run reads, evaluation files
included (also with eval.at_start=False), is checked before the model is loaded, in one error."""

import errno
import os

import pytest
from tiny_run import cli, make_tiny_hf, stderr_lines, write_config, write_gsm8k

from remix_jax import cli as cli_lib


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return {"model": make_tiny_hf(d / "model"), "train": write_gsm8k(d / "train.jsonl"),
            "test": write_gsm8k(d / "test.jsonl", 4), "dir": d}


def test_unknown_config_key_is_one_line_with_the_suggestion(tmp_path):
    r = cli("main", "--config=configs/smoke.py", f"--workdir={tmp_path}", "--config.train.num_stepz=3")
    assert r.returncode == 2
    assert stderr_lines(r) == ["error: --config.train.num_stepz: no such config key 'train.num_stepz'; did you "
                               "mean --config.train.num_steps?"]
    r = cli("evaluate", "--config=configs/smoke.py", f"--workdir={tmp_path}", "--config.evl.tasks=gsm8k")
    assert r.returncode == 2
    assert stderr_lines(r) == ["error: --config.evl.tasks: no such config key 'evl'; did you mean "
                               "--config.eval.tasks?"]
    assert not os.listdir(tmp_path)


def test_bad_flags(tmp_path):
    r = cli("main", "--config=configs/smoke.py", "--workdirr=x")
    assert r.returncode == 2
    assert stderr_lines(r) == ["error: Unknown command line flag 'workdirr'. Did you mean: workdir ?",
                               "hint: python -m remix_jax.main --helpshort lists the flags"]
    r = cli("main", "--config=configs/smoke.py")
    assert (r.returncode, stderr_lines(r)) == (2, ["error: --workdir=DIR is required",
                                                   "hint: python -m remix_jax.main --helpshort lists the flags"])
    r = cli("main", "--config=configs/nope.py", f"--workdir={tmp_path}")
    assert (r.returncode, stderr_lines(r)) == (2, [
        "error: --config=configs/nope.py: no such config file 'configs/nope.py'",
        "hint: config files live in configs/ (e.g. --config=configs/smoke.py)"])
    r = cli("main", "--config=configs/quickstart.py:bad", f"--workdir={tmp_path}")
    assert r.returncode == 2
    assert stderr_lines(r)[0] == ("error: --config=configs/quickstart.py:bad: ValueError: configs/quickstart.py: "
                                  "unknown variant 'bad'; known: remix, lora, mixlora")
    r = cli("main", "--config=configs/smoke.py", f"--workdir={tmp_path}", "--config.train.num_steps=1.5")
    assert r.returncode == 2
    assert stderr_lines(r)[0] == "error: --config.train.num_steps=1.5: invalid literal for int() with base 10: '1.5'"
    r = cli("generate", "--prompt=hi", "--model=a", f"--run={tmp_path}")
    assert (r.returncode, stderr_lines(r)) == (2, [
        "error: give one of --model=PATH (a model) or --run=WORKDIR (a training run)",
        "hint: python -m remix_jax.generate --helpshort lists the flags"])
    r = cli("generate", "--prompt=hi", f"--run={tmp_path / 'absent'}")
    assert (r.returncode, stderr_lines(r)) == (2, [f"error: --run={tmp_path / 'absent'}: no such folder"])
    r = cli("sweep", f"--sweep={tmp_path / 'absent.py'}")
    assert (r.returncode, stderr_lines(r)) == (2, [f"error: sweep file {str(tmp_path / 'absent.py')!r} does not "
                                                   "exist"])
    r = cli("sweep", "--sweep=experiments/smoke.py", "--bogus")
    assert (r.returncode, stderr_lines(r)) == (2, ["error: unrecognized arguments: --bogus",
                                                   "hint: python -m remix_jax.sweep --help lists the options"])


def test_invalid_config_is_one_line_per_problem(tmp_path):
    r = cli("main", "--config=configs/smoke.py", f"--workdir={tmp_path}", "--config.train.baseline=rlo")
    assert (r.returncode, stderr_lines(r)) == (2, ["error: invalid config: train.baseline: 'rlo' is not rloo or "
                                                   "none"])


def test_every_missing_path_is_listed_before_the_model_loads(tiny, tmp_path):
    """eval.at_start=False (as in every sweep of experiments/): the evaluation files, read only after training,
    are checked too, with the model path and the data, in one error."""
    missing = tmp_path / "missing"
    cfg = write_config(tmp_path / "cfg.py", missing / "model", missing / "train.jsonl", missing / "test.jsonl",
                       **{"eval.at_start": False, "eval.gsm8k.shots": 2,
                          "eval.gsm8k.shots_path": str(missing / "shots.jsonl")})
    r = cli("main", f"--config={cfg}", f"--workdir={tmp_path / 'run'}", timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert stderr_lines(r) == [
        "error: invalid config:",
        f"  model.path: '{missing / 'model'}' does not exist",
        f"  data.sources.train.path: '{missing / 'train.jsonl'}' does not exist",
        f"  eval.gsm8k.path: '{missing / 'test.jsonl'}' does not exist",
        f"  eval.gsm8k.shots_path: '{missing / 'shots.jsonl'}' does not exist",
        f"  eval.heldout.source.path: '{missing / 'test.jsonl'}' does not exist",
    ]
    assert not (tmp_path / "run").exists()  # nothing written
    # A TFDS source: its raw files are needed only while it is not prepared.
    ok = write_config(tmp_path / "ok.py", tiny["model"], tiny["train"], tiny["test"])
    r = cli("main", f"--config={ok}", f"--workdir={tmp_path / 'run'}",
            f"--config.data.tfds_data_dir={tmp_path / 'tfds'}", "--config.data.sources.train.name=gsm8k",
            f"--config.data.sources.train.manual_dir={missing / 'raw'}",
            timeout=300)
    assert r.returncode == 2
    assert stderr_lines(r) == [f"error: invalid config: data.sources.train.manual_dir: '{missing / 'raw'}' is not a "
                               "folder"]
    (tmp_path / "tfds" / "gsm8k").mkdir(parents=True)  # "prepared": the raw folder is not needed
    from remix_jax.data import source_config
    from remix_jax.run_config import source_path_problems

    src = source_config("gsm8k", manual_dir=str(missing / "raw"))
    assert source_path_problems("data.sources.g", src, str(tmp_path / "tfds")) == []
    assert source_path_problems("data.sources.g", src, "") == [
        f"data.sources.g.manual_dir: '{missing / 'raw'}' is not a folder",
        "data.tfds_data_dir: missing (data.sources.g is the TFDS dataset 'gsm8k', prepared there)"]


def test_unwritable_workdir(tiny, tmp_path):
    cfg = write_config(tmp_path / "cfg.py", tiny["model"], tiny["train"], tiny["test"])
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        workdir = ro / "run"
    else:  # permission bits do not stop root; sysfs refuses new folders (EPERM, or EROFS when mounted read-only)
        workdir = "/sys/remix_jax_test_run"
    r = cli("main", f"--config={cfg}", f"--workdir={workdir}", timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = stderr_lines(r)
    assert len(lines) == 2 and lines[0].startswith(f"error: cannot write {workdir}: "), lines
    assert lines[1] == "hint: choose a folder you can write to (for a training run: another --workdir)"


def test_os_errors_are_described():
    assert cli_lib.describe(OSError(errno.EROFS, "Read-only file system", "/mnt/runs/a")) == (
        "cannot write /mnt/runs/a: Read-only file system",
        "choose a folder you can write to (for a training run: another --workdir)")
    assert cli_lib.describe(OSError(errno.ENOSPC, "No space left on device", "/d/x")) == (
        "/d/x: No space left on device", "free some disk space or choose a folder on another disk")
    assert cli_lib.describe(FileNotFoundError(errno.ENOENT, "No such file or directory", "/d/y")) == (
        "/d/y: No such file or directory", "")
    assert cli_lib.describe(OSError(errno.EIO, "Input/output error")) is None  # not the user's to fix
    assert cli_lib.describe(ValueError("a bug")) is None


def test_data_error_during_training_is_short(tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(tiny["train"].read_text() + '{"question": "cut\n')
    cfg = write_config(tmp_path / "cfg.py", tiny["model"], bad, tiny["test"])
    r = cli("main", f"--config={cfg}", f"--workdir={tmp_path / 'run'}", "--config.eval.tasks=", timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = stderr_lines(r)
    assert lines[-1].startswith(f"error: {bad}:13: malformed JSON line"), lines
    assert "Traceback" not in r.stderr


def test_debug_shows_the_traceback(tmp_path):
    for args, env in (((("--debug",)), {}), ((), {"REMIX_DEBUG": "1"})):
        r = cli("main", "--config=configs/smoke.py", f"--workdir={tmp_path}", "--config.train.num_stepz=3", *args,
                **env)
        assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr
        assert 'Did you mean "num_steps"' in r.stderr
    r = cli("main", "--config=configs/smoke.py", f"--workdir={tmp_path}", "--config.train.baseline=rlo", "--debug")
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr and "ConfigError" in r.stderr

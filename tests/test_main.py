"""The entry point and config validation: bad configs fail with one clear message before compiling."""

import json
import os
import subprocess
import sys

import pytest

from remix_jax.run_config import ConfigError, default_config, validate_config
from tests.tiny_run import CHILD_XLA_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ok_config():
    c = default_config()
    c.model.path = "random:tiny"
    c.data.synthetic = True
    return c


def test_valid_config_passes():
    validate_config(_ok_config(), num_devices=8)


def test_every_problem_is_reported_at_once():
    c = _ok_config()
    with c.unlocked():
        c.train.num_stepz = 3
    with pytest.raises(ConfigError, match=r"train.num_stepz: unknown key"):
        validate_config(c)
    c = _ok_config()
    c.model.path = ""
    c.train.num_samples = 1  # remix with RLOO needs M >= 2
    c.adapter.top_k = 9  # > num_experts
    c.data.batch_size = 6
    with pytest.raises(ConfigError) as e:
        validate_config(c, num_devices=4)
    msg = str(e.value)
    assert "model.path: missing" in msg
    assert "train.num_samples=1" in msg and "at least 2" in msg
    assert "top_k" in msg
    assert "not divisible by the data-parallel shards" in msg


def test_impossible_combinations():
    c = _ok_config()
    c.adapter.method = "mixlora"
    c.train.num_samples = 4
    with pytest.raises(ConfigError, match="only remix and uniform_random draw several routing samples"):
        validate_config(c)
    c.train.num_samples = 1
    c.train.sample_chunk = 2
    with pytest.raises(ConfigError, match="method 'mixlora' needs train.sample_chunk=0"):
        validate_config(c)
    c = _ok_config()
    c.adapter.method = "uniform_random"  # no router: M > 1 averages the loss over M uniform draws
    c.train.num_samples = 4
    c.train.sample_chunk = 2
    validate_config(c)
    c.train.sample_chunk = 3
    with pytest.raises(ConfigError, match="train.sample_chunk=3 does not divide train.num_samples=4"):
        validate_config(c)
    c = _ok_config()
    c.train.baseline = "none"
    c.train.num_samples = 1
    validate_config(c)  # plain REINFORCE works with one sample
    c = _ok_config()
    c.model.path = "random:nope"
    with pytest.raises(ConfigError, match="unknown random shape"):
        validate_config(c)
    c = _ok_config()
    c.mesh.tensor = 3
    with pytest.raises(ConfigError, match="config.mesh"):
        validate_config(c, num_devices=8)
    c = _ok_config()
    c.data.synthetic = False
    with pytest.raises(ConfigError, match="data.sources: empty"):
        validate_config(c)


def _cli(*args, timeout=300):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",  # one CPU device, quick codegen: quicker to compile
           "XLA_FLAGS": CHILD_XLA_FLAGS}
    return subprocess.run([sys.executable, "-m", "remix_jax.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_rejects_unknown_override(tmp_path):
    r = _cli("--config=configs/smoke.py", f"--workdir={tmp_path}", "--config.train.nope=1")
    assert r.returncode != 0 and "nope" in r.stderr


def test_cli_reports_invalid_config_before_compiling(tmp_path):
    r = _cli("--config=configs/gsm8k.py:remix", f"--workdir={tmp_path}")
    assert r.returncode == 2
    assert "model.path: missing" in r.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_cli_smoke_run(tmp_path):
    r = _cli("--config=configs/smoke.py:remix", f"--workdir={tmp_path}", "--config.train.num_steps=3",
             "--config.train.log_every=1", "--config.train.checkpoint_every=0", "--config.data.max_length=16")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["export"]
    assert "train step memory per device" in r.stdout + r.stderr
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert os.path.exists(tmp_path / "export" / "adapters.safetensors")
    assert os.listdir(tmp_path / "checkpoints") == ["3"]
    # parameter counts, written when training started: ReMix n=4, k=2, r=4 on random:tiny's gate/up/down
    # (experts 2 layers x 4 x 4 x 576, block router 2 x 64 x 4), and the same back-filled from config.json alone
    counts = json.loads((tmp_path / "params.json").read_text())
    assert counts == {"trainable": 18432 + 512, "active": 512 + 18432 // 2}
    from remix_jax.training import param_record

    again = tmp_path / "backfilled"
    again.mkdir()
    (again / "config.json").write_bytes((tmp_path / "config.json").read_bytes())
    assert param_record.backfill(str(again)) == ("written", counts)

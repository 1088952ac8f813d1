"""The entry points' persistent compilation cache (remix_jax/compile_cache.py): where it goes, and that a second
process building the same programs reads them back instead of compiling."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from remix_jax import compile_cache

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_where_the_cache_goes():
    assert compile_cache.cache_dir({"JAX_COMPILATION_CACHE_DIR": "/j", "REMIX_COMPILATION_CACHE": "/r"}) is None
    for off in ("0", "off", "OFF", "", " false "):
        assert compile_cache.cache_dir({"REMIX_COMPILATION_CACHE": off}) is None
    assert compile_cache.cache_dir({"REMIX_COMPILATION_CACHE": "/r/c"}) == "/r/c"
    assert compile_cache.cache_dir({"REMIX_COMPILATION_CACHE": "~/c"}) == os.path.expanduser("~/c")
    assert compile_cache.cache_dir({"XDG_CACHE_HOME": "/x"}) == "/x/remix_jax/jax"
    assert compile_cache.cache_dir({}) == os.path.join(os.path.expanduser("~"), ".cache", "remix_jax", "jax")


def test_size_cap():
    assert compile_cache.max_bytes({}) == 8 * 2**30
    assert compile_cache.max_bytes({"REMIX_COMPILATION_CACHE_MAX_GB": "0.5"}) == 2**29
    assert compile_cache.max_bytes({"REMIX_COMPILATION_CACHE_MAX_GB": "-1"}) == -1
    with pytest.raises(ValueError, match=r"REMIX_COMPILATION_CACHE_MAX_GB='lots'"):
        compile_cache.max_bytes({"REMIX_COMPILATION_CACHE_MAX_GB": "lots"})


def _child_env(cache) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "REMIX_COMPILATION_CACHE")}
    env.update(REMIX_COMPILATION_CACHE=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return env


def _entries(folder: pathlib.Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_a_second_training_process_reads_the_programs_back(tmp_path):
    """Two identical tiny training runs in separate processes (new workdirs): the first writes the compiled
    programs, the second adds none (each one it builds is a hit) and trains to the same losses."""
    cache = tmp_path / "cache"
    args = [sys.executable, "-m", "remix_jax.main", "--config=configs/smoke.py:remix", "--config.train.num_steps=3",
            "--config.train.log_every=1", "--config.train.checkpoint_every=0", "--config.train.progress=False"]
    out = []
    for i in (1, 2):
        r = subprocess.run(args + [f"--workdir={tmp_path / f'run{i}'}"], cwd=REPO, env=_child_env(cache),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        out.append(_entries(cache))
    assert out[0], "the first run cached nothing"
    assert out[1] == out[0], f"the second run compiled {sorted(out[1] - out[0])} again"
    losses = [[(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, (tmp_path / f"run{i}" / "metrics.jsonl")
                                                                  .read_text().splitlines()) if "loss" in r]
              for i in (1, 2)]
    assert len(losses[0]) == 3 and losses[0] == losses[1]


def test_off_switch_and_jax_setting_write_nothing_there(tmp_path):
    code = ("from remix_jax import compile_cache; import jax, jax.numpy as jnp; print(compile_cache.enable()); "
            "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((32, 32))).block_until_ready()")
    env = _child_env(tmp_path / "ours")
    env["REMIX_COMPILATION_CACHE"] = "0"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stderr[-2000:]
    env = _child_env(tmp_path / "ours")
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "theirs")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stderr[-2000:]
    assert not (tmp_path / "ours").exists() and _entries(tmp_path / "theirs")


def test_an_unusable_folder_or_cap_leaves_the_cache_off(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = ("from remix_jax import compile_cache; import jax; print(compile_cache.enable()); "
            "print(jax.config.jax_compilation_cache_dir)")
    r = subprocess.run([sys.executable, "-c", code], env=_child_env(blocker / "cache"), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[-2:] == ["None", "None"]
    assert f"compilation cache off: cannot create {blocker / 'cache'}" in r.stdout
    env = _child_env(tmp_path / "capped")
    env["REMIX_COMPILATION_CACHE_MAX_GB"] = "lots"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.splitlines()[-2:] == ["None", "None"], r.stderr[-2000:]
    assert "compilation cache off: $REMIX_COMPILATION_CACHE_MAX_GB='lots': expected a number" in r.stdout
    assert not (tmp_path / "capped").exists()

"""Real multi-process training on CPU: the launch command of docs/multihost.md, killed and resumed.

NUM_PROCESSES processes of ``python -m remix_jax.main``, each with DEVICES_PER_PROCESS CPU devices, join
one job through ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` on the loopback
address (jax's gloo collectives carry the cross-process reductions). They train ReMix on a model directory
with a tokenizer and a JSONL file, each process reading its own shard, with adapters and routers sharded
over an fsdp axis that spans the processes; they write orbax checkpoints together, are SIGKILLed after the
first one, and the same command resumes them. The result must equal a single-process run on the same
global batches: adapters, routers, the optimizer state, every logged loss and the exported adapters.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.tiny_run import CHILD_XLA_FLAGS

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = pathlib.Path(__file__).with_name("multiprocess_config.py")
NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 2
GLOBAL_BATCH, NUM_STEPS = 8, 8  # as in multiprocess_config.py
LAUNCH_TIMEOUT_S = 600  # per launch: compilation dominates, and a shared 2-core machine may be busy
# Parity is exact (float32, no tolerance): both runs execute the same partitioned program on the same mesh
# shape and the same batches, and the cross-process all-reduce (gloo) adds the per-device partial sums in
# the order of the in-process one. A reduction order change would show as ~1e-7 relative differences.


def _gloo_missing() -> str | None:
    """Why this jax cannot run multi-process CPU collectives, or None when it can."""
    import jax

    try:
        from jax._src.lib import _jax
    except ImportError:
        return f"jax {jax.__version__}: no jax._src.lib._jax to check for CPU collectives"
    if not hasattr(_jax, "make_gloo_tcp_collectives"):
        return f"jaxlib {jax.__version__} was built without gloo CPU collectives"
    if not hasattr(jax.config, "jax_cpu_collectives_implementation"):
        return f"jax {jax.__version__} has no jax_cpu_collectives_implementation option"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Job:
    """Processes started together, each in its own session; ``kill`` SIGKILLs the ones still running."""

    def __init__(self, name: str, logdir: pathlib.Path, envs: list[dict], args: list[str]):
        self.name, self.procs, self.logs = name, [], []
        for i, env in enumerate(envs):
            self.logs.append(logdir / f"{name}.{i}.log")
            with open(self.logs[-1], "wb") as out:
                self.procs.append(subprocess.Popen([sys.executable, "-m", "remix_jax.main", *args], cwd=REPO,
                                                   env=env, stdout=out, stderr=subprocess.STDOUT,
                                                   start_new_session=True))

    def output(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def check(self) -> bool:
        """True when every process has exited 0; raises as soon as one fails (the others are killed)."""
        codes = [p.poll() for p in self.procs]
        bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            self.kill()
            i, c = bad[0]
            raise AssertionError(f"{self.name}: process {i} exited with {c}:\n{self.output(i)[-6000:]}")
        return all(c == 0 for c in codes)

    def wait(self, timeout: float = LAUNCH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.check():
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.name}: still running after {timeout:.0f} s:\n"
                                     + "\n".join(self.output(i)[-3000:] for i in range(len(self.procs))))
            time.sleep(0.05)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # the process's own session: it and nothing else
            p.wait()


@pytest.fixture
def jobs():
    """Every Job a test starts; none outlives the test, whatever happens."""
    started: list[Job] = []
    yield started
    for job in started:
        job.kill()


def _env(cache: pathlib.Path, devices: int, process_id: int | None = None, port: int | None = None) -> dict:
    """A child's environment: CPU only, ``devices`` devices, and the job description when distributed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "REMIX_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               XLA_FLAGS=CHILD_XLA_FLAGS,  # quick code generation, as for the whole suite
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
               # Shared compilation cache: the resumed job loads the first job's executables.
               JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    if process_id is not None:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(NUM_PROCESSES),
                   JAX_PROCESS_ID=str(process_id))
    return env


def _job_envs(cache: pathlib.Path) -> list[dict]:
    port = _free_port()
    return [_env(cache, DEVICES_PER_PROCESS, i, port) for i in range(NUM_PROCESSES)]


def _model_dir(path: pathlib.Path) -> pathlib.Path:
    """random:tiny (vocab 272) as a Hugging Face directory with a byte-level tokenizer."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from remix_jax.models.hf_io import expected_shapes
    from remix_jax.models.model_config import named_config, to_hf_config_dict

    cfg = named_config("tiny", vocab_size=272)
    rng = np.random.default_rng(0)
    tensors = {k: (np.ones(s, np.float32) if "norm" in k else 0.1 * rng.standard_normal(s).astype(np.float32))
               for k, s in expected_shapes(cfg).items()}
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(to_hf_config_dict(cfg)))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>").save_pretrained(str(path))
    return path


def _data_files(tmp: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(the job's file, the single-process run's file).

    With ``shuffle=False`` process p of P reads rows p, p + P, p + 2P, ... (remix_jax/data/loader.py), and
    global batch k is process 0's rows, then process 1's, ... (the mesh orders the devices by process).
    The second file lists the rows in that order, so a single process reads the same global batches.
    """
    rng = np.random.default_rng(1)
    pairs = rng.integers(0, 1000, (GLOBAL_BATCH * NUM_STEPS, 2))
    rows = [{"question": f"{a}+{b}", "answer": str(a + b)} for a, b in pairs]
    per = GLOBAL_BATCH // NUM_PROCESSES
    order = [NUM_PROCESSES * (per * k + i) + p for k in range(NUM_STEPS) for p in range(NUM_PROCESSES)
             for i in range(per)]
    assert sorted(order) == list(range(len(rows)))
    files = tmp / "job.jsonl", tmp / "single.jsonl"
    for f, rs in zip(files, (rows, [rows[j] for j in order]), strict=True):
        f.write_text("".join(json.dumps(r) + "\n" for r in rs))
    return files


def _args(model: pathlib.Path, data: pathlib.Path, workdir: pathlib.Path) -> list[str]:
    return [f"--config={CONFIG}", f"--workdir={workdir}", f"--config.model.path={model}",
            f"--config.data.sources.train.path={data}"]


def _checkpointed(step_dir: pathlib.Path) -> dict:
    """The "state" item of an orbax checkpoint step as numpy arrays (any writer's sharding)."""
    import jax
    import orbax.checkpoint as ocp

    ckptr = ocp.PyTreeCheckpointer()
    tree = ckptr.metadata(step_dir / "state").item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckptr.restore(step_dir / "state", args=ocp.args.PyTreeRestore(restore_args=args))


def _finalized_steps(workdir: pathlib.Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if d.is_dir() else []


def _assert_trees_equal(got, want) -> None:
    import jax

    g, w = jax.tree_util.tree_flatten_with_path(got)[0], jax.tree_util.tree_flatten_with_path(want)[0]
    assert [p for p, _ in g] == [p for p, _ in w]
    assert len(g) > 10  # adapters, routers, Adam's moments and counts, the step
    for (path, a), (_, b) in zip(g, w, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


@pytest.mark.skipif(_gloo_missing() is not None, reason=str(_gloo_missing()))
def test_killed_and_resumed_job_matches_single_process(tmp_path, jobs):
    from remix_jax.training import checkpointing
    from remix_jax.training.metrics import read_metrics

    cache = tmp_path / "compilation_cache"
    model = _model_dir(tmp_path / "model")
    job_data, single_data = _data_files(tmp_path)
    wd_single, wd_job = tmp_path / "single", tmp_path / "job"
    single = Job("single", tmp_path, [_env(cache, NUM_PROCESSES * DEVICES_PER_PROCESS)],
                 _args(model, single_data, wd_single))
    jobs.append(single)

    # Start the job; SIGKILL every process as soon as the first checkpoint is complete.
    first = Job("job", tmp_path, _job_envs(cache), _args(model, job_data, wd_job))
    jobs.append(first)
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not _finalized_steps(wd_job):
        assert not first.check(), "the job ended before writing a checkpoint"
        assert time.monotonic() < deadline, f"no checkpoint after {LAUNCH_TIMEOUT_S} s"
        time.sleep(0.02)
    finished = (wd_job / "run_complete.json").exists()
    first.kill()
    assert not finished, "the job finished before it could be killed"
    assert [p.returncode for p in first.procs] == [-signal.SIGKILL] * NUM_PROCESSES
    start = _finalized_steps(wd_job)[-1]  # where the resumed job starts (orbax ignores unfinished steps)
    assert start < NUM_STEPS, "the job wrote its last checkpoint before it could be killed"

    resumed = Job("resumed", tmp_path, _job_envs(cache), _args(model, job_data, wd_job))
    jobs.append(resumed)
    resumed.wait()
    single.wait()

    # Adapters, routers, the optimizer state and the step of the last checkpoint equal the single process's.
    assert _finalized_steps(wd_single)[-1] == _finalized_steps(wd_job)[-1] == NUM_STEPS
    got = _checkpointed(wd_job / "checkpoints" / str(NUM_STEPS))
    want = _checkpointed(wd_single / "checkpoints" / str(NUM_STEPS))
    assert int(got["step"]) == NUM_STEPS
    _assert_trees_equal(got, want)

    # The export (gathered from both processes, written by process 0) is the checkpointed trainable state.
    tensors, desc = checkpointing.load_exported_adapters(str(wd_job / "export"))
    flat = {**checkpointing.flatten_tree(got["trainable"]["adapter"], prefix="adapter/"),
            **checkpointing.flatten_tree(got["trainable"]["router"], prefix="router/")}
    assert sorted(tensors) == sorted(flat)
    for k, v in flat.items():
        np.testing.assert_array_equal(tensors[k], v, err_msg=k)
    assert desc["model_path"] == str(model)

    # metrics.jsonl: rows from process 0 only, each loss equal to the single process's at that step. Steps
    # after the resumed checkpoint may have been logged before the kill too; one up to it logged twice would
    # mean that the job started again from step 0.
    want_loss = {r["step"]: r["loss"] for r in read_metrics(str(wd_single))}
    rows = read_metrics(str(wd_job))
    assert sorted(want_loss) == list(range(1, NUM_STEPS + 1))
    assert {r["step"] for r in rows} == set(want_loss)
    for s in range(1, start + 1):
        assert [r["step"] for r in rows].count(s) == 1, f"step {s} logged more than once"
    assert [r["loss"] for r in rows] == [want_loss[r["step"]] for r in rows]
    assert json.loads((wd_job / "run_complete.json").read_text())["step"] == NUM_STEPS
    summaries = [json.loads(resumed.output(i).strip().splitlines()[-1]) for i in range(NUM_PROCESSES)]
    assert [s["step"] for s in summaries] == [NUM_STEPS] * NUM_PROCESSES
    assert summaries[0]["export"] and not any(s["export"] for s in summaries[1:])


def test_synthetic_batches_of_processes_form_the_single_process_batch():
    """The synthetic task's global batch does not depend on the number of processes."""
    from remix_jax.training.synthetic import SyntheticLoader

    whole = SyntheticLoader(8, 16, 256, seed=3)
    parts = [SyntheticLoader(2, 16, 256, seed=3, process_index=p, process_count=4) for p in range(4)]
    for _ in range(3):
        want = next(whole)
        got = [next(p) for p in parts]
        for k in want:
            np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), want[k])

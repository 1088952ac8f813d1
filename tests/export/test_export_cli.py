"""``python -m remix_jax.export`` on run folders: adapters from export/ or from the newest checkpoint, every
format written whole or not at all, and clear errors."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from remix_jax.export.runs import RunLoadError, load_run
from remix_jax.export.writer import ExportError, export_run, write_atomically
from remix_jax.run_config import default_config
from remix_jax.training import checkpointing
from remix_jax.training import optimizer as opt_lib
from remix_jax.training.loop import optimizer_config
from remix_jax.training.train_state import create_train_state
from tests.export.helpers import adapted, our_logits, random_trainable, torch_logits, transformers

FFN = ("gate_proj", "up_proj", "down_proj")


def _run_config(model_dir, num_steps: int, **adapter_kw):
    c = default_config()
    c.model.path = str(model_dir)
    for k, v in adapter_kw.items():
        c.adapter[k] = v
    c.train.num_steps = num_steps
    c.train.num_samples = 2 if adapter_kw["method"] == "remix" else 1
    return c


def _make_run(workdir, model_dir, cfg, trainable, acfg, config, exported_steps=None, checkpoint_step=None):
    """A run folder as remix_jax.main leaves it: config.json, export/ and/or checkpoints/."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    if exported_steps is not None:
        description = {"adapter": dataclasses.asdict(acfg), "model_path": str(model_dir),
                       "model_config": {}, "train": {"num_steps": exported_steps}}
        checkpointing.export_adapters(os.path.join(workdir, "export"), trainable, description)
    if checkpoint_step is not None:
        tx, _ = opt_lib.make_optimizer(optimizer_config(config))
        state = create_train_state(None, trainable, tx).replace(step=np.int32(checkpoint_step))
        ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
        ckpt.save(state, {}, {"seed": 0})
        ckpt.close()


@pytest.fixture(scope="module")
def lora_run(tiny_base, tmp_path_factory):
    d, cfg, base = tiny_base("llama")
    kw = dict(method="dora", targets=("q_proj", "down_proj"), rank=4, alpha=8.0)
    acfg, model = adapted(cfg, **kw)
    trainable = random_trainable(model, seed=5)
    wd = tmp_path_factory.mktemp("runs") / "dora"
    _make_run(wd, d, cfg, trainable, acfg, _run_config(d, 10, **kw), exported_steps=10)
    return wd, cfg, base, model, trainable


def test_export_folder_to_merged_model(lora_run, tmp_path):
    wd, cfg, base, model, trainable = lora_run
    parts = load_run(str(wd))
    assert parts.source == f"export {wd / 'export'}"
    jax.tree.map(np.testing.assert_array_equal, parts.trainable, trainable)
    out = export_run(str(wd), "merged", tmp_path / "merged")
    merged = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").float().eval()
    np.testing.assert_allclose(torch_logits(merged), our_logits(model, base, trainable), atol=2e-5, rtol=0)


def test_newest_checkpoint_wins_over_an_older_export(tiny_base, tmp_path):
    d, cfg, _ = tiny_base("qwen2")
    kw = dict(method="remix", targets=FFN, num_experts=4, top_k=2, rank=2, alpha=4.0)
    acfg, model = adapted(cfg, **kw)
    old, new = random_trainable(model, seed=1), random_trainable(model, seed=2)
    wd = tmp_path / "run"
    _make_run(wd, d, cfg, old, acfg, _run_config(d, 20, **kw), exported_steps=10, checkpoint_step=20)
    parts = load_run(str(wd))
    assert parts.source == "checkpoint step 20" and parts.adapter_cfg == acfg
    jax.tree.map(np.testing.assert_array_equal, parts.trainable, old)  # the checkpoint holds `old`
    assert not np.array_equal(old["router"]["layers"]["mlp"]["weight"], new["router"]["layers"]["mlp"]["weight"])
    out = export_run(str(wd), "hf-mixture", tmp_path / "mixture")
    assert json.loads((out / "config.json").read_text())["remix_mixture"]["method"] == "remix"


def test_refusals_leave_nothing_behind(lora_run, tmp_path):
    wd = lora_run[0]
    with pytest.raises(ExportError, match="cannot be exported as a mixture"):
        export_run(str(wd), "hf-mixture", tmp_path / "a")
    with pytest.raises(ExportError, match="adapters are written in float32"):
        export_run(str(wd), "peft", tmp_path / "a", dtype="bfloat16")
    assert not (tmp_path / "a").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("a finished export")
    with pytest.raises(ExportError, match="already exists; an export never overwrites"):
        export_run(str(wd), "peft", tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "a finished export"

    def fail(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(tmp_path / "b", fail)
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    with pytest.raises(RunLoadError, match="no adapters"):
        load_run(str(tmp_path / "taken"))


def _cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "remix_jax.export", *args], capture_output=True, text=True,
                          env=env, timeout=900)


def test_cli(lora_run, tmp_path):
    wd = lora_run[0]
    ok = _cli(f"--run={wd}", "--format=peft", f"--out={tmp_path / 'peft'}")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(tmp_path / "peft")
    assert sorted(os.listdir(tmp_path / "peft")) == ["adapter_config.json", "adapter_model.safetensors"]
    bad = _cli(f"--run={wd}", "--format=hf-mixture", f"--out={tmp_path / 'mix'}")
    assert bad.returncode == 2 and "error: --format=hf-mixture: adapter method 'dora'" in bad.stderr
    assert not (tmp_path / "mix").exists()

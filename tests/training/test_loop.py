"""The training loop: resume N + N == 2N, NaN stops cleanly, metrics and exported adapters."""

import json
import os

import jax
import numpy as np
import pytest

from remix_jax.training import checkpointing, loop
from remix_jax.training import metrics as metrics_lib


def _train(config, workdir, bundle, **kw):
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1],
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    return loop.train(config, str(workdir), bundle=bundle, mesh=mesh, log_fn=lambda s: None, **kw)


def test_resume_equals_uninterrupted(tmp_path, make_config, remix_bundle, monkeypatch):
    config = make_config("remix", num_steps=4, checkpoint_every=2, log_every=2)
    compiled_from = []  # the step compiles from the state's layout, before anything of the state is placed
    real_compile = loop.compile_train_step
    monkeypatch.setattr(loop, "compile_train_step", lambda step, state, *a, **k: (
        compiled_from.extend(type(x) for x in jax.tree.leaves(state)), real_compile(step, state, *a, **k))[1])
    full = _train(config, tmp_path / "full", remix_bundle)
    assert compiled_from and set(compiled_from) == {jax.ShapeDtypeStruct}
    part = _train(config, tmp_path / "resumed", remix_bundle, stop_after=2)
    assert part["step"] == 2 and part["export"] is None
    rest = _train(config, tmp_path / "resumed", remix_bundle)
    assert rest["step"] == 4
    for part in ("trainable", "opt_state"):
        leaves_full = jax.tree.leaves(getattr(full["state"], part))
        leaves_rest = jax.tree.leaves(getattr(rest["state"], part))
        for a, b in zip(leaves_full, leaves_rest, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The step-2 checkpoint written while the full run kept stepping (and donating its state) holds
    # exactly what the interrupted run saved.
    saved = []
    for run in ("full", "resumed"):
        ck = checkpointing.Checkpointer(str(tmp_path / run / "checkpoints"))
        saved.append(ck.restore(full["state"], step=2))
        ck.close()
    assert saved[0][1] == saved[1][1] == {"position": 2}
    ckpt_full, ckpt_res = (jax.tree.leaves(x[0].trainable) for x in saved)
    for a, b in zip(ckpt_full, ckpt_res, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows_full = metrics_lib.read_metrics(str(tmp_path / "full"))
    rows_res = metrics_lib.read_metrics(str(tmp_path / "resumed"))
    assert [r["step"] for r in rows_full] == [r["step"] for r in rows_res] == [2, 4]
    assert [r["loss"] for r in rows_full] == [r["loss"] for r in rows_res]  # same data, same routing samples
    for key in ("step", "loss", "lr", "tokens_per_s", "routing/ess", "routing/ess_softmax_per_block",
                "surrogate"):
        assert key in rows_full[-1]
    assert len(rows_full[-1]["routing/ess_softmax_per_block"]) == 2  # one per block of random:tiny
    assert os.listdir(tmp_path / "full" / "tensorboard")
    # Exported adapters load back to exactly the final trainable state.
    tensors, desc = checkpointing.load_exported_adapters(str(tmp_path / "full" / "export"))
    final = jax.device_get(full["state"].trainable)
    flat = checkpointing.flatten_tree(final["adapter"], prefix="adapter/")
    flat.update(checkpointing.flatten_tree(final["router"], prefix="router/"))
    assert set(tensors) == set(flat) and any(k.startswith("router/") for k in flat)
    for k, v in flat.items():
        np.testing.assert_array_equal(tensors[k], v)
    assert desc["adapter"]["method"] == "remix" and desc["adapter"]["num_experts"] == 4
    assert desc["model_path"] == "random:tiny"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, make_config, lora_bundle):
    """An absurd learning rate overflows the adapters after the first update: the step-2 loss is NaN."""
    config = make_config("lora", num_samples=1, num_steps=5, checkpoint_every=1, log_every=1)
    config.optimizer.adapter_lr = 1e30
    config.optimizer.grad_clip_norm = 0.0
    config.optimizer.warmup_steps = 0
    with pytest.raises(loop.TrainingDivergedError, match=r"non-finite training loss at step 2.*last good "
                                                         r"checkpoint is step 1"):
        _train(config, tmp_path, lora_bundle)
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
    assert ckpt.all_steps() == [1]
    tx_cfg = loop.optimizer_config(config)
    from remix_jax.training import optimizer as opt_lib
    tx, _ = opt_lib.make_optimizer(tx_cfg)
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1],
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    state, _ = loop.shard_state(lora_bundle, tx, mesh)
    restored, data_state, meta = ckpt.restore(state)
    ckpt.close()
    assert int(restored.step) == 1 and data_state == {"position": 1} and meta["seed"] == config.seed
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored.trainable))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1]  # the NaN step was never logged as a good one


def test_nan_loss_before_any_checkpoint_says_none_was_saved(tmp_path, make_config, lora_bundle):
    config = make_config("lora", num_samples=1, num_steps=5, checkpoint_every=0, log_every=1)
    config.optimizer.adapter_lr = 1e30
    config.optimizer.grad_clip_norm = 0.0
    config.optimizer.warmup_steps = 0
    with pytest.raises(loop.TrainingDivergedError) as e:
        _train(config, tmp_path, lora_bundle)
    assert str(e.value).startswith("non-finite training loss at step 2 (loss=")
    assert str(e.value).endswith("); stopped, no checkpoint had been saved")
    assert not os.listdir(tmp_path / "checkpoints")
    assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1]

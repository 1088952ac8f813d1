"""The train step: frozen base, optimizer state only for adapters/routers, accumulation, sharding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.parallel import mesh as mesh_lib
from remix_jax.training import loop
from remix_jax.training import optimizer as opt_lib
from remix_jax.training.train_step import compile_train_step, make_train_step


def _run(bundle, config, batches, mesh, grad_accum=1):
    """Compile the step on ``mesh`` and run it over ``batches``; returns (state, [metrics])."""
    tx, schedules = opt_lib.make_optimizer(loop.optimizer_config(config))
    state, sh = loop.shard_state(bundle, tx, mesh)
    bsh = mesh_lib.batch_sharding(mesh)
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh) for k, v in batches[0].items()}
    step = make_train_step(bundle.model.apply, tx, loop.objective_config(config), schedules, grad_accum)
    rng = jax.device_put(jax.random.key(0), mesh_lib.replicated(mesh))
    compiled = compile_train_step(step, state, sh, bsh, abstract, rng, log=None)
    out = []
    for b in batches:
        state, m = compiled(state, loop.global_batch(b, bsh), rng)
        out.append(jax.device_get(m))
    return state, out


@pytest.fixture(scope="module")
def batches():
    from remix_jax.training.synthetic import SyntheticLoader

    it = SyntheticLoader(8, 16, 256, seed=1)
    return [next(it) for _ in range(2)]


def test_base_frozen_and_no_optimizer_state_for_it(remix_bundle, batches, make_config):
    config = make_config("remix")
    mesh = mesh_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
    base_before = jax.tree.map(np.asarray, remix_bundle.base)
    state, metrics = _run(remix_bundle, config, batches, mesh)
    for a, b in zip(jax.tree.leaves(base_before), jax.tree.leaves(state.base), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    # Adam moments (2x) for every adapter and router parameter, nothing else of any size.
    n_train = sum(x.size for x in jax.tree.leaves(state.trainable))
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert n_opt == 2 * n_train
    base_shapes = {x.shape for x in jax.tree.leaves(state.base)}
    train_shapes = {x.shape for x in jax.tree.leaves(state.trainable)}
    assert not {x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim > 0} - train_shapes
    assert base_shapes - train_shapes  # the base has shapes the optimizer never sees
    moved = [float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves(remix_bundle.trainable), jax.tree.leaves(state.trainable), strict=True)]
    assert max(moved) > 0
    assert int(state.step) == 2
    assert metrics[0]["lr/adapter"] == 0.0  # warmup starts at zero
    assert metrics[1]["lr/router"] == pytest.approx(10 * metrics[1]["lr/adapter"])  # separate rates
    for m in metrics:
        assert np.isfinite(m["loss"])
        assert 1.0 <= m["routing/ess_softmax"] <= 4.0 and m["routing/ess_applied"] == pytest.approx(2.0)


def test_gradient_accumulation_matches_full_batch(lora_bundle, batches, make_config):
    """lora has no routing randomness: 2 micro-batches of 4 rows == one batch of 8 rows."""
    config = make_config("lora", num_samples=1)
    mesh = mesh_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
    s1, m1 = _run(lora_bundle, config, batches, mesh, grad_accum=1)
    s2, m2 = _run(lora_bundle, config, batches, mesh, grad_accum=2)
    for a, b in zip(jax.tree.leaves(s1.trainable), jax.tree.leaves(s2.trainable), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([m["loss"] for m in m1], [m["loss"] for m in m2], rtol=1e-5)


@pytest.mark.parametrize("axes", [{"data": 2, "fsdp": 4, "tensor": 1}, {"data": 2, "fsdp": 1, "tensor": 4}],
                         ids=["data_x_fsdp", "data_x_tensor"])
def test_sharded_equals_single_device(remix_bundle, batches, axes, make_config, perturb):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    config = make_config("remix")
    config.optimizer.warmup_steps = 0
    remix_bundle = dataclasses.replace(remix_bundle, trainable=perturb(remix_bundle.trainable))
    single = _single_device_reference(remix_bundle, batches, config)
    mesh = mesh_lib.make_mesh(axes)
    state, metrics = _run(remix_bundle, config, batches, mesh)
    sharded_dims = [s for s in jax.tree.leaves(jax.tree.map(lambda x: x.sharding.spec, state.base))
                    if any(a is not None for a in s)]
    assert sharded_dims  # the base really is split over the mesh
    losses = [m["loss"] for m in metrics]
    assert losses[0] != losses[1]  # the first update changed the model
    np.testing.assert_allclose(losses, [m["loss"] for m in single[1]], rtol=2e-5)
    np.testing.assert_allclose([m["surrogate"] for m in metrics], [m["surrogate"] for m in single[1]],
                               rtol=1e-3, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state.trainable), jax.tree.leaves(single[0].trainable), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-6)


_REF = {}


def _single_device_reference(bundle, batches, config):
    if "ref" not in _REF:
        mesh = mesh_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
        _REF["ref"] = _run(bundle, config, batches, mesh)
    return _REF["ref"]



def test_remix_router_moves_to_the_best_subset(remix_bundle, lora_bundle, make_config):
    """End to end with the real model and step. Two plain LoRAs are trained on the synthetic task first,
    one to lower the loss and one (negative learning rate) to raise it. Remix experts 0 and 1 each carry
    half of the good LoRA (selecting {0, 1} reproduces it), experts 2 and 3 half of the bad one. With
    adapters frozen and only the router learning by RLOO (M=8), within 100 steps top-2 routing moves from
    under half of the tokens on {0, 1} to most of them, and the loss falls. At the constant router rate the share
    on {0, 1} keeps moving around its plateau, and float rounding that differs between CPUs (XLA's code for
    the host's instruction set) changes the sampled routings, so where step 100 falls differs by host: 0.853 at
    100 steps and 0.847 at 120 on one; 0.86, 0.73, 0.74 and 0.87 at steps 50, 100, 150 and 200 on another. The
    bound, 0.65, is well above the untrained 0.44 and below that swing."""
    from remix_jax.routing.diagnostics import collect_routing_stats
    from remix_jax.training.synthetic import SyntheticLoader

    mesh = mesh_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
    it = SyntheticLoader(8, 16, 256, seed=5)
    lora_cfg = make_config("lora", num_samples=1)
    lora_cfg.optimizer.warmup_steps = 0
    lora_cfg.train.num_steps = 10**6  # constant learning rate
    trained = {}
    for name, lr in (("good", 3e-2), ("bad", -3e-2)):
        lora_cfg.optimizer.adapter_lr = lr
        st, m = _run(lora_bundle, lora_cfg, [next(it) for _ in range(40)], mesh)
        assert (m[-1]["loss"] - m[0]["loss"]) * np.sign(lr) < -0.2
        trained[name] = jax.device_get(st.trainable["adapter"])
    scale = lora_bundle.adapter_cfg.lora_scale() / (2 * remix_bundle.adapter_cfg.omega_value())

    def experts(path, _):
        good, bad = trained["good"], trained["bad"]
        for p in path:
            good, bad = good[p.key], bad[p.key]
        out = np.stack([good, good, bad, bad], axis=1).astype(np.float32)  # [L, n, ...]
        return out * scale if path[-1].key == "lora_b" else out

    adapter = jax.tree_util.tree_map_with_path(experts, remix_bundle.trainable["adapter"])
    bundle = dataclasses.replace(remix_bundle, trainable={**remix_bundle.trainable, "adapter": adapter})
    probe = next(it)

    @jax.jit  # one compile for both probes
    def routing_load(trainable):
        _, mut = bundle.model.apply({"params": bundle.base, **trainable}, jnp.asarray(probe["tokens"]),
                                    segment_ids=jnp.asarray(probe["segment_ids"]), deterministic=True,
                                    mutable=["routing_stats"])
        return collect_routing_stats(mut)["load"]  # [L, n]: share of tokens choosing each

    def share_on_best(trainable):
        load = np.asarray(routing_load(trainable))
        return float(np.mean(load[:, :2].sum(-1) / load.sum(-1)))

    config = make_config("remix", num_samples=8)
    config.optimizer.adapter_lr = 0.0
    config.optimizer.router_lr = 1e-2
    config.optimizer.warmup_steps = 0
    config.train.num_steps = 10**6  # constant learning rate over the test
    state, metrics = _run(bundle, config, [next(it) for _ in range(100)], mesh)
    before, after = share_on_best(bundle.trainable), share_on_best(state.trainable)
    # Tokens whose routing barely changes any response loss (early prompt tokens) keep some spread, so
    # the share plateaus near 0.85 rather than 1 (and swings below it: docstring).
    assert before < 0.6 and after > 0.65, (before, after)
    losses = [float(m["loss"]) for m in metrics]
    assert np.mean(losses[-50:]) < np.mean(losses[:10]) - 0.5


def test_unrolled_remat_step_sharded_equals_rolled_single_device(batches, make_config, perturb):
    """The fully unrolled layer loop under remat (models.unrolled: each layer's checkpoint slices the stacked,
    sharded weights inside) on a data x fsdp mesh: the same LoRA losses and adapters as the rolled loop on one
    device."""
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    runs = {}
    for unroll, axes in ((1, {"data": 1}), (1000, {"data": 2, "fsdp": 4, "tensor": 1})):
        config = make_config("lora", num_samples=1)
        config.optimizer.warmup_steps = 0
        config.model.remat = "save_proj_out"
        config.model.scan_unroll = unroll
        bundle = loop.build_model_bundle(config)
        bundle = dataclasses.replace(bundle, trainable=perturb(bundle.trainable))
        devices = jax.devices()[:1] if axes == {"data": 1} else None
        runs[unroll] = _run(bundle, config, batches, mesh_lib.make_mesh(axes, devices=devices))
    (ref_state, ref_metrics), (state, metrics) = runs[1], runs[1000]
    np.testing.assert_allclose([m["loss"] for m in metrics], [m["loss"] for m in ref_metrics], rtol=2e-5)
    for a, b in zip(jax.tree.leaves(state.trainable), jax.tree.leaves(ref_state.trainable), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-6)

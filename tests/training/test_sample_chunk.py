"""train.sample_chunk: the M routing samples processed c at a time give the unchunked gradients and metrics,
with the temporary memory of c samples instead of M."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from remix_jax.parallel import mesh as mesh_lib
from remix_jax.run_config import ConfigError, split_config, validate_config
from remix_jax.training import loop
from remix_jax.training.objective import ObjectiveConfig, objective_value_and_grad
from remix_jax.training.synthetic import SyntheticLoader
from remix_jax.training.train_step import compile_train_step, make_train_step

M = 4


def packed_batch(rows: int = 8, seq_len: int = 24) -> dict:
    """Two synthetic sequences per row (segment ids 1 and 2, positions restarting); the last row holds one
    sequence and padding."""
    src = next(SyntheticLoader(2 * rows, seq_len // 2, 256, seed=5))
    out = {k: np.zeros((rows, seq_len), v.dtype) for k, v in src.items()}
    for i in range(rows):
        col = 0
        for seg, j in enumerate((2 * i, 2 * i + 1) if i < rows - 1 else (2 * i,), start=1):
            n = int(np.sum(src["segment_ids"][j] > 0))
            out["tokens"][i, col:col + n] = src["tokens"][j, :n]
            out["loss_mask"][i, col:col + n] = src["loss_mask"][j, :n]
            out["segment_ids"][i, col:col + n] = seg
            out["positions"][i, col:col + n] = np.arange(n)
            col += n
    assert np.max(out["segment_ids"]) == 2 and np.sum(out["segment_ids"] == 0) > 0
    return jax.tree.map(jnp.asarray, out)


ESTIMATORS = {"rloo": ("rloo", "sequence"), "none": ("none", "sequence"), "causal": ("rloo", "causal")}


@pytest.fixture(scope="module")
def setup(remix_bundle, perturb):
    """Value and gradients of one estimator (rloo, none: the two baselines with sequence credit; causal: rloo
    with causal credit) at one sample_chunk: one jitted function per (estimator, sample_chunk), both static,
    cached."""
    batch = packed_batch()
    tr = perturb(remix_bundle.trainable, seed=2)
    key = jax.random.key(13)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def one(name, chunk):
        baseline, credit = ESTIMATORS[name]
        return objective_value_and_grad(
            remix_bundle.model.apply, tr, remix_bundle.base, batch, key,
            ObjectiveConfig(num_samples=M, baseline=baseline, sampling_router=True, sample_chunk=chunk,
                            credit=credit))

    return functools.cache(lambda name, chunk: jax.device_get(one(name, chunk)))


def _assert_tree_close(got, want, rtol, atol_frac, atol=0.0):
    """Leafwise allclose; a leaf's atol is atol + atol_frac * its largest |entry|."""
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True):
        w = np.asarray(w)
        atol = atol + atol_frac * max(float(np.max(np.abs(w))), 1e-12)
        np.testing.assert_allclose(np.asarray(g), w, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


# The chunked path is one code path for every c and every estimator: c changes only the shapes of its lax.map and
# lax.scan (M / c chunks of c samples), the estimator only the advantages (computed from all M samples before the
# chunked backward pass) and, for causal credit, which log Q they multiply. So the chunk sizes' edges (c = 1: M
# chunks of one sample; c = M: one chunk of all) and the middle are checked on rloo, and each estimator at c = 2
# (several chunks of several samples): every c and every estimator against its own unchunked reference.
@pytest.mark.parametrize("baseline, chunk", [("rloo", 1), ("rloo", 2), ("rloo", 4), ("none", 2), ("causal", 2)])
def test_chunked_equals_unchunked(setup, baseline, chunk):
    (total0, metrics0), grads0 = setup(baseline, 0)
    (total, metrics), grads = setup(baseline, chunk)
    # Not vacuous: adapters and routers get real gradients, the samples differ, rows are packed.
    for part in ("adapter", "router"):
        assert max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads0[part])) > 1e-4
    assert metrics0["num_sequences"] == 15 and metrics0["routing/distinct_subsets"] > 1
    assert sorted(metrics) == sorted(metrics0)
    np.testing.assert_allclose(total, total0, rtol=1e-6, atol=1e-7)
    # atol for the surrogate: its value cancels terms adv * log Q with |log Q| ~ 40 (rounding ~ 5e-7).
    _assert_tree_close(metrics, metrics0, rtol=1e-5, atol_frac=1e-6, atol=2e-6)
    _assert_tree_close(grads, grads0, rtol=1e-4, atol_frac=1e-5)


def test_rloo_and_none_router_gradients_differ(setup):
    """The two baselines (and causal credit) really are different estimators here, so the parity above checks
    each."""
    def router_diff(a, b):
        return max(float(np.max(np.abs(x - y))) for x, y in
                   zip(jax.tree.leaves(setup(a, 0)[1]["router"]), jax.tree.leaves(setup(b, 0)[1]["router"]),
                       strict=True))

    assert router_diff("rloo", "none") > 1e-5
    assert router_diff("rloo", "causal") > 1e-5


@pytest.fixture(scope="module")
def compiled_steps(remix_bundle, make_config):
    """The real train step (M=8, 2 accumulation micro-batches) compiled with sample_chunk 0 and 2. Plain SGD
    with rate 1, so the update is minus the gradient (Adam's first step would amplify rounding noise)."""
    config = make_config("remix", num_samples=8)
    batch = packed_batch()
    tx, schedules = optax.sgd(1.0), None
    mesh = mesh_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
    state, sh = loop.shard_state(remix_bundle, tx, mesh)
    bsh = mesh_lib.batch_sharding(mesh)
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh) for k, v in batch.items()}
    rng = jax.device_put(jax.random.key(0), mesh_lib.replicated(mesh))
    out = {}
    for chunk in (0, 2):
        obj_cfg = dataclasses.replace(loop.objective_config(config), sample_chunk=chunk)
        step = make_train_step(remix_bundle.model.apply, tx, obj_cfg, schedules, grad_accum_steps=2)
        out[chunk] = compile_train_step(step, state, sh, bsh, abstract, rng, log=None)
    return out, (remix_bundle, tx, mesh, batch, bsh, rng)


def test_train_step_temp_memory_scales_with_chunk(compiled_steps):
    steps, _ = compiled_steps
    temp = {c: steps[c].memory_analysis().temp_size_in_bytes for c in steps}
    print(f"train step temp bytes, M=8, batch 8 x 24 in 2 micro-batches: c=0 {temp[0]}, c=2 {temp[2]}")
    assert temp[2] < 0.5 * temp[0]


def test_train_step_chunked_matches_unchunked(compiled_steps, perturb):
    steps, (bundle, tx, mesh, batch, bsh, rng) = compiled_steps
    start = perturb(bundle.trainable, seed=4)
    results = {}
    for chunk, compiled in steps.items():
        state, _ = loop.shard_state(dataclasses.replace(bundle, trainable=start), tx, mesh)
        state, metrics = compiled(state, loop.global_batch(jax.device_get(batch), bsh), rng)
        results[chunk] = jax.device_get((jax.tree.map(jnp.subtract, start, state.trainable), metrics))
    (g0, m0), (g2, m2) = results[0], results[2]  # the accumulated gradients, and the step's metrics
    assert sorted(m0) == sorted(m2)
    assert m0["grad_norm"] > 1e-3 and m0["num_sequences"] == 15
    _assert_tree_close(m2, m0, rtol=1e-4, atol_frac=1e-5, atol=2e-6)
    _assert_tree_close(g2, g0, rtol=1e-3, atol_frac=1e-4)


@pytest.mark.parametrize("train, method, match", [
    ({"num_samples": 4, "sample_chunk": 3}, "remix", "train.sample_chunk=3 does not divide train.num_samples=4"),
    ({"num_samples": 4, "sample_chunk": -1}, "remix", "train.sample_chunk=-1: must be >= 0"),
    ({"num_samples": 1, "sample_chunk": 1}, "lora", "train.sample_chunk=1: only remix"),
])
def test_bad_sample_chunk_is_rejected(make_config, train, method, match):
    train_cfg, _ = split_config(make_config(method, **train))
    with pytest.raises(ConfigError, match=match):
        validate_config(train_cfg)


@pytest.mark.parametrize("chunk", [3, -1])
def test_objective_config_rejects_bad_sample_chunk(chunk):
    with pytest.raises(ValueError, match=f"sample_chunk={chunk}"):
        ObjectiveConfig(num_samples=4, sample_chunk=chunk)


def test_good_sample_chunk_validates(make_config):
    for chunk in (0, 1, 2, 4):
        validate_config(split_config(make_config("remix", num_samples=4, sample_chunk=chunk))[0])


def test_chunked_aux_loss_term_matches(make_config, perturb):
    """A learned router with a load-balancing loss (mixlora, M=1): the aux term of the chunked objective."""
    bundle = loop.build_model_bundle(make_config("mixlora", num_samples=1))
    batch, tr = packed_batch(), perturb(bundle.trainable, seed=3)
    fn = jax.jit(lambda c: objective_value_and_grad(bundle.model.apply, tr, bundle.base, batch, jax.random.key(1),
                                                ObjectiveConfig(num_samples=1, sample_chunk=c)), static_argnums=0)
    (total0, metrics0), grads0 = jax.device_get(fn(0))
    (total, metrics), grads = jax.device_get(fn(1))
    assert metrics0["aux_loss"] > 1e-3 and max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads0)) > 1e-3
    np.testing.assert_allclose(total, total0, rtol=1e-6)
    _assert_tree_close(metrics, metrics0, rtol=1e-6, atol_frac=1e-6)
    _assert_tree_close(grads, grads0, rtol=1e-5, atol_frac=1e-6)


def test_config_key_reaches_the_objective():
    from remix_jax.run_config import default_config
    from remix_jax.training.loop import objective_config

    c = default_config()
    c.adapter.method, c.train.num_samples, c.train.sample_chunk = "remix", 8, 2
    assert objective_config(c).sample_chunk == 2 and objective_config(c).num_samples == 8
    c.train.sample_chunk = 0
    assert objective_config(c).sample_chunk == 0

"""Chunked cross-entropy: equal to the full-logits loss (values and gradients), and much smaller in memory."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.models.llama import lm_logits, positions_from_segments
from remix_jax.training.losses import (
    chunked_token_cross_entropy,
    sequence_losses_from_ce,
    token_cross_entropy,
)
from remix_jax.training.objective import ObjectiveConfig, adapter_objective, loss_chunk_len

B, T, D, V, M = 3, 13, 16, 50, 3


def _packed_padded_segments(b: int, t: int) -> np.ndarray:
    """Row 0: one sequence then padding; row 1: three packed sequences then padding; others: full rows."""
    seg = np.ones((b, t), np.int32)
    seg[0, t - 4:] = 0
    seg[1, :4], seg[1, 4:9], seg[1, 9:t - 2], seg[1, t - 2:] = 1, 2, 3, 0
    return seg


@pytest.fixture(scope="module")
def loss_inputs():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(M, B, T, D)).astype(np.float32)
    head = (rng.normal(size=(D, V)) / np.sqrt(D)).astype(np.float32)
    tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
    seg = _packed_padded_segments(B, T)
    mask = (rng.random((B, T)) < 0.7).astype(np.float32)
    slot_w = rng.normal(size=(M, B, T)).astype(np.float32)  # weights of the per-sequence losses
    return tuple(map(jnp.asarray, (hidden, head, tokens, seg, mask, slot_w)))


@pytest.fixture(scope="module")
def loss_and_grad():
    """jit(value_and_grad) of sum_m <w_m, sequence losses of sample m> w.r.t. hidden [M, B, T, D]."""

    def objective(hidden, head, tokens, seg, mask, slot_w, chunk_len, frozen_head=False):
        def one(h):
            if chunk_len:
                ce = chunked_token_cross_entropy(h, head, tokens, chunk_len, frozen_head=frozen_head)
            else:
                ce = token_cross_entropy(lm_logits(h, head), tokens)
            return ce, sequence_losses_from_ce(ce, mask, seg)[0]

        ce, losses = jax.vmap(one)(hidden)  # the samples axis, as in the objective
        return jnp.sum(losses * slot_w), ce

    return jax.jit(jax.value_and_grad(objective, has_aux=True), static_argnums=(6, 7))


@pytest.mark.parametrize("frozen_head", [False, True])
@pytest.mark.parametrize("chunk_len", [1, 4, 5, T, 64])
def test_chunked_equals_full_logits(loss_inputs, loss_and_grad, chunk_len, frozen_head):
    """chunk_len 1 and 5 do not divide T=13 (a remainder chunk), 13 is one chunk, 64 is clipped to T.
    frozen_head: d ce / d hidden formed in the forward pass (one head product fewer), same values."""
    (ref, ref_ce), ref_g = loss_and_grad(*loss_inputs, 0)
    (val, ce), g = loss_and_grad(*loss_inputs, chunk_len, frozen_head)
    np.testing.assert_allclose(np.asarray(ce), np.asarray(ref_ce), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(ce)[..., 0], 0)
    np.testing.assert_allclose(float(val), float(ref), rtol=1e-6)
    assert float(jnp.max(jnp.abs(ref_g))) > 1e-3
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref_g), rtol=1e-5, atol=1e-7)
    # positions whose prediction is never scored get no gradient: the last position, and padding rows
    np.testing.assert_array_equal(np.asarray(g)[:, :, T - 1], 0)
    np.testing.assert_array_equal(np.asarray(g)[:, 0, T - 5:], 0)


def test_frozen_head_gets_no_gradient(loss_inputs):
    hidden, head, tokens = loss_inputs[:3]
    g = jax.grad(lambda hd: jnp.sum(chunked_token_cross_entropy(hidden[0], hd, tokens, 4, frozen_head=True)))(head)
    np.testing.assert_array_equal(np.asarray(g), 0)
    # bfloat16 hidden states get a bfloat16 cotangent
    gh = jax.grad(lambda h: jnp.sum(chunked_token_cross_entropy(h, head, tokens, 4, frozen_head=True)))(
        hidden[0].astype(jnp.bfloat16))
    assert gh.dtype == jnp.bfloat16 and float(jnp.max(jnp.abs(gh.astype(jnp.float32)))) > 0


def test_head_gradient_of_chunked_loss(loss_inputs):
    """The custom VJP also defines the head's cotangent (the objective never uses it: the head is frozen)."""
    hidden, head, tokens, _, mask, _ = loss_inputs

    def f(hd, chunk_len):
        ce = (chunked_token_cross_entropy(hidden[0], hd, tokens, chunk_len) if chunk_len
              else token_cross_entropy(lm_logits(hidden[0], hd), tokens))
        return jnp.sum(ce * mask)

    ref = jax.grad(f)(head, 0)
    assert float(jnp.max(jnp.abs(ref))) > 1e-3
    np.testing.assert_allclose(np.asarray(jax.grad(f)(head, 5)), np.asarray(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("frozen_head", [False, True])
def test_vocab_major_head(loss_inputs, loss_and_grad, frozen_head):
    """The head as a tied embedding is stored, [V, d] (the decoder hands it over untransposed): the same values
    and hidden-state gradients as its [d, V] transpose, and (unfrozen) the head's gradient in its own layout."""
    hidden, head, tokens, seg, mask, slot_w = loss_inputs
    (ref, ref_ce), ref_g = loss_and_grad(hidden, head, tokens, seg, mask, slot_w, 5, frozen_head)
    (val, ce), g = loss_and_grad(hidden, head.T, tokens, seg, mask, slot_w, 5, frozen_head)
    np.testing.assert_allclose(np.asarray(ce), np.asarray(ref_ce), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(val), float(ref), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref_g), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(lm_logits(hidden[0], head.T)), np.asarray(lm_logits(hidden[0], head)),
                               rtol=1e-6, atol=1e-6)
    if not frozen_head:
        def f(hd):
            return jnp.sum(chunked_token_cross_entropy(hidden[0], hd, tokens, 5) * mask)
        np.testing.assert_allclose(np.asarray(jax.grad(f)(head.T)), np.asarray(jax.grad(f)(head)).T,
                                   rtol=1e-5, atol=1e-6)


def test_head_without_a_hidden_size_axis_is_rejected(loss_inputs):
    from remix_jax.models.llama import vocab_major

    hidden, head = loss_inputs[:2]
    with pytest.raises(ValueError, match=r"output matrix \(16, 49\) has no axis of the hidden size 17"):
        lm_logits(jnp.zeros((2, 17)), head[:, :49])
    assert vocab_major(head.T, D) and not vocab_major(head, D) and not vocab_major(jnp.zeros((D, D)), D)


def test_chunked_matches_numpy_reference(loss_inputs):
    hidden, head, tokens = (np.asarray(x) for x in loss_inputs[:3])
    ce = np.asarray(chunked_token_cross_entropy(jnp.asarray(hidden[1]), jnp.asarray(head),
                                                jnp.asarray(tokens), 4))
    logits = hidden[1].astype(np.float64) @ head.astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expect = np.zeros((B, T))
    for b in range(B):
        for t in range(1, T):
            expect[b, t] = -logp[b, t - 1, tokens[b, t]]
    np.testing.assert_allclose(ce, expect, rtol=1e-5, atol=1e-6)


def test_bad_chunk_settings_are_rejected(loss_inputs):
    hidden, head, tokens = loss_inputs[:3]
    with pytest.raises(ValueError, match="chunk_len=0"):
        chunked_token_cross_entropy(hidden[0], head, tokens, 0)
    with pytest.raises(ValueError, match="loss_chunk_tokens=-1"):
        ObjectiveConfig(loss_chunk_tokens=-1)
    with pytest.raises(ValueError, match="loss_skip_chunks=-1"):
        ObjectiveConfig(loss_skip_chunks=-1)
    cfg = ObjectiveConfig(num_samples=4, loss_chunk_tokens=2048, loss_skip_chunks=0)
    assert loss_chunk_len(cfg, 4, 1024) == 128  # 2048 tokens over 4 samples x 4 rows
    assert loss_chunk_len(cfg, 1024, 16) == 1
    assert loss_chunk_len(cfg, 1, 64) == 64
    assert loss_chunk_len(dataclasses.replace(cfg, loss_chunk_tokens=0), 4, 1024) == 1024
    skip = dataclasses.replace(cfg, loss_skip_chunks=8)  # at most 8 chunks a row: at most ceil(T / 8) positions
    assert loss_chunk_len(skip, 1, 64) == 8 and loss_chunk_len(skip, 1, 60) == 8
    assert loss_chunk_len(skip, 4, 1024) == 128
    assert loss_chunk_len(dataclasses.replace(skip, loss_chunk_tokens=0), 4, 1024) == 1024


# --- the objective: adapters and routers get the same gradients, chunked or not -------------------


def _packed_batch(batch: dict) -> dict:
    """Pairs of rows of a right-padded batch packed into one row each (segments 1 and 2, then padding)."""
    tok, mask, seg = (np.asarray(batch[k]) for k in ("tokens", "loss_mask", "segment_ids"))
    b, t = tok.shape
    out = {k: np.zeros((b // 2, 2 * t), v.dtype) for k, v in (("tokens", tok), ("loss_mask", mask),
                                                               ("segment_ids", seg))}
    for i in range(b // 2):
        at = 0
        for j, s in ((2 * i, 1), (2 * i + 1, 2)):
            n = int(np.sum(seg[j] > 0))
            out["tokens"][i, at:at + n] = tok[j, :n]
            out["loss_mask"][i, at:at + n] = mask[j, :n]
            out["segment_ids"][i, at:at + n] = s
            at += n
    out["positions"] = np.asarray(positions_from_segments(jnp.asarray(out["segment_ids"])))
    return jax.tree.map(jnp.asarray, out)


@pytest.fixture(scope="module")
def objective_grad(remix_bundle):
    bundle = remix_bundle
    return jax.jit(jax.value_and_grad(
        lambda tr, b, k, c: adapter_objective(bundle.model.apply, tr, bundle.base, b, k, c), has_aux=True),
        static_argnums=3)


def test_objective_gradients_equal_unchunked(remix_bundle, batch, perturb, objective_grad):
    """Packed rows (two sequences each, then padding), M=3 samples: the chunked objective (chunks of 3
    positions, which do not divide T=32) gives the unchunked totals, metrics and adapter/router gradients."""
    b = _packed_batch(batch)
    rows, t = b["tokens"].shape
    assert int(jnp.sum(b["segment_ids"] == 0)) > 0 and int(jnp.max(b["segment_ids"])) == 2
    tr = perturb(remix_bundle.trainable)
    full = ObjectiveConfig(num_samples=3, baseline="rloo", sampling_router=True, loss_chunk_tokens=0)
    cfg = dataclasses.replace(full, loss_chunk_tokens=3 * 3 * rows)
    assert loss_chunk_len(cfg, rows, t) == 3 and t % 3
    key = jax.random.key(3)
    (ref_total, ref_m), ref_g = objective_grad(tr, b, key, full)
    (total, m), g = objective_grad(tr, b, key, cfg)
    np.testing.assert_allclose(float(total), float(ref_total), rtol=1e-5)  # float32 sums in another order
    for name in ("loss", "surrogate", "routing/log_q", "num_sequences"):
        # the surrogate is a small difference of products of larger numbers: absolute tolerance
        np.testing.assert_allclose(float(m[name]), float(ref_m[name]), rtol=1e-5, atol=5e-5)
    for coll in ("adapter", "router"):
        leaves, ref_leaves = jax.tree.leaves(g[coll]), jax.tree.leaves(ref_g[coll])
        assert max(float(jnp.max(jnp.abs(x))) for x in ref_leaves) > 1e-5
        for x, y in zip(leaves, ref_leaves, strict=True):  # float32 rounding relative to the leaf's scale
            scale = float(jnp.max(jnp.abs(y)))
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5 * scale)


# --- memory: the compiled objective gradient never holds the full logits --------------------------


def test_chunked_objective_memory_is_far_below_full_logits():
    """value_and_grad of the objective for M=4 samples of a tiny decoder with a 32768-token vocabulary.

    One float32 logits tensor [M, B, T, V] is 256 MiB; the unchunked objective keeps several of them.
    """
    from remix_jax.adapters import AdapterConfig, build_model
    from remix_jax.models.model_config import named_config

    m, b, t, v = 4, 2, 256, 32768
    model = build_model(named_config("tiny", vocab_size=v),
                        AdapterConfig(method="remix", num_experts=4, top_k=2, rank=4, alpha=8.0))
    tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)
    rngs = {"params": jax.random.key(0), "routing": jax.random.key(0)}
    variables = jax.eval_shape(lambda: nn.meta.unbox(model.init(rngs, jnp.zeros((1, 8), jnp.int32))))
    trainable = {k: variables[k] for k in ("adapter", "router")}
    batch = {"tokens": tokens, "loss_mask": jax.ShapeDtypeStruct((b, t), jnp.float32),
             "segment_ids": tokens, "positions": tokens}
    key = jax.eval_shape(lambda: jax.random.key(0))

    def temp_bytes(chunk_tokens):
        cfg = ObjectiveConfig(num_samples=m, sampling_router=True, loss_chunk_tokens=chunk_tokens)
        fn = jax.value_and_grad(lambda tr, base, bt, k: adapter_objective(model.apply, tr, base, bt, k, cfg),
                                has_aux=True)
        compiled = jax.jit(fn).lower(trainable, variables["params"], batch, key).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    logits_bytes = m * b * t * v * 4
    full, chunked = temp_bytes(0), temp_bytes(128)  # 128 tokens: chunks of 16 positions x 2 rows x 4 samples
    print(f"temp bytes: unchunked {full / 2**20:.1f} MiB, chunked {chunked / 2**20:.1f} MiB, "
          f"one f32 logits tensor {logits_bytes / 2**20:.1f} MiB")
    assert full >= 2 * logits_bytes  # the reference really materialises the logits (the check can fail)
    assert chunked < logits_bytes / 2
    assert chunked * 5 < full


@pytest.mark.parametrize("frozen_head", [False, True])
@pytest.mark.parametrize("chunk_len", [1, 2, 5, T])
def test_needed_positions_only(loss_inputs, chunk_len, frozen_head):
    """With ``needed`` (the loss mask) the head runs only on chunks holding a needed position, after each row's
    needed positions are moved to the front: the sequence losses and their gradients equal the full-logits ones,
    ce at the needed positions too, and positions in a skipped chunk read 0 (there the full ce is not 0)."""
    hidden, head, tokens, seg, _, slot_w = loss_inputs
    mask = np.zeros((B, T), np.float32)
    mask[0, [3, 4, 8]] = 1  # row 0: 3 targets; row 1: 5, across its packed sequences; row 2: none
    mask[1, [2, 3, 6, 7, 10]] = 1
    mask = jnp.asarray(mask)

    def objective(hidden, chunk_len, needed):
        def one(h):
            if chunk_len:
                ce = chunked_token_cross_entropy(h, head, tokens, chunk_len, frozen_head=frozen_head,
                                                 needed=mask > 0 if needed else None)
            else:
                ce = token_cross_entropy(lm_logits(h, head), tokens)
            return ce, sequence_losses_from_ce(ce, mask, seg)[0]

        ce, losses = jax.vmap(one)(hidden)
        return jnp.sum(losses * slot_w), ce

    grad = jax.jit(jax.value_and_grad(objective, has_aux=True), static_argnums=(1, 2))
    (ref, ref_ce), ref_g = grad(hidden, 0, False)
    (val, ce), g = grad(hidden, chunk_len, True)
    ce, ref_ce = np.asarray(ce), np.asarray(ref_ce)
    m = np.broadcast_to(np.asarray(mask) > 0, ce.shape)
    np.testing.assert_allclose(ce[m], ref_ce[m], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(val), float(ref), rtol=1e-6)
    assert float(jnp.max(jnp.abs(ref_g))) > 1e-3
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref_g), rtol=1e-5, atol=1e-7)
    # sorted order: row 2 has no needed position, so with chunks shorter than the fullest row's 5 needed
    # positions, its positions past the first chunks are skipped: 0 where the full ce is not
    first_skipped = -(-5 // chunk_len) * chunk_len
    if first_skipped < T:
        skipped = ce[:, 2, 1 + first_skipped:]  # ce[:, t] is predicted at position t - 1
        assert skipped.size and np.all(skipped == 0) and np.all(ref_ce[:, 2, 1 + first_skipped:] != 0)

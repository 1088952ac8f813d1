"""Shared-context log-likelihood scoring (evaluation/scoring.py): the options of a question run against one prefill of
their context, and give the log-likelihoods of scoring each option as a whole sequence (share_context=False) and of a
plain unmasked forward pass of each context + option, on a tiny random decoder with LoRA and ReMix adapters;
questions of different context lengths and numbers of options of different lengths, batch sizes that cut questions
and leave a partial last batch. Routing statistics count each context token once."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.evaluation import evaluator, scoring
from remix_jax.models.llama import init_params
from remix_jax.models.model_config import named_config
from tests.tiny_run import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@functools.cache
def adapted(method: str):
    """(model, variables, adapter config) of the tiny decoder with ``method``'s adapters. Made once per method and
    process (test_packed_scoring.py uses it too): jax arrays are immutable and no test changes the dicts. The base
    parameters come from one jitted init (op by op it took ~5 s); the tests compare scoring paths and references on
    the same variables, so any random values do."""
    cfg = named_config("tiny", vocab_size=272, max_position_embeddings=4096)
    acfg = AdapterConfig(method=method, num_experts=4, top_k=2, rank=4, alpha=8.0)
    model = build_model(cfg, acfg)
    base = build_model(cfg, AdapterConfig(method="lora", rank=4))
    params = init_params(base, jax.random.key(0))["params"]
    extra = init_adapter_variables(model, jax.random.key(1))
    extra["adapter"] = jax.tree.map(lambda x: x + 0.05, extra["adapter"])  # nonzero B: the adapters change outputs
    if extra.get("router"):
        extra["router"] = jax.tree.map(lambda x: x * 30.0, extra["router"])
    return model, {"params": params, **extra}, acfg


def questions():
    """(contexts, continuations): 7 questions of 2..6 options (contexts of 5..45 bytes, options of 1..14), a row
    alone, then two questions with the same context (one run of 5 rows)."""
    rng = np.random.default_rng(0)
    ctxs, conts = [], []
    for q, n_opt in enumerate([4, 2, 6, 3, 5, 4, 2]):
        c = f"Q{q}: " + "".join(rng.choice(list("abcdefgh "), int(rng.integers(1, 42)))) + "\nA:"
        for _ in range(n_opt):
            ctxs.append(c)
            conts.append(" " + "".join(rng.choice(list("xyzw"), int(rng.integers(0, 14)))))
    ctxs.append("alone:"), conts.append(" yes")
    ctxs += ["same:"] * 5
    conts += [" a", " bb", " a", " ccc", " dddd"]
    return ctxs, conts


def plain_logliks(model, variables, tok, ctxs, conts) -> np.ndarray:
    """sum_j log p(cont_j | ctx, cont_<j) from plain forward passes (float64 log-softmax): every row ctx + cont in
    one batch, no mask, each row followed by random filler tokens up to the longest row. A causal decoder's logits
    at a position do not depend on later tokens, so the filler changes none of the logits read here; it is random
    rather than padding so that a decoder that saw later tokens would disagree with the scorer (which masks its
    padding). One program instead of one per row length (25 of them: ~14 s of compiling)."""
    rows = [(tok.encode(c, add_special_tokens=False), tok.encode(x, add_special_tokens=False))
            for c, x in zip(ctxs, conts, strict=True)]
    width = max(len(ctx) + len(cont) for ctx, cont in rows)
    filler = np.random.default_rng(7).integers(0, 256, (len(rows), width))
    batch = np.array([ctx + cont + filler[i, len(ctx) + len(cont):].tolist() for i, (ctx, cont) in enumerate(rows)])
    logits = jax.jit(lambda v, tokens: model.apply(v, tokens, rngs={"routing": jax.random.key(0)})[0])(
        variables, jnp.asarray(batch, jnp.int32))
    out = np.zeros(len(rows))
    for i, (ctx, cont) in enumerate(rows):
        row = np.asarray(logits[i], np.float64)
        m = row.max(axis=-1, keepdims=True)
        logp = row - m - np.log(np.exp(row - m).sum(axis=-1, keepdims=True))
        out[i] = sum(logp[len(ctx) - 1 + j, t] for j, t in enumerate(cont))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method,batch_size", [("lora", 3), ("remix", 4)])
def test_shared_context_equals_whole_sequences(tok, method, batch_size):
    model, variables, acfg = adapted(method)
    ctxs, conts = questions()
    runs = {}
    for share in (True, False):
        runner = evaluator.ModelRunner(model, variables, tok, batch_size=batch_size, share_context=share)
        runs[share] = runner.loglik(ctxs, conts), runner.take_routing()
    (shared, n_shared), stats_shared = runs[True]
    (whole, n_whole), stats_whole = runs[False]
    assert list(n_shared) == list(n_whole) == [len(tok.encode(x, add_special_tokens=False)) for x in conts]
    np.testing.assert_allclose(shared, whole, rtol=1e-5, atol=1e-5)
    ref = plain_logliks(model, variables, tok, ctxs, conts)
    np.testing.assert_allclose(shared, ref, rtol=1e-5, atol=1e-4)
    # Routing statistics: whole sequences count every context once per option, shared contexts once per run of
    # equal contexts, or per batch_size rows of it.
    ctx_tokens = [len(tok.encode(c, add_special_tokens=False)) for c in ctxs]
    cont_tokens = int(n_whole.sum())
    runs_of = [(c, len(list(g))) for c, g in itertools.groupby(ctxs)]
    prefilled = sum(len(tok.encode(c, add_special_tokens=False)) * -(-n // batch_size) for c, n in runs_of)
    if method == "remix":
        assert stats_whole["num_tokens"] == sum(ctx_tokens) + cont_tokens
        assert stats_shared["num_tokens"] == prefilled + cont_tokens
        for stats in (stats_shared, stats_whole):
            np.testing.assert_allclose(np.sum(stats["load"], axis=-1), acfg.top_k, atol=1e-5)
            np.testing.assert_allclose(stats["ess_applied"], acfg.top_k, atol=1e-4)
    else:
        assert stats_shared is None and stats_whole is None


def test_shared_batches_cover_every_row_once_within_batch_size(tok):
    ctxs, conts = questions()
    rows = [(tok.encode(c, add_special_tokens=False), tok.encode(x, add_special_tokens=False))
            for c, x in zip(ctxs, conts, strict=True)]
    groups, singles = scoring.context_groups(rows, 4)
    # Runs of 4, 2, 6, 3, 5, 4, 2 options, the row alone (index 26), the run of 5; cut at 4 rows.
    starts = np.cumsum([0, 4, 2, 6, 3, 5, 4, 2])
    expect = []
    for s, e in zip(starts[:-1], starts[1:], strict=True):
        expect += [list(range(a, min(a + 4, e))) for a in range(s, e, 4)]
    expect += [[27, 28, 29, 30], [31]]
    assert groups == expect and singles == [26]
    batches = list(scoring.shared_batches(rows, groups, 4, pad=0))
    assert sorted(i for b in batches for i in b.rows) == sorted(i for g in groups for i in g)
    for b in batches:
        assert len(b.rows) <= 4 and b.cont_tokens.shape[0] <= 4 and b.ctx_tokens.shape[0] <= 4
        for j, i in enumerate(b.rows):  # each continuation sits under its own context, right-padded
            ctx, cont = rows[i]
            k = b.owner[j]
            assert b.ctx_tokens[k, b.ctx_tokens.shape[1] - len(ctx):].tolist() == ctx
            assert b.ctx_seg[k].sum() == len(ctx)
            assert b.cont_tokens[j, : len(cont)].tolist() == cont and b.cont_seg[j].sum() == len(cont)
        for shape, minimum in ((b.ctx_tokens.shape[1], 16), (b.cont_tokens.shape[1], 8)):
            assert shape >= minimum and shape & (shape - 1) == 0


def test_shared_batches_keep_short_options_apart_from_long_ones():
    """Questions of one context bucket, two per batch: the two with short options share a batch (8 columns) and the
    two with a long option the other (16), whatever their context lengths; a longer context bucket comes after."""
    def question(ctx_len, opt_lens):
        return [([1] * ctx_len, [2] * n) for n in opt_lens]

    rows = (question(10, [12, 1]) + question(11, [2, 2]) + question(12, [3, 12]) + question(13, [1, 2])
            + question(40, [1, 1]))
    groups, singles = scoring.context_groups(rows, 4)
    assert groups == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]] and singles == []
    batches = list(scoring.shared_batches(rows, groups, 4, pad=0))
    assert [b.rows for b in batches] == [[2, 3, 6, 7], [0, 1, 4, 5], [8, 9]]
    assert [b.cont_tokens.shape[1] for b in batches] == [8, 16, 8]
    assert [b.ctx_tokens.shape[1] for b in batches] == [16, 16, 64]


@pytest.mark.parametrize("method", ["lora", "remix"])
def test_chunked_context_prefill_equals_whole_context(tok, method):
    """Contexts prefilled 16 columns at a time give the log-likelihoods of one prefill of the whole context (32 or 64
    columns; in the batch of contexts of 39 and 42 tokens in 64 columns the first chunk is all padding), and the same
    routing statistics (token-weighted over the chunks; distinct_subsets counts per chunk, so it is left out)."""
    model, variables, _ = adapted(method)
    ctxs, conts = questions()
    rows = [(tok.encode(c, add_special_tokens=False), tok.encode(x, add_special_tokens=False))
            for c, x in zip(ctxs, conts, strict=True)]
    groups, _ = scoring.context_groups(rows, 8)
    batches = [b for b in scoring.shared_batches(rows, groups, 8, pad=0) if b.ctx_tokens.shape[1] > 16]
    assert [b.ctx_tokens.shape[1] for b in batches] == [32, 32, 64, 64]
    assert any((b.ctx_seg[:, :16] == 0).all() for b in batches)
    with_stats = method == "remix"
    for b in batches:
        args = [jnp.asarray(a) for a in (b.ctx_tokens, b.ctx_seg, b.cont_tokens, b.cont_seg, b.owner)]
        runs = {c: scoring.score_shared_batch(model, variables, *args, jax.random.key(0), with_stats=with_stats,
                                              prefill_chunk=c) for c in (0, 16)}
        (ll0, ctx0, cont0), (ll, ctx_stats, cont_stats) = runs[0], runs[16]
        assert np.isfinite(np.asarray(ll0)).all() and bool(ctx0) == with_stats
        np.testing.assert_allclose(ll, ll0, rtol=1e-5, atol=1e-4)
        assert set(ctx_stats) == set(ctx0) and set(cont_stats) == set(cont0)
        for k in ctx0:
            if k != "distinct_subsets":
                np.testing.assert_allclose(ctx_stats[k], ctx0[k], rtol=1e-5, atol=1e-5, err_msg=k)
        for k in cont0:
            np.testing.assert_allclose(cont_stats[k], cont0[k], rtol=1e-5, atol=1e-5, err_msg=k)

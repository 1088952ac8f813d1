"""Causal credit (train.credit="causal", docs/method.md §3.1): the suffix losses against their definition, what
they may and may not depend on, the objective's router gradient against per-sample pieces, and the expectation of
both estimators against the exact gradient of the expected loss by enumerating every routing outcome of a tiny
model (a deliberately biased credit must fail the same check)."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.models import llama
from remix_jax.models.model_config import ModelConfig
from remix_jax.routing import routers
from remix_jax.routing.diagnostics import collect_routing_stats
from remix_jax.training.losses import sequence_losses_from_ce
from remix_jax.training.objective import (
    ObjectiveConfig,
    adapter_objective,
    per_sequence_sums,
    router_surrogate,
    suffix_losses_from_ce,
    token_cross_entropy,
)
from remix_jax.training.synthetic import SyntheticLoader


def reference_suffix(ce, mask, seg):
    """suffix[b, p] by the definition, O(T^2): the share of every token predicted from a position q >= p that is
    still in p's segment (no segment change between p and q), each token's share ce * mask / (number of response
    tokens of its own segment)."""
    ce, mask, seg = (np.asarray(x, np.float64) for x in (ce, mask, seg))
    b, t = ce.shape
    out = np.zeros((b, t))
    for r in range(b):
        m = mask[r] * (seg[r] > 0)
        count = {s: m[seg[r] == s].sum() for s in set(seg[r].tolist())}
        share = [ce[r, j] * m[j] / count[seg[r, j]] if m[j] else 0.0 for j in range(t)]
        for p in range(t):
            q = p
            while q < t and seg[r, q] == seg[r, p]:
                if q + 1 < t:
                    out[r, p] += share[q + 1]  # position q predicts token q + 1
                q += 1
    return out


def random_packed(seed=0):
    """ce, mask, seg [4, 12]: one sequence; two packed and padding; three packed (the third segment's first token
    is a response token, predicted from the second segment's last position); padding only."""
    rng = np.random.default_rng(seed)
    seg = np.array([[1] * 12, [1] * 5 + [2] * 4 + [0] * 3, [1] * 3 + [2] * 3 + [3] * 6, [0] * 12], np.int32)
    mask = (rng.random(seg.shape) < 0.6).astype(np.float32) * (seg > 0)
    mask[0, 0] = mask[1, 0] = mask[1, 5] = mask[2, 0] = mask[2, 3] = 0.0
    mask[2, 6] = 1.0  # a target across the segment boundary
    ce = rng.exponential(2.0, seg.shape).astype(np.float32)
    return ce, mask, seg


def test_suffix_matches_definition():
    ce, mask, seg = random_packed()
    got = np.asarray(suffix_losses_from_ce(jnp.asarray(ce), jnp.asarray(mask), jnp.asarray(seg)))
    np.testing.assert_allclose(got, reference_suffix(ce, mask, seg), rtol=1e-5, atol=1e-6)
    assert np.all(got[3] == 0.0) and np.count_nonzero(got[:3]) > 15


def test_suffix_at_segment_start_is_the_sequence_loss():
    """With every segment's first token a prompt token (as the data pipeline packs), the suffix at a segment's
    first position is that sequence's loss (3.1): causal credit's first token gets the paper's advantage."""
    ce, mask, seg = random_packed(1)
    mask[2, 6] = 0.0
    suffix = np.asarray(suffix_losses_from_ce(jnp.asarray(ce), jnp.asarray(mask), jnp.asarray(seg)))
    loss, valid = (np.asarray(x) for x in sequence_losses_from_ce(jnp.asarray(ce), jnp.asarray(mask),
                                                                   jnp.asarray(seg)))
    for r in range(3):
        for s in range(1, int(seg[r].max()) + 1):
            start = int(np.argmax(seg[r] == s))
            assert valid[r, s - 1]
            assert suffix[r, start] == pytest.approx(float(loss[r, s - 1]), rel=1e-5)


def test_credit_stays_in_its_segment_and_ignores_masked_tokens():
    """Raising the loss of one response token q changes the suffix exactly at the positions of q's segment that
    come before q (those whose routing can change it), and nowhere else; a masked token's loss changes nothing."""
    ce, mask, seg = random_packed(2)
    mask[2, 6] = 0.0
    f = jax.jit(suffix_losses_from_ce)
    base = np.asarray(f(ce, mask, seg))
    for r, q in [(1, 3), (1, 7), (2, 4), (2, 10), (0, 11)]:
        mask[r, q] = 1.0
        base = np.asarray(f(ce, mask, seg))
        bumped = ce.copy()
        bumped[r, q] += 5.0
        changed = np.abs(np.asarray(f(bumped, mask, seg)) - base) > 1e-5
        expect = np.zeros_like(changed)
        expect[r] = (seg[r] == seg[r, q]) & (np.arange(seg.shape[1]) < q)
        np.testing.assert_array_equal(changed, expect, err_msg=f"row {r} token {q}")
    masked = np.argwhere((mask == 0) & (seg > 0))
    assert len(masked) > 5
    bumped = ce.copy()
    bumped[mask == 0] += 7.0
    np.testing.assert_array_equal(np.asarray(f(bumped, mask, seg)), base)


def packed_batch(rows=4, seq_len=24, seed=5):
    """Two synthetic sequences per row (segment ids 1, 2), the last row one sequence and padding."""
    src = next(SyntheticLoader(2 * rows, seq_len // 2, 256, seed=seed))
    out = {k: np.zeros((rows, seq_len), v.dtype) for k, v in src.items()}
    for i in range(rows):
        col = 0
        for s, j in enumerate((2 * i, 2 * i + 1) if i < rows - 1 else (2 * i,), start=1):
            n = int(np.sum(src["segment_ids"][j] > 0))
            for k in out:
                out[k][i, col:col + n] = src[k][j, :n] if k != "segment_ids" else s
            out["positions"][i, col:col + n] = np.arange(n)
            col += n
    return jax.tree.map(jnp.asarray, out)


def test_objective_router_gradient_is_the_causal_estimator(remix_bundle, perturb):
    """With credit="causal" the router's gradient is (1/num_seq) sum_{b,p} mean_m adv[b,p,m] grad log q[b,p,m],
    adv the leave-one-out difference of the reference suffixes; the adapters' gradient and every logged value but
    the surrogate are those of the paper's estimator."""
    bundle, batch, m = remix_bundle, packed_batch(), 3
    tr = perturb(bundle.trainable, seed=4)
    key = jax.random.key(21)
    cfg = ObjectiveConfig(num_samples=m, sampling_router=True, credit="causal")
    grad = jax.jit(jax.grad(lambda t, c: adapter_objective(bundle.model.apply, t, bundle.base, batch, key, c),
                            has_aux=True), static_argnums=1)
    g_causal, met_causal = grad(tr, cfg)
    g_seq, met_seq = grad(tr, dataclasses.replace(cfg, credit="sequence"))

    def sample(router, k):
        (logits, _), mut = bundle.model.apply(
            {"params": bundle.base, **tr, "router": router}, batch["tokens"], segment_ids=batch["segment_ids"],
            positions=batch["positions"], deterministic=False, rngs={"routing": k}, mutable=["routing_stats"])
        return token_cross_entropy(logits, batch["tokens"]), jnp.sum(collect_routing_stats(mut)["log_prob"], 0)

    keys = jax.random.split(key, m)
    sample_ce = jax.jit(lambda k: sample(tr["router"], k)[0])  # one compile for the M samples (was op by op)
    suffix = np.stack([reference_suffix(sample_ce(k), batch["loss_mask"], batch["segment_ids"])
                       for k in keys])  # [M, B, T]
    assert np.std(suffix, axis=0).max() > 1e-3  # the samples differ
    adv = (suffix - suffix.mean(0)) * m / (m - 1)
    num_seq = float(met_seq["num_sequences"])
    assert num_seq == 7
    weighted = jax.jit(jax.grad(lambda r, k, a: jnp.sum(sample(r, k)[1] * a)))
    parts = [weighted(tr["router"], k, jnp.asarray(adv[i], jnp.float32)) for i, k in enumerate(keys)]
    expected = jax.tree.map(lambda *g: sum(g) / (m * num_seq), *parts)
    for g, e in zip(jax.tree.leaves(g_causal["router"]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-3, atol=1e-6)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(g_causal["router"]), jax.tree.leaves(g_seq["router"]), strict=True))
    assert diff > 1e-5  # a different estimator of the same expectation
    # The same adapter gradient from two programs (the router's part differs), so float32 rounding of their
    # fused sums may differ: equal to a millionth of each leaf's largest entry.
    for a, b in zip(jax.tree.leaves(g_causal["adapter"]), jax.tree.leaves(g_seq["adapter"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))
    assert sorted(met_causal) == sorted(met_seq)
    per_block = np.asarray(met_seq["routing/logit_std_per_block"])  # the router logits' scale, logged per block
    assert per_block.shape == (2,) and np.all(per_block > 0)
    assert float(met_seq["routing/logit_std"]) == pytest.approx(float(per_block.mean()), rel=1e-6)
    for name in met_seq:
        if name != "surrogate":
            np.testing.assert_allclose(np.asarray(met_causal[name]), np.asarray(met_seq[name]), rtol=1e-6,
                                       err_msg=name)


# ---------------------------------------------------------------------------------------- exact enumeration

TINY = ModelConfig(vocab_size=11, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                   head_dim=4)

# (name, routed projections, n, k, M, tokens, segment ids, loss mask). A site per routed projection group: the
# attention's v_proj routes its own input (its routing at p changes the attention output at p and after), the
# FFN's block router its own (its routing at p changes position p only, reading a state that depends on the
# v_proj routing of positions <= p).
CASES = [
    ("v+ffn_k1_M2", ("v_proj", "gate_proj", "up_proj", "down_proj"), 3, 1, 2, [3, 7, 1], [1, 1, 1], [0, 1, 1]),
    ("v_k2_packed_M2", ("v_proj",), 3, 2, 2, [4, 9, 9, 3], [1, 1, 2, 2], [0, 1, 0, 1]),
    ("v_k1_M3", ("v_proj",), 3, 1, 3, [5, 2, 8], [1, 1, 1], [0, 1, 1]),
]


def enumerate_case(monkeypatch, targets, n, k, tokens, seg, mask):
    """Every routing outcome o of the tiny model on one row, with the sampler replaced by the outcome's selection.

    Returns float64 numpy: Q [O] (probability of o), ce [O, T], G [O, T, P] (gradient of each position's log q,
    summed over sites, w.r.t. the P router parameters), and exact [P], the gradient of sum_o Q(o) J(o) with J the
    objective's task loss (the mean over the row's sequences of their loss), by differentiating through Q.
    """
    sites = 1 + any(p in targets for p in ("gate_proj", "up_proj", "down_proj"))
    t = len(tokens)
    per_site = list(itertools.permutations(range(n), k))
    outcomes = list(itertools.product(range(len(per_site)), repeat=sites * t))
    sel = np.array([[[per_site[o[s * t + p]] for p in range(t)] for s in range(sites)] for o in outcomes], np.int32)
    count = [0]

    def forced(logits, k_, key):  # the sites draw in model order at every trace: v_proj, then the FFN's router
        site = count[0] % sites
        count[0] += 1
        assert logits.shape == (len(outcomes), t, n) and k_ == k
        return jnp.asarray(sel[:, site])

    monkeypatch.setattr(routers, "gumbel_top_k", forced)
    acfg = AdapterConfig(method="remix", targets=targets, num_experts=n, top_k=k, rank=2, alpha=4.0,
                         router_init_std=0.8)
    model = build_model(TINY, acfg)
    base = jax.jit(lambda r: llama.init_params(llama.Decoder(TINY), r))(jax.random.key(0))["params"]  # one program
    tr = init_adapter_variables(model, jax.random.key(1))
    leaves, tree = jax.tree.flatten(tr["adapter"])
    keys = jax.random.split(jax.random.key(2), len(leaves))
    adapter = jax.jit(lambda ls, ks: jax.tree.unflatten(tree, [x + 1.5 * jax.random.normal(kk, x.shape)
                                                               for x, kk in zip(ls, ks, strict=True)]))(leaves, keys)
    rows = len(outcomes)
    tok, sg, mk = (jnp.broadcast_to(jnp.asarray(x), (rows, t)) for x in (tokens, seg, mask))
    flat, unravel = ravel_pytree(tr["router"])

    def run(f):
        (logits, _), mut = model.apply({"params": base, "adapter": adapter, "router": unravel(f)}, tok,
                                       segment_ids=sg, deterministic=False, rngs={"routing": jax.random.key(0)},
                                       mutable=["routing_stats"])
        return token_cross_entropy(logits, tok), jnp.sum(collect_routing_stats(mut)["log_prob"], 0)

    @jax.jit  # one program (was op by op)
    def enumerate_all(flat):
        ce, log_q = run(flat)
        loss, valid = sequence_losses_from_ce(ce, mk, sg)
        task = jnp.sum(loss * valid, axis=-1) / jnp.sum(valid[0])  # [O]: the objective's first term

        exact = jax.grad(lambda f: jnp.sum(jnp.exp(jnp.sum(run(f)[1], -1)) * task))(flat)
        grads = jax.jacfwd(lambda f: run(f)[1])(flat)  # [O, T, P]
        return ce, log_q, exact, grads

    ce, log_q, exact, grads = enumerate_all(flat)
    q = np.exp(np.sum(np.asarray(log_q, np.float64), -1))
    assert q.sum() == pytest.approx(1.0, abs=1e-5)
    return dict(q=q, ce=ce, log_q=log_q, grads=np.asarray(grads, np.float64), exact=np.asarray(exact, np.float64),
                seg=sg, mask=mk)


def expected_estimate(e, m, credit, baseline="rloo", returns=None):
    """E over M i.i.d. outcomes of the objective's router gradient, exactly: every M-tuple of outcomes weighted by
    its probability. The coefficient of each sample's position log q comes from ``router_surrogate`` (the
    objective's own surrogate) differentiated w.r.t. the log q it is given; ``returns`` [O, T] replaces the
    suffix losses (a deliberately wrong credit)."""
    q, ce, seg, mask = e["q"], e["ce"], e["seg"][:1], e["mask"][:1]
    rows, t = ce.shape
    cfg = ObjectiveConfig(num_samples=m, baseline=baseline, sampling_router=True, credit=credit)

    loss, valid = jax.vmap(lambda c: sequence_losses_from_ce(c[None], mask, seg))(ce)  # [O, 1, T]
    suffix = jax.vmap(lambda c: suffix_losses_from_ce(c[None], mask, seg))(ce) if returns is None else \
        jnp.asarray(returns, jnp.float32)[:, None]

    def coefficients(idx, suffix):  # idx [M] outcomes -> d surrogate / d (token log q) [M, T]
        def surrogate(tok_lq):  # [M, 1, T]
            log_q = jax.vmap(lambda x: per_sequence_sums(x, seg))(tok_lq)
            return router_surrogate(loss[idx], log_q, valid[idx], (suffix[idx], tok_lq), cfg)
        return jax.grad(surrogate)(jnp.zeros((m, 1, t)))[:, 0]

    # [O^M, M], in itertools.product's order
    tuples = np.stack(np.unravel_index(np.arange(rows ** m), (rows,) * m), axis=1).astype(np.int32)
    # suffix an argument: the program of given returns is the one of the objective's own (a compilation cache hit)
    coef = jax.jit(jax.vmap(coefficients, in_axes=(0, None)))(jnp.asarray(tuples), suffix)
    coef = np.asarray(coef, np.float64)  # [O^M, M, T]
    weight = np.prod(q[tuples], axis=1)  # [O^M]
    est = np.zeros(e["grads"].shape[-1])
    for j in range(m):  # sum over tuples of weight * coef[:, j] . G[outcome of sample j], grouped by that outcome
        per_outcome = np.stack([np.bincount(tuples[:, j], weights=weight * coef[:, j, c], minlength=rows)
                                for c in range(t)], axis=1)  # [O, T]
        est += np.einsum("ot,otp->p", per_outcome, e["grads"])
    return est


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_exact_expectation_matches_exact_gradient(monkeypatch, case):
    """Both credits' estimators (and plain REINFORCE with causal credit) have exactly the gradient of the expected
    objective as their expectation; the prefix loss (what the routing of p cannot change) and the suffix without
    position p's own token (what it does change) as credit do not."""
    _, targets, n, k, m, tokens, seg, mask = case
    e = enumerate_case(monkeypatch, targets, n, k, tokens, seg, mask)
    exact = e["exact"]
    scale = np.max(np.abs(exact))
    assert scale > 1e-3
    tol = 1e-4 * scale
    for credit, baseline in (("sequence", "rloo"), ("causal", "rloo"), ("causal", "none")):
        est = expected_estimate(e, m, credit, baseline)
        np.testing.assert_allclose(est, exact, rtol=0, atol=tol, err_msg=f"{credit}/{baseline}")
    seg1, mask1 = e["seg"][:1], e["mask"][:1]
    suffix = np.asarray(jax.vmap(lambda c: suffix_losses_from_ce(c[None], mask1, seg1)[0])(e["ce"]), np.float64)
    starts = np.asarray(seg1[0]) != np.concatenate([[-1], np.asarray(seg1[0])[:-1]])
    whole = np.stack([np.maximum.accumulate(np.where(starts, np.arange(len(tokens)), 0))])  # segment start of p
    prefix = suffix[:, whole[0]] - suffix  # the loss of tokens predicted before p, in p's segment
    nxt = np.concatenate([suffix[:, 1:], np.zeros((suffix.shape[0], 1))], axis=1)
    own = np.where(np.concatenate([np.asarray(seg1[0])[1:] == np.asarray(seg1[0])[:-1], [False]]), nxt, 0.0)
    for name, returns in (("prefix", prefix), ("suffix without p's own token", own)):
        est = expected_estimate(e, m, "causal", "rloo", returns=returns)
        assert np.max(np.abs(est - exact)) > 100 * tol, name


def test_config_key_is_validated_and_reaches_the_objective(make_config):
    from remix_jax.run_config import ConfigError, split_config, validate_config
    from remix_jax.training.loop import objective_config

    config, _ = split_config(make_config("remix"))
    assert config.train.credit == "sequence" and objective_config(config).credit == "sequence"
    config.train.credit = "causal"
    validate_config(config)
    assert objective_config(config).credit == "causal"
    config.train.credit = "suffix"
    with pytest.raises(ConfigError, match="train.credit: 'suffix' is not sequence or causal"):
        validate_config(config)
    with pytest.raises(ValueError, match="ObjectiveConfig.credit='suffix'"):
        ObjectiveConfig(num_samples=2, credit="suffix")

"""Packed log-likelihood scoring (evaluation/scoring.py ``packed_batches`` / ``score_packed_batch``): each question
is a tree (its context, then every option attending to the context and to itself) packed with others into rows;
it gives the log-likelihoods of scoring every option as a whole sequence (``share_context=False``) and of the
KV-cache form (``pack_len=0``), on a tiny random decoder with LoRA and ReMix adapters."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.evaluation import evaluator, scoring
from remix_jax.evaluation.eval_config import EvalConfigError, default_eval_config, validate_eval_config
from remix_jax.models.attention import attention_mask
from tests.evaluation.test_shared_context import adapted, plain_logliks  # the same tiny decoders, reference
from tests.tiny_run import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def questions():
    """(contexts, continuations): 6 questions of 2..6 options, one 70-byte context (longer than a 64-token row with
    its options), a row alone, and a run of 5 rows with the same context."""
    rng = np.random.default_rng(1)
    ctxs, conts = [], []
    for q, (n_opt, ctx_len) in enumerate([(4, 20), (2, 3), (6, 41), (3, 70), (5, 9), (2, 30)]):
        c = f"Q{q}: " + "".join(rng.choice(list("abcdefgh "), ctx_len)) + "\nA:"
        for _ in range(n_opt):
            ctxs.append(c)
            conts.append(" " + "".join(rng.choice(list("xyzw"), int(rng.integers(0, 12)))))
    ctxs.append("alone:"), conts.append(" yes")
    ctxs += ["same:"] * 5
    conts += [" a", " bb", " a", " ccc", " dddd"]
    return ctxs, conts


def encoded(tok, ctxs, conts):
    return [(tok.encode(c, add_special_tokens=False), tok.encode(x, add_special_tokens=False))
            for c, x in zip(ctxs, conts, strict=True)]


def test_attention_mask_with_branches_by_enumeration():
    """Each (query, key) pair: same non-padding segment, key position <= query position, and the key in the prefix
    (branch 0) or in the query's branch."""
    seg = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 0]])
    pos = np.array([[0, 1, 2, 2, 3, 0, 1, 1, 0]])
    branch = np.array([[0, 0, 1, 2, 2, 0, 1, 2, 0]])
    got = np.asarray(attention_mask(*(jnp.asarray(a) for a in (pos, seg, pos, seg, branch))))[0, 0]
    for t, s in itertools.product(range(seg.shape[1]), repeat=2):
        want = (seg[0, t] == seg[0, s] != 0 and pos[0, s] <= pos[0, t]
                and branch[0, s] in (0, branch[0, t]))
        assert got[t, s] == want, (t, s)
    # without branches: the plain segment mask
    plain = np.asarray(attention_mask(*(jnp.asarray(a) for a in (pos, seg, pos, seg))))[0, 0]
    assert plain[3, 2] and not got[3, 2]  # option 2 does not see option 1's token at the same position


@pytest.mark.parametrize("pack_len,batch_size", [(64, 4), (256, 3)])
def test_packed_batches_lay_out_every_question_once(tok, pack_len, batch_size):
    rows = encoded(tok, *questions())
    groups, singles = scoring.context_groups(rows, batch_size)
    units = groups + [[i] for i in singles]
    batches = list(scoring.packed_batches(rows, units, batch_size, 0, pack_len))
    seen = [i for b in batches for i in b.rows]
    assert sorted(seen) == list(range(len(rows)))
    longest = max(len(rows[g[0]][0]) + sum(len(rows[i][1]) for i in g) for g in units)
    t = batches[0].tokens.shape[1]
    assert t == max(pack_len, 1 << (longest - 1).bit_length()) and all(b.tokens.shape[1] == t for b in batches)
    per_batch = max(1, batch_size * scoring.PACKED_TOKENS_PER_ROW // t)
    for b in batches:
        assert b.tokens.shape[0] <= per_batch and b.pred.shape == b.targets.shape == b.owner.shape
        n = b.pred.shape[1]
        assert n >= scoring.TARGETS_MIN and n & (n - 1) == 0
        for k in range(b.tokens.shape[0]):
            # rebuild each question from its row, in column order: context, then each option at positions continuing
            # from it; the option's target slots follow one another in the same order
            slot = 0
            for q in range(1, b.segment_ids[k].max() + 1):
                cols = np.flatnonzero(b.segment_ids[k] == q)
                assert (np.diff(cols) == 1).all()  # a question is contiguous
                ctx_cols = cols[b.branch_ids[k, cols] == 0]
                ctx = b.tokens[k, ctx_cols].tolist()
                assert ctx_cols[0] == cols[0] and b.positions[k, ctx_cols].tolist() == list(range(len(ctx)))
                for j in sorted(set(b.branch_ids[k, cols].tolist()) - {0}):
                    oc = cols[b.branch_ids[k, cols] == j]
                    m = len(oc)
                    assert b.positions[k, oc].tolist() == list(range(len(ctx), len(ctx) + m))
                    owner = b.owner[k, slot:slot + m]
                    i = int(owner[0])
                    assert (owner == i).all() and rows[i] == (ctx, b.tokens[k, oc].tolist())
                    assert b.targets[k, slot:slot + m].tolist() == rows[i][1]
                    assert b.pred[k, slot:slot + m].tolist() == [ctx_cols[-1]] + oc[:-1].tolist()
                    slot += m
            assert (b.owner[k, slot:] == -1).all()
    # best fit: no more rows than the next-fit bound, and at most one row under half full
    fills = [int((b.segment_ids[k] != 0).sum()) for b in batches for k in range(b.tokens.shape[0])
             if (b.segment_ids[k] != 0).any()]
    assert sum(f <= t // 2 for f in fills) <= 1


@pytest.mark.parametrize("method,pack_len,batch_size", [("lora", 256, 4), ("remix", 64, 3)])
def test_packed_equals_whole_sequences_and_the_cache_form(tok, method, pack_len, batch_size):
    model, variables, acfg = adapted(method)
    ctxs, conts = questions()
    runs = {}
    for name, kw in (("packed", dict(pack_len=pack_len)), ("cache", dict(pack_len=0)),
                     ("whole", dict(share_context=False))):
        runner = evaluator.ModelRunner(model, variables, tok, batch_size=batch_size, **kw)
        runs[name] = runner.loglik(ctxs, conts), runner.take_routing()
    (packed, n_packed), stats_packed = runs["packed"]
    (whole, n_whole), _ = runs["whole"]
    (cache, _), stats_cache = runs["cache"]
    assert list(n_packed) == list(n_whole) == [len(tok.encode(x, add_special_tokens=False)) for x in conts]
    assert np.all(packed < 0) and np.isfinite(packed).all()
    np.testing.assert_allclose(packed, whole, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(packed, cache, rtol=1e-5, atol=1e-4)
    if method == "remix":
        # every context token once per group of at most batch_size options, every option token once
        runs_of = [(c, len(list(g))) for c, g in itertools.groupby(ctxs)]
        ctx_tokens = sum(len(tok.encode(c, add_special_tokens=False)) * -(-n // batch_size) for c, n in runs_of)
        assert stats_packed["num_tokens"] == stats_cache["num_tokens"] == ctx_tokens + int(n_whole.sum())
        np.testing.assert_allclose(np.sum(stats_packed["load"], axis=-1), acfg.top_k, atol=1e-5)
        for k in ("load", "ess_applied", "ess_softmax", "entropy"):  # the same tokens, routed alike
            np.testing.assert_allclose(stats_packed[k], stats_cache[k], rtol=1e-4, atol=1e-4, err_msg=k)
    else:
        assert stats_packed is None


def test_packed_scores_equal_one_plain_forward_per_option(tok):
    """Against the definition: log p(option | context) from a plain forward pass of context + option (no mask, no
    padding; test_shared_context.plain_logliks: every row in one batch, followed by random filler that a causal
    decoder's logits at earlier positions do not see, one program instead of one per row length)."""
    model, variables, _ = adapted("remix")
    ctxs, conts = ["Q: abc\nA:"] * 3 + ["x:"], [" yes", " no", " maybe", " z"]
    runner = evaluator.ModelRunner(model, variables, tok, batch_size=4, pack_len=16)
    got, _ = runner.loglik(ctxs, conts)
    np.testing.assert_allclose(got, plain_logliks(model, variables, tok, ctxs, conts), rtol=1e-5, atol=1e-4)


def test_pack_len_is_checked():
    c = default_eval_config()
    c.tasks = "arc_e"
    c.pack_len = -1
    with pytest.raises(EvalConfigError, match="eval.pack_len: -1 is not a token count"):
        validate_eval_config(c)
    with pytest.raises(ValueError, match="pack_len"):
        evaluator.ModelRunner(None, {}, None, pack_len=-1)


def test_the_routing_statistics_pass_runs_one_program_shape(tok, monkeypatch):
    """record_routing (the teacher-forced pass after generation, which discards the log-probs) pads every packed batch
    to full rows and drops the target slots: one program shape where the scoring pass of the same rows takes
    several, and the same statistics."""
    model, variables, _ = adapted("remix")
    ctxs, conts = questions()
    shapes, real = [], scoring.score_packed_batch

    def spy(model, variables, tokens, segment_ids, positions, branch_ids, pred, targets, rng, with_stats):
        shapes.append((tokens.shape, pred.shape))
        return real(model, variables, tokens, segment_ids, positions, branch_ids, pred, targets, rng,
                    with_stats=with_stats)

    monkeypatch.setattr(scoring, "score_packed_batch", spy)
    runner = evaluator.ModelRunner(model, variables, tok, batch_size=3, pack_len=64)
    runner.loglik(ctxs, conts)
    scored, scored_shapes = runner.take_routing(), set(shapes)
    shapes.clear()
    runner.record_routing(ctxs, conts)
    recorded = runner.take_routing()
    assert len(scored_shapes) > 1 and len(set(shapes)) == 1, (scored_shapes, set(shapes))
    assert recorded["num_tokens"] == scored["num_tokens"]
    for k in ("load", "ess_applied", "ess_softmax", "entropy", "distinct_subsets"):
        np.testing.assert_allclose(recorded[k], scored[k], rtol=1e-6, atol=1e-6, err_msg=k)


def test_routing_accumulator_keeps_two_halves_of_the_batches():
    """Token-weighted means over all batches, and the load over even- and odd-numbered batches apart; with one half
    empty there are no halves."""
    from remix_jax.evaluation.routing_record import RoutingAccumulator

    acc = RoutingAccumulator()
    acc.add({"load": [[2.0, 0.0]], "ess_applied": [2.0]}, 3, part=0)
    acc.add({"load": [[0.0, 2.0]], "ess_applied": [1.0]}, 1, part=1)
    acc.add({"load": [[1.0, 1.0]], "ess_applied": [2.0]}, 1, part=2)
    out = acc.result()
    assert out["num_tokens"] == 5 and out["load"] == [[7 / 5, 3 / 5]] and out["ess_applied"] == [9 / 5]
    assert out["load_halves"] == [[[7 / 4, 1 / 4]], [[0.0, 2.0]]] and out["num_tokens_halves"] == [4, 1]
    one = RoutingAccumulator()
    one.add({"load": [[2.0, 0.0]]}, 3, part=0)
    assert "load_halves" not in one.result() and RoutingAccumulator().result() is None

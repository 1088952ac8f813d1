"""Task runners end to end on a tiny random decoder with a byte-level tokenizer and the real task files:
GSM8K by generation, ARC-Challenge by log-likelihood (parity with a plain forward pass) and by generation,
HumanEval with fake generators, and routing statistics of a remix adapter."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.evaluation import evaluator, gsm8k, humaneval, multiple_choice, prompts
from remix_jax.evaluation.eval_config import EvalConfigError, default_eval_config, validate_eval_config
from remix_jax.inference.generation import GenerationConfig, generate_text
from remix_jax.models.llama import Decoder, init_params
from remix_jax.models.model_config import named_config

EOS = "<|endoftext|>"


def byte_tokenizer():
    """A byte-level BPE tokenizer without merges (256 byte tokens + EOS = 257 ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    fast.add_special_tokens({"eos_token": EOS})
    return fast


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def base():
    cfg = named_config("tiny", vocab_size=272, max_position_embeddings=4096)
    variables = init_params(Decoder(cfg), jax.random.key(0))
    variables = jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, variables)  # non-degenerate greedy
    return cfg, variables


@pytest.fixture(scope="module")
def remix(base):
    """The tiny model with a remix adapter (4 experts, top-2, nonzero B) on the FFN."""
    cfg, variables = base
    acfg = AdapterConfig(method="remix", num_experts=4, top_k=2, rank=4, alpha=8.0)
    model = build_model(cfg, acfg)
    extra = init_adapter_variables(model, jax.random.key(1))
    extra["adapter"] = jax.tree.map(lambda x: x + 0.05, extra["adapter"])
    extra["router"] = jax.tree.map(lambda x: x * 30.0, extra["router"])
    return model, {"params": variables["params"], **extra}, acfg


def eval_cfg(data_dir, humaneval_path="", **kw):
    c = default_eval_config()
    c.limit = 3
    c.batch_size = 4
    c.gsm8k.path = str(data_dir / "gsm8k" / "test.jsonl")
    c.gsm8k.shots_path = str(data_dir / "gsm8k" / "train.jsonl")
    c.gsm8k.shots = 1
    c.gsm8k.max_new_tokens = 6
    c.arc_c.path = str(data_dir / "llm_adapters" / "ARC-Challenge" / "test.json")
    c.arc_c.shots_path = str(data_dir / "llm_adapters" / "ARC-Challenge" / "train.json")
    c.arc_c.shots = 0
    c.arc_c.max_new_tokens = 6
    c.humaneval.path = str(humaneval_path)
    c.humaneval.shots = 1
    c.humaneval.max_new_tokens = 6
    for k, v in kw.items():
        c[k] = v
    return c


def test_gsm8k_end_to_end(base, tok, data_dir):
    cfg, variables = base
    runner = evaluator.ModelRunner(Decoder(cfg), variables, tok, batch_size=4)
    c = eval_cfg(data_dir)
    res, seconds = evaluator.run_task_timed("gsm8k", runner, c)
    # the base model routes nothing, so no routing-statistics pass; the runner's clock starts again after each task
    assert set(seconds) == {"total", "generation", "generation compiling"}
    assert 0 <= seconds["generation compiling"] <= seconds["generation"] <= seconds["total"]
    assert seconds["generation"] > 0
    assert runner.take_seconds() == {}
    m = res.metrics
    assert m["num_examples"] == 3 and len(res.predictions) == 3 and m["shots"] == 1
    assert (
        m["num_correct"] == sum(r["correct"] for r in res.predictions)
        and m["accuracy"] == m["num_correct"] / 3
    )
    assert res.routing_stats is None  # the base model routes nothing
    refs = evaluator._examples(c.gsm8k.path, "gsm8k", 3)
    assert [r["gold"] for r in res.predictions] == [gsm8k.extract_reference(e["response"]) for e in refs]
    for r in res.predictions:
        assert r["prediction"] == gsm8k.extract_prediction(r["output"])
    # The runner's outputs equal one-by-one generation of the same prompts (order, batching, sorting).
    train = [
        {"question": e["prompt"], "answer": e["response"]}
        for e in evaluator._examples(c.gsm8k.shots_path, "gsm8k", None)
    ]
    shots = prompts.gsm8k_shots(train, 1, c.seed)
    gen = GenerationConfig(max_new_tokens=6, stop_token_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    for e, r in zip(refs, res.predictions, strict=True):
        text = prompts.gsm8k_prompt(e["prompt"], shots, c.plain_format)
        one = generate_text(
            Decoder(cfg),
            variables,
            tok,
            [text],
            dataclasses.replace(gen, max_batch=1),
            prompts.stop_sequences(c.plain_format),
        )
        assert one == [r["output"]]


def test_gsm8k_fake_generators_score_exactly(base, tok, data_dir):
    cfg, variables = base
    runner = evaluator.ModelRunner(Decoder(cfg), variables, tok)
    c = eval_cfg(data_dir)
    golds = [gsm8k.extract_reference(e["response"]) for e in evaluator._examples(c.gsm8k.path, "gsm8k", 3)]
    seen = []

    def oracle(texts, gen, stops, rng):
        seen.extend(texts)
        return [f"Some steps.\nThe answer is {g}." for g in golds]

    assert evaluator.run_gsm8k(runner, c, oracle).metrics["accuracy"] == 1.0
    assert all(t.endswith("### Response:\n") and t.count("### Instruction:") == 2 for t in seen)
    res = evaluator.run_gsm8k(runner, c, lambda texts, *a: ["no number here"] * len(texts))
    assert res.metrics["accuracy"] == 0.0 and res.metrics["num_no_answer"] == 3


def _reference_logliks(model, variables, tok, context, continuations, length=1024):
    """Log-likelihood of each continuation by a plain forward pass: right-padded rows (causal logits of the
    real tokens do not depend on padding after them), no left padding, no target slicing."""
    ctx = tok.encode(context, add_special_tokens=False)
    tokens = np.zeros((len(continuations), length), np.int32)
    seg, mask = np.zeros_like(tokens), np.zeros(tokens.shape, np.float32)
    for i, cont in enumerate(continuations):
        ids = tok.encode(cont, add_special_tokens=False)
        tokens[i, : len(ctx) + len(ids)], seg[i, : len(ctx) + len(ids)] = ctx + ids, 1
        mask[i, len(ctx) : len(ctx) + len(ids)] = 1
    logits = _plain_apply(model)(variables, jnp.asarray(tokens), jnp.asarray(seg))
    return [float(x) for x in multiple_choice.continuation_logprob(np.asarray(logits), tokens, mask)]


@functools.cache
def _plain_apply(model):
    """The model's logits, one jitted function per model (its compiled programs kept for every question)."""
    return jax.jit(lambda v, t, s: model.apply(v, t, segment_ids=s, rngs={"routing": jax.random.key(0)})[0])


@pytest.mark.parametrize("style", ["label", "text"])
def test_arc_c_loglik_matches_plain_forward(remix, tok, data_dir, style):
    model, variables, acfg = remix
    runner = evaluator.ModelRunner(model, variables, tok, batch_size=4)
    c = eval_cfg(data_dir, mc_style=style)
    res, seconds = evaluator.run_task_timed("arc_c", runner, c)
    assert set(seconds) == {"total", "scoring", "scoring compiling"}
    assert 0 <= seconds["scoring compiling"] <= seconds["scoring"] <= seconds["total"] and seconds["scoring"] > 0
    examples = evaluator._examples(c.arc_c.path, "alpaca", 3)
    assert res.metrics["num_examples"] == 3 and res.metrics["mode"] == "loglik"
    for e, r in zip(examples, res.predictions, strict=True):
        row = {"instruction": e["prompt"]}
        labels, conts = multiple_choice.option_continuations(row, style)
        ref = _reference_logliks(
            model, variables, tok, prompts.multiple_choice_prompt(row, [], c.plain_format), conts
        )
        np.testing.assert_allclose(r["logliks"], ref, rtol=1e-4, atol=1e-3)
        assert r["prediction"] == labels[int(np.argmax(ref))] and r["gold"] == e["answer"]
    # Routing statistics of the scoring passes: remix applies exactly k experts per token.
    rs = res.routing_stats
    L, n, k = model.config.num_layers, acfg.num_experts, acfg.top_k
    assert np.asarray(rs["load"]).shape == (L, n) and rs["num_tokens"] > 0
    np.testing.assert_allclose(np.sum(rs["load"], axis=-1), k, atol=1e-5)
    np.testing.assert_allclose(rs["ess_applied"], [k] * L, atol=1e-4)
    assert all(1.0 <= x <= n + 1e-5 for x in rs["ess_softmax"])


def test_format_seconds():
    assert evaluator.format_seconds({"total": 84.31, "generation": 60.24, "routing statistics": 20.06}) == \
        "84.3 s (generation 60.2 s, routing statistics 20.1 s)"
    # the compiling part of a kind beside it, from 0.05 s
    assert evaluator.format_seconds({"total": 84.31, "generation": 60.24, "generation compiling": 12.04,
                                     "routing statistics": 20.06, "routing statistics compiling": 0.04}) == \
        "84.3 s (generation 60.2 s [compiling 12.0 s], routing statistics 20.1 s)"
    assert evaluator.format_seconds({"total": 2.0}) == "2.0 s"


def test_arc_c_by_generation(base, tok, data_dir):
    cfg, variables = base
    runner = evaluator.ModelRunner(Decoder(cfg), variables, tok, batch_size=4)
    c = eval_cfg(data_dir, mc_mode="generate")
    res = evaluator.run_multiple_choice("arc_c", runner, c)
    for r in res.predictions:
        assert r["prediction"] == multiple_choice.extract_choice(
            r["output"], ["answer1", "answer2", "answer3", "answer4", "answer5"][:4]
        )
    golds = [r["gold"] for r in res.predictions]
    good = evaluator.run_multiple_choice(
        "arc_c", runner, c, lambda texts, *a: [f"the correct answer is {g}" for g in golds]
    )
    assert good.metrics["accuracy"] == 1.0 and good.metrics["num_no_answer"] == 0
    wrong = [{"answer1": "answer2"}.get(g, "answer1") for g in golds]
    bad = evaluator.run_multiple_choice(
        "arc_c", runner, c, lambda texts, *a: [f"answer is {w}" for w in wrong]
    )
    assert bad.metrics["accuracy"] == 0.0


def _problem_of(text, problems):
    return next(p for p in problems if text.endswith(p["prompt"]))


def test_humaneval_fake_generators(base, tok, humaneval_file):
    cfg, variables = base
    problems = humaneval.load_problems(humaneval_file)
    runner = evaluator.ModelRunner(Decoder(cfg), variables, tok)
    c = eval_cfg(humaneval_file.parent, humaneval_path=humaneval_file)
    c.sandbox.workers = 3

    def canonical(texts, gen, stops, rng):
        assert tuple(stops) == humaneval.STOP_SEQUENCES
        return [
            _problem_of(t, problems)["canonical_solution"] + "\n\ndef unrelated():\n    pass\n" for t in texts
        ]

    res = evaluator.run_humaneval(runner, c, canonical)
    assert (
        res.metrics["pass@1"] == 1.0 and res.metrics["accuracy"] == 1.0 and res.metrics["num_problems"] == 3
    )
    assert [r["task_id"] for r in res.predictions] == [p["task_id"] for p in problems[:3]]
    garbage = evaluator.run_humaneval(runner, c, lambda texts, *a: ["    return (((\n"] * len(texts))
    assert garbage.metrics["pass@1"] == 0.0 and garbage.metrics["num_passed"] == 0
    # pass@k with several samples: one good sample in two gives pass@1 = 0.5, pass@2 = 1.
    c.humaneval.num_samples, c.humaneval.temperature, c.humaneval.ks = 2, 0.8, "1,2"
    flip = iter(range(100))
    half = evaluator.run_humaneval(
        runner,
        c,
        lambda texts, *a: [
            _problem_of(t, problems)["canonical_solution"] if next(flip) % 2 else "    pass\n" for t in texts
        ],
    )
    assert (
        half.metrics["pass@1"] == 0.5 and half.metrics["pass@2"] == 1.0 and half.metrics["num_samples"] == 6
    )


def test_humaneval_real_generation_runs(base, tok, humaneval_file):
    cfg, variables = base
    runner = evaluator.ModelRunner(Decoder(cfg), variables, tok)
    c = eval_cfg(humaneval_file.parent, humaneval_path=humaneval_file, limit=2)
    res = evaluator.run_humaneval(runner, c)
    assert res.metrics["num_samples"] == 2 and res.metrics["pass@1"] == 0.0  # random weights never pass
    assert all(r["completion"] == humaneval.truncate_completion(r["completion"]) for r in res.predictions)


def test_eval_config_validation(data_dir):
    c = eval_cfg(data_dir)
    c.tasks = "gsm8k,arc_c"
    assert validate_eval_config(c) == ["gsm8k", "arc_c"]
    for field, value, msg in [
        ("tasks", "gsm8k,mmlu", "unknown task"),
        ("tasks", "", "empty"),
        ("mc_mode", "vote", "mc_mode"),
        ("remix_kernels", "triton", "eval.remix_kernels"),
        ("prefill_chunk", 24, "eval.prefill_chunk=24 must be 0 .* or a power of two"),
        ("prefill_chunk", -16, "eval.prefill_chunk=-16"),
        ("tasks", "arc_c,arc_c", "twice"),
    ]:
        bad = eval_cfg(data_dir)
        bad.tasks = "gsm8k,arc_c"
        bad[field] = value
        with pytest.raises(EvalConfigError, match=msg):
            validate_eval_config(bad)
    bad = eval_cfg(data_dir)
    bad.tasks, bad.gsm8k.shots_path = "gsm8k", ""
    with pytest.raises(EvalConfigError, match="eval.gsm8k.shots_path"):
        validate_eval_config(bad)
    bad = eval_cfg(data_dir)
    bad.tasks, bad.humaneval.path, bad.humaneval.num_samples, bad.humaneval.ks = "humaneval", "x", 2, "1,5"
    with pytest.raises(EvalConfigError, match="ks") as e:
        validate_eval_config(bad)
    assert "temperature" in str(e.value)


def test_bench_generate_smoke_matches_transformers():
    """scripts/bench_generate.py on the tiny shape: every configuration reports, and transformers' greedy
    tokens equal ours on the same weights."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "bench_generate.py"
    spec = importlib.util.spec_from_file_location("bench_generate", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--shape=tiny", "--batch_sizes=2", "--new_tokens=6", "--dtype=float32", "--repeats=1",
                       "--peer=hf"])
    assert [(r["impl"], r["adapter"]) for r in rows] == [
        ("remix_jax", "none"), ("remix_jax", "remix"), ("transformers", "none")]
    assert all(r["tokens_per_s"] > 0 and r["prompt_tokens"] == 43 for r in rows)
    assert rows[2]["first_tokens"] == rows[0]["first_tokens"][:6]

"""Scoring a generation task: greedy completion of each question's context until a stop sequence (``until``; by
default the start of a next demonstration of ``prompt_format``; in the chat format only ``until``, with the
template's end-of-turn token among the stop tokens, chat_format.py), the answer read from it (``extract``: a named
extractor, else the first or last match of ``extract_regex``, else the stripped completion) and compared with the
reference (``compare``: "exact" string match or "number", equal as numbers). Reports exact_match (the task's
``accuracy``) with its standard error, and how many completions gave no answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax

from remix_jax.evaluation import chat_format, prompts, task_functions
from remix_jax.evaluation.mc_runner import stderr
from remix_jax.evaluation.results import TaskResult
from remix_jax.evaluation.task_data import build_questions
from remix_jax.evaluation.task_spec import TaskSpec
from remix_jax.inference.generation import GenerationConfig

# (prompts, generation config, stop strings, rng) -> completions (stop strings already cut). For chat-format prompts
# it is also given add_special_tokens=False: the rendered template holds its special tokens (BOS) already.
Generator = Callable[..., list[str]]


def gen_config(max_new_tokens: int, tokenizer, temperature: float = 0.0, top_p: float = 1.0,
               chat: bool = False) -> GenerationConfig:
    """Decoding settings: stop at the tokenizer's end tokens (``chat``: and its chat template's end of turn), pad
    with its pad token."""
    from remix_jax.models.tokenizer import stop_token_ids

    stops = stop_token_ids(tokenizer) if tokenizer is not None else ()
    if chat:
        stops = tuple(sorted({*stops, *chat_format.end_of_turn_ids(tokenizer)}))
    pad = (tokenizer.pad_token_id or 0) if tokenizer is not None else 0
    return GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop_token_ids=stops, pad_id=pad
    )


def extractor(spec: TaskSpec) -> Callable[[str, Mapping], str | None]:
    if spec.extract:
        return task_functions.EXTRACTORS[spec.extract]
    if spec.extract_regex:
        return task_functions.regex_extractor(spec.extract_regex, spec.extract_match)
    return lambda text, doc: text.strip()


def stop_strings(spec: TaskSpec, chat: bool = False) -> list[str]:
    """The task's ``until``; without one, the start of a next plain demonstration (none in the chat format, whose
    turns end with a token)."""
    if chat:
        return list(spec.until)
    return list(spec.until) or prompts.stop_sequences(spec.prompt_format)


def run(spec: TaskSpec, runner, seed: int = 0, limit: int | None = None, offset: int = 0,
        generator: Generator | None = None, chat: bool = False) -> TaskResult:
    """Questions ``offset`` .. ``offset + limit - 1`` of a generation task (to the end when limit is None),
    generated and scored. ``generator`` replaces ``runner.generate`` (tests pass fakes). ``chat``: contexts in the
    chat template of ``runner.tokenizer``."""
    questions = build_questions(spec, seed, limit, offset, runner.tokenizer if chat else None)
    texts = [q.context for q in questions]
    gen = gen_config(spec.max_new_tokens, runner.tokenizer, chat=chat)
    generate = generator or runner.generate
    special = {"add_special_tokens": False} if chat else {}
    outputs = generate(texts, gen, stop_strings(spec, chat), jax.random.key(seed), **special)
    extract, compare = extractor(spec), task_functions.COMPARATORS[spec.compare]
    preds = [extract(o, q.doc) for o, q in zip(outputs, questions, strict=True)]
    correct = [compare(p, q.gold) for p, q in zip(preds, questions, strict=True)]
    runner.record_routing(texts, outputs)
    metrics = {
        "accuracy": sum(correct) / len(correct) if correct else 0.0,
        "num_correct": int(sum(correct)),
        "num_examples": len(questions),
        "num_no_answer": sum(p is None for p in preds),
        "shots": int(spec.num_fewshot),
        "mode": "generate",
        "primary_metric": "exact_match",
    }
    metrics["exact_match"] = metrics["accuracy"]
    metrics["exact_match_stderr"] = stderr([float(c) for c in correct])
    rows = [{"id": q.index, "question": q.query, "output": o, "prediction": p, "gold": q.gold, "correct": c}
            for q, o, p, c in zip(questions, outputs, preds, correct, strict=True)]
    return TaskResult(spec.name, metrics, rows, runner.take_routing())

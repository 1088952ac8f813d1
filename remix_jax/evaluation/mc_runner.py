"""Scoring a multiple-choice task: every choice is the continuation ``target_delimiter + choice`` of the question's
context; the model gives each its summed log-probability; each metric picks the choice with the best score:

    acc            summed log-likelihood
    acc_norm       divided by the length of the choice in characters (lm-eval's acc_norm: the delimiter not counted)
    acc_per_token  divided by the number of tokens of the continuation
    acc_per_char   divided by the length of the continuation in characters (ai2-olmo-eval's acc_per_char)
    acc_bytes      divided by the length of the choice in UTF-8 bytes

Ties go to the first choice (numpy's argmax, as lm-eval). Each metric is reported with its standard error
(sample standard deviation / sqrt(n), as lm-eval), the first one is the task's ``accuracy``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from remix_jax.data.sources import DataError
from remix_jax.evaluation.results import TaskResult
from remix_jax.evaluation.task_data import Question, build_questions
from remix_jax.evaluation.task_spec import MC_METRICS, TaskSpec


def stderr(correct: Sequence[float]) -> float:
    """Standard error of a mean of 0/1 scores: sqrt(sum((x - mean)^2) / (n - 1)) / sqrt(n); 0 for n < 2."""
    x = np.asarray(correct, np.float64)
    return float(np.std(x, ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0


def lengths(metric: str, continuations: Sequence[str], choices: Sequence[str],
            num_tokens: Sequence[int]) -> np.ndarray:
    """What ``metric`` divides each choice's log-likelihood by [n_choices]."""
    unit = MC_METRICS[metric]
    if unit == "none":
        return np.ones(len(choices))
    if unit == "token":
        return np.asarray(num_tokens, np.float64)
    if unit == "char":
        return np.asarray([len(c) for c in continuations], np.float64)
    if unit == "choice_chars":
        return np.asarray([len(c) for c in choices], np.float64)
    return np.asarray([len(c.encode("utf-8")) for c in choices], np.float64)


def predict(metric: str, logliks: np.ndarray, continuations: Sequence[str], choices: Sequence[str],
            num_tokens: Sequence[int], where: str = "") -> int:
    """Index of the choice ``metric`` picks."""
    div = lengths(metric, continuations, choices, num_tokens)
    if np.any(div <= 0):
        raise DataError(f"{where}: {metric} divides by the length of each choice, and choice "
                        f"{int(np.argmin(div))} is empty")
    scores = np.asarray(logliks, np.float64) / div
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{where}: non-finite log-likelihoods {list(logliks)}")
    return int(np.argmax(scores))


def score(spec: TaskSpec, runner, questions: Sequence[Question]) -> TaskResult:
    """Score ``questions`` with ``runner.loglik(contexts, continuations) -> (sums [N], token counts [N])``."""
    contexts, conts = [], []
    for q in questions:
        contexts += [q.context] * len(q.choices)
        conts += [spec.target_delimiter + c for c in q.choices]
    sums, counts = runner.loglik(contexts, conts)
    metrics = spec.metric_names
    correct = {m: [] for m in metrics}
    rows, start = [], 0
    for q in questions:
        n = len(q.choices)
        ll, tok, cs = np.asarray(sums[start:start + n]), counts[start:start + n], conts[start:start + n]
        start += n
        preds = {m: predict(m, ll, cs, q.choices, tok, q.where) for m in metrics}
        for m in metrics:
            correct[m].append(float(preds[m] == q.gold))
        primary = preds[metrics[0]]
        row = {"id": q.index, "prediction": q.label(primary), "gold": q.label(q.gold), "correct": primary == q.gold,
               "logliks": [float(x) for x in ll], "num_tokens": [int(x) for x in tok],
               "num_chars": [len(c) for c in cs]}
        if len(metrics) > 1:
            row["predictions"] = {m: q.label(p) for m, p in preds.items()}
        rows.append(row)
    first = metrics[0]
    out = {"accuracy": float(np.mean(correct[first])) if questions else 0.0,
           "num_correct": int(sum(correct[first])), "num_examples": len(questions), "mode": "loglik",
           "shots": int(spec.num_fewshot), "normalize": MC_METRICS[first], "primary_metric": first}
    for m in metrics:
        out[m] = float(np.mean(correct[m])) if questions else 0.0
        out[f"{m}_stderr"] = stderr(correct[m])
    return TaskResult(spec.name, out, rows, runner.take_routing())


def run(spec: TaskSpec, runner, seed: int = 0, limit: int | None = None, offset: int = 0,
        chat: bool = False) -> TaskResult:
    """Questions ``offset`` .. ``offset + limit - 1`` of a multiple-choice task (to the end when limit is None),
    scored. ``chat``: contexts in the chat template of ``runner.tokenizer``, each choice the continuation of its
    generation prompt with no target_delimiter (as lm-eval's apply_chat_template)."""
    questions = build_questions(spec, seed, limit, offset, runner.tokenizer if chat else None)
    return score(spec.replace(target_delimiter="") if chat else spec, runner, questions)

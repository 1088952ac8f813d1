"""Multiple choice (ARC-Challenge, ARC-Easy, BoolQ, OpenBookQA in the LLM-Adapters format).

Rows look like ``{"instruction": "... Answer1: x Answer2: y ... Answer format: answer1/answer2/...",
"output": "the correct answer is answer3", "answer": "answer3"}`` (BoolQ: answers ``true``/``false``).

Two ways to score:
- generated: extract the label from the model's text (``extract_choice``), as LLM-Adapters does (first
  ``answerN`` / ``true|false`` in the output), also accepting a letter ("The answer is (C)");
- log-likelihood: build one continuation per option (``option_continuations``), let the model sum the
  log-probabilities of each continuation's tokens (``continuation_logprob``), pick the best
  (``rank_options``).

Ranked classification ("rc", OLMES / ai2-olmo-eval, rows of the ``arc_rc`` format): the prompt is
"Question: ...\\nAnswer:" and each option is scored as the continuation " {option text}" (``rc_options``,
``rc_context``), ranked by summed, per-token or per-character log-likelihood (``rc_lengths``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_OPTION = re.compile(r"Answer(\d):\s*(.*?)\s*(?=Answer\d:|\n|$)", re.DOTALL)
_FORMAT = re.compile(r"Answer format:\s*([\w/]+)")
_LABEL = re.compile(r"answer\s*([1-5])", re.IGNORECASE)
_LETTER = re.compile(r"(?:answer\s+is\s*:?\s*\(?([A-E])\b\)?)|(?:^\s*\(?([A-E])[\).:](?:\s|$))")
_TRUE_FALSE = re.compile(r"\b(true|false)\b", re.IGNORECASE)


def option_labels(row: dict) -> list[str]:
    """The labels a row allows, from its 'Answer format:' line: ['answer1', ...] or ['true', 'false']."""
    m = _FORMAT.search(row["instruction"])
    if m is None:
        raise ValueError(f"row has no 'Answer format:' line: {row['instruction'][-120:]!r}")
    return m.group(1).split("/")


def option_texts(row: dict) -> list[str]:
    """The option texts (for ``style='text'`` continuations): 'Answer1: x' fields, or the labels for BoolQ."""
    labels = option_labels(row)
    found = dict(_OPTION.findall(row["instruction"]))
    if labels[0].startswith("answer"):
        missing = [lab for lab in labels if lab[len("answer"):] not in found]
        if missing:
            raise ValueError(f"options {missing} not found in instruction {row['instruction'][:120]!r}")
        return [found[lab[len("answer"):]] for lab in labels]
    return labels


def extract_choice(text: str, labels: Sequence[str]) -> str | None:
    """The label chosen in a generated text, or None. labels: ['answer1', ...] or ['true', 'false']."""
    text = text.strip()
    if labels and labels[0].startswith("answer"):
        m = _LABEL.search(text)
        if m is not None:
            label = f"answer{m.group(1)}"
            return label if label in labels else None
        m = _LETTER.search(text)
        if m is not None:
            idx = ord((m.group(1) or m.group(2)).upper()) - ord("A")
            return labels[idx] if idx < len(labels) else None
        return None
    m = _TRUE_FALSE.search(text)
    if m is not None and m.group(1).lower() in labels:
        return m.group(1).lower()
    return None


def option_continuations(row: dict, style: str = "label") -> tuple[list[str], list[str]]:
    """(labels [n_options], continuations [n_options]) to append to the row's prompt for ranking.

    style 'label': the training target form, " the correct answer is answer3" (matches the LLM-Adapters
    outputs the adapters are trained on); style 'text': " " + the option's own text (the usual
    lm-evaluation-harness form, better for models never trained on the label format).
    """
    labels = option_labels(row)
    if style == "label":
        return labels, [f"the correct answer is {lab}" for lab in labels]
    if style == "text":
        return labels, [f" {t}" for t in option_texts(row)]
    raise ValueError(f"unknown continuation style {style!r}; expected 'label' or 'text'")


def rank_options(logliks: Sequence[float], num_tokens: Sequence[int] | None = None) -> int:
    """Index of the best option from summed log-likelihoods [n_options]; per-token average if num_tokens
    [n_options] is given. Ties go to the first option."""
    scores = np.asarray(logliks, dtype=np.float64)
    if num_tokens is not None:
        counts = np.asarray(num_tokens, dtype=np.float64)
        if counts.shape != scores.shape or np.any(counts <= 0):
            raise ValueError(f"num_tokens {list(num_tokens)} must be positive, one per option")
        scores = scores / counts
    if scores.ndim != 1 or scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError(f"expected finite log-likelihoods, one per option; got {list(logliks)}")
    return int(np.argmax(scores))


def continuation_logprob(logits: np.ndarray, tokens: np.ndarray, target_mask: np.ndarray) -> np.ndarray:
    """Summed log-probabilities of the target tokens: logits [B,T,V] (position t predicts token t+1),
    tokens [B,T], target_mask [B,T] (1 on continuation tokens) -> [B]. Works on numpy or jax arrays."""
    xp = np if isinstance(logits, np.ndarray) else __import__("jax").numpy
    logits = logits[:, :-1].astype(xp.float32)
    logz = xp.max(logits, axis=-1, keepdims=True)
    logp = logits - logz - xp.log(xp.sum(xp.exp(logits - logz), axis=-1, keepdims=True))
    picked = xp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return xp.sum(picked * target_mask[:, 1:], axis=-1)


def accuracy(predictions: Sequence[str | None], golds: Sequence[str]) -> float:
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} gold labels")
    return sum(p == g for p, g in zip(predictions, golds, strict=True)) / len(golds) if golds else 0.0


# ------------------------------------------------------------------------- ranked classification ("rc")
# Rows of the ``arc_rc`` format (remix_jax/data/formats.py): prompt "Question: ...\nAnswer:", answer "answerN",
# options [n] (the option texts). Each option is scored as the continuation " {text}" of the prompt, as
# OLMES / ai2-olmo-eval "rc" tasks and lm-evaluation-harness do.

NORMALIZE_UNITS = ("token", "char")


def is_rc(example: dict) -> bool:
    """Whether an evaluation example carries its options as texts (the ``arc_rc`` format)."""
    return isinstance(example.get("options"), list)


def rc_options(example: dict) -> tuple[list[str], list[str]]:
    """(labels ['answer1', ...] [n_options], continuations [' text', ...] [n_options]) of an rc example."""
    options = example.get("options")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) and o for o in options):
        raise ValueError(f"rc example {example.get('id')!r}: 'options' must be a non-empty list of texts; "
                         f"got {options!r}")
    return [f"answer{i + 1}" for i in range(len(options))], [f" {o}" for o in options]


def rc_context(prompt: str, shots: Sequence[tuple[str, str]] = (), fmt: str = "{prompt}") -> str:
    """The scoring context of an rc query: demonstrations ``fmt(prompt) + response + "\\n\\n"`` (the
    response kept as is, " {option}", so a shot reads "Question: ...\\nAnswer: text"), then ``fmt(prompt)``."""
    if "{prompt}" not in fmt:
        raise ValueError(f"prompt format {fmt!r} has no {{prompt}} field")
    return "".join(fmt.format(prompt=p) + r + "\n\n" for p, r in shots) + fmt.format(prompt=prompt)


def rc_lengths(continuations: Sequence[str], num_tokens: Sequence[int], unit: str) -> list[int]:
    """Lengths [n] to normalise summed log-likelihoods by: tokens, or characters of the continuation (the
    leading space included, as ai2-olmo-eval's acc_per_char)."""
    if unit == "token":
        return [int(n) for n in num_tokens]
    if unit == "char":
        return [len(c) for c in continuations]
    raise ValueError(f"unknown normalisation unit {unit!r}; expected one of {NORMALIZE_UNITS}")

"""GSM8K scoring: final-number extraction from references and model outputs, and exact match.

References end with ``#### N``. Model outputs are read, in order of preference, from ``#### N``, then the last
"answer is N" (also "The answer is: $1,234.50."), then the last number in the text. Numbers are normalized so
that "1,000", "$1000", "1000.00" and "1000" compare equal; negatives and decimals are kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

# A number: optional sign, optional "$", thousands-grouped or plain digits, optional decimals (".5" too).
_NUM = r"(-?)\s*\$?\s*(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_NUMBER = re.compile(_NUM)
_HASHES = re.compile(r"####\s*" + _NUM)
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*" + _NUM, re.IGNORECASE)
_CALC = re.compile(r"<<[^>]*>>")


def normalize_number(sign: str, digits: str) -> str:
    """'-', '1,000.50' -> '-1000.5'; integers print without a decimal point."""
    try:
        value = Decimal(digits.replace(",", ""))
    except InvalidOperation as e:  # the regexes only produce valid numbers; kept for direct callers
        raise ValueError(f"not a number: {digits!r}") from e
    if sign == "-":
        value = -value
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _last(pattern: re.Pattern, text: str) -> str | None:
    matches = pattern.findall(text)
    return normalize_number(*matches[-1]) if matches else None


def extract_reference(answer: str) -> str:
    """The gold number of a GSM8K reference solution (the text after ``####``)."""
    found = _last(_HASHES, answer)
    if found is None:
        raise ValueError(f"GSM8K reference has no '#### N' final answer: {answer[-80:]!r}")
    return found


def extract_prediction(text: str) -> str | None:
    """The model's final number, or None when the output contains no number."""
    for pattern in (_HASHES, _ANSWER_IS, _NUMBER):
        found = _last(pattern, text)
        if found is not None:
            return found
    return None


def is_correct(prediction: str | None, gold: str) -> bool:
    """Exact match of normalized numbers."""
    return prediction is not None and Decimal(prediction) == Decimal(gold)


def accuracy(outputs: Sequence[str], golds: Sequence[str]) -> tuple[float, list[str | None], list[bool]]:
    """Exact-match accuracy of model outputs [N] against gold numbers [N]; also per-example predictions."""
    if len(outputs) != len(golds):
        raise ValueError(f"{len(outputs)} outputs but {len(golds)} gold answers")
    preds = [extract_prediction(o) for o in outputs]
    correct = [is_correct(p, g) for p, g in zip(preds, golds, strict=True)]
    return (sum(correct) / len(correct) if correct else 0.0), preds, correct


def reference_to_chain_of_thought(answer: str) -> str:
    """A train-split reference as a few-shot demonstration: calculator annotations removed, and the final
    ``#### N`` line rewritten as "The answer is N." (the form ``extract_prediction`` prefers after ####)."""
    body, _, _ = _CALC.sub("", answer).rpartition("####")
    return f"{body.strip()}\nThe answer is {extract_reference(answer)}."

"""The named functions a task definition may use, where a template cannot say it (lm-eval's ``!function``):

- ``process_docs``: a document -> the document with more fields, applied to every row before the templates
  (``PROCESSORS``). ``hellaswag`` is lm-eval's preprocessing of HellaSwag; ``llm_adapters``, ``rc`` and ``gsm8k``
  turn the rows of the project's data formats into the fields the built-in tasks' templates read.
- ``extract``: a generated text (and its document) -> the answer it gives, or None (``EXTRACTORS``).
- ``compare``: (extracted answer, reference) -> correct or not (``COMPARATORS``).

Each processor takes (doc, where) and raises ``DataError`` naming ``where`` (file and line) for a bad row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from remix_jax.data.sources import DataError
from remix_jax.evaluation import gsm8k, multiple_choice

# ------------------------------------------------------------------------------------------ document processors


def _hellaswag_text(text: str) -> str:
    """lm-eval's (and ai2-olmo-eval's) cleaning of HellaSwag text: WikiHow's bracketed artifacts removed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag(doc: Mapping, where: str) -> dict:
    """Rowan/hellaswag rows (activity_label, ctx_a, ctx_b, endings, label) + query, choices, gold, exactly as
    lm-eval's ``hellaswag/utils.py:process_docs``."""
    try:
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {**doc, "query": _hellaswag_text(doc["activity_label"] + ": " + ctx),
                "choices": [_hellaswag_text(e) for e in doc["endings"]], "gold": int(doc["label"])}
    except KeyError as e:
        raise DataError(f"{where}: missing field {e.args[0]!r} of a HellaSwag row (row has keys {sorted(doc)})") \
            from None
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: not a HellaSwag row ({e})") from None


def llm_adapters(doc: Mapping, where: str) -> dict:
    """An LLM-Adapters multiple-choice example (prompt with "Answer1: ..." options and an "Answer format:" line,
    response "the correct answer is answerN", answer "answerN" / "true" / "false") + query, labels, label_choices
    (" the correct answer is <label>" continuations, no leading space), options (the option texts, when the prompt
    lists them), gold (index of the answer), shot_target (the response, stripped)."""
    row = {"instruction": doc["prompt"]}
    try:
        labels = multiple_choice.option_labels(row)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
    gold = str(doc["answer"]).strip().lower()
    if gold not in labels:
        raise DataError(f"{where}: gold answer {gold!r} is not one of its options {labels}")
    out = {**doc, "query": doc["prompt"], "labels": labels, "gold": labels.index(gold), "gold_label": gold,
           "label_choices": [f"the correct answer is {lab}" for lab in labels],
           "shot_target": str(doc["response"]).strip()}
    try:
        out["options"] = multiple_choice.option_texts(row)
    except ValueError:
        pass  # a prompt without the option texts: only the label form can be scored
    return out


def rc(doc: Mapping, where: str) -> dict:
    """A ranked-classification example (format ``arc_rc``: prompt "Question: ...\\nAnswer:", options, answer
    "answerN") + query, labels, gold."""
    try:
        labels, _ = multiple_choice.rc_options(doc)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
    if doc["answer"] not in labels:
        raise DataError(f"{where}: gold answer {doc['answer']!r} is not one of {labels}")
    return {**doc, "query": doc["prompt"], "labels": labels, "gold": labels.index(doc["answer"])}


def gsm8k_doc(doc: Mapping, where: str) -> dict:
    """A GSM8K example (prompt = question, response = reference solution ending in "#### N") + question, number
    (the gold number) and cot (the reference as a demonstration: "... The answer is N.")."""
    try:
        number = gsm8k.extract_reference(doc["response"])
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
    return {**doc, "question": doc["prompt"], "number": number,
            "cot": gsm8k.reference_to_chain_of_thought(doc["response"])}


PROCESSORS: dict[str, Callable[[Mapping, str], dict]] = {
    "hellaswag": hellaswag, "llm_adapters": llm_adapters, "rc": rc, "gsm8k": gsm8k_doc}


# ------------------------------------------------------------------------------------------ answer extraction


def _choice(text: str, doc: Mapping) -> str | None:
    return multiple_choice.extract_choice(text, doc["labels"])


EXTRACTORS: dict[str, Callable[[str, Mapping], str | None]] = {
    "gsm8k": lambda text, doc: gsm8k.extract_prediction(text),  # the final number (#### N, "answer is N", last)
    "choice": _choice,  # LLM-Adapters: the first "answerN" / "true|false" / letter, a label of doc["labels"]
}


def regex_extractor(pattern: str, match: str) -> Callable[[str, Mapping], str | None]:
    """The first capture group (else the whole match) of the first or last match of ``pattern``."""
    compiled = re.compile(pattern)

    def extract(text: str, doc: Mapping) -> str | None:
        found = list(compiled.finditer(text))
        if not found:
            return None
        m = found[0] if match == "first" else found[-1]
        return m.group(1) if compiled.groups else m.group(0)

    return extract


COMPARATORS: dict[str, Callable[[str | None, str], bool]] = {
    "exact": lambda pred, gold: pred is not None and pred.strip() == gold.strip(),
    "number": gsm8k.is_correct,  # equal as numbers: "1,000" == "1000.00"
}

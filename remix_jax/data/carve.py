"""Carve a validation split out of a training file, so that hyperparameters are chosen without the test set.

    python -m remix_jax.data --carve=DATA/gsm8k/train.jsonl --num_val=500 --carve_seed=0 --out=DATA/gsm8k_val

writes ``OUT/train.jsonl`` (the rows not held out, in their original order), ``OUT/validation.jsonl`` (the
``num_val`` rows held out, in their original order) and ``OUT/carve.json``: the source file's name, size and
sha256, the seed, the row counts, the held-out row numbers and the sha256 of both outputs. The held-out rows are
a uniform draw without replacement (numpy's ``default_rng(seed).choice``), so the split depends on the seed and
the file alone. The input is a JSON-lines file (``.jsonl``: one object per line; blank lines skipped) or a JSON
list of objects (``.json``: LLM-Adapters, CodeAlpaca); both outputs are JSON lines, which every ``file`` source
reads, each row the input's object with its fields and values unchanged (the same rows written as a list or as
lines carve into the same two files). A file that cannot be read as rows is an error naming it (and the line).

A folder that already holds a carve is left alone when it was carved from the same file with the same settings
(the outputs are checked against the recorded sha256), and refused otherwise: a good split is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np

MANIFEST = "carve.json"
TRAIN, VALIDATION = "train.jsonl", "validation.jsonl"


class CarveError(ValueError):
    """A bad input file, bad settings, or an output folder holding something else."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_rows(path: str | os.PathLike) -> list[str]:
    """The rows of ``path`` as canonical JSON lines: a ``.json`` file holds a JSON list of objects, a ``.jsonl`` file
    one object per line; another name is read as a list when its text starts with "[". Each row is the input's
    object itself, its fields and values unchanged."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise CarveError(f"{p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CarveError(f"{p}: not UTF-8 text (byte {e.start}); carve a .jsonl file or a .json list") from None
    as_list = p.suffix == ".json" or (p.suffix != ".jsonl" and text.lstrip().startswith("["))
    rows = _list_rows(p, text) if as_list else _line_rows(p, text)
    if not rows:
        raise CarveError(f"{p}: no rows")
    return [json.dumps(r, ensure_ascii=False) for r in rows]


def _list_rows(p: pathlib.Path, text: str) -> list[dict]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise CarveError(f"{p}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(rows, list):
        raise CarveError(f"{p}: a JSON {type(rows).__name__}, not a list of objects (as CodeAlpaca and "
                         "LLM-Adapters files are)")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise CarveError(f"{p}: item {i} is a {type(row).__name__}, not an object")
    return rows


def _line_rows(p: pathlib.Path, text: str) -> list[dict]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CarveError(f"{p}:{lineno}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict):
            raise CarveError(f"{p}:{lineno}: a {type(row).__name__}, not an object")
        out.append(row)
    return out


def held_out_rows(num_rows: int, num_val: int, seed: int) -> np.ndarray:
    """The sorted row numbers held out: ``num_val`` of ``range(num_rows)`` drawn without replacement."""
    if not 0 < num_val < num_rows:
        raise CarveError(f"num_val={num_val}: must be between 1 and {num_rows - 1} (the file has {num_rows} rows)")
    return np.sort(np.random.default_rng(seed).choice(num_rows, size=num_val, replace=False))


def carve(src: str | os.PathLike, out_dir: str | os.PathLike, num_val: int, seed: int = 0) -> dict:
    """Split ``src`` into OUT/train.jsonl and OUT/validation.jsonl; returns the manifest (also OUT/carve.json)."""
    src, out = pathlib.Path(src), pathlib.Path(out_dir)
    raw = src.read_bytes() if src.is_file() else b""
    rows = read_rows(src)
    val = held_out_rows(len(rows), num_val, seed)
    is_val = np.zeros(len(rows), bool)
    is_val[val] = True
    train_text = "".join(r + "\n" for r, v in zip(rows, is_val, strict=True) if not v).encode()
    val_text = "".join(r + "\n" for r, v in zip(rows, is_val, strict=True) if v).encode()
    manifest = {
        "source": {"name": src.name, "size": len(raw), "sha256": _sha256(raw)},
        "seed": seed, "num_rows": len(rows), "num_train": len(rows) - num_val, "num_validation": num_val,
        "validation_rows": val.tolist(),
        "outputs": {TRAIN: _sha256(train_text), VALIDATION: _sha256(val_text)},
    }
    mpath = out / MANIFEST
    if mpath.exists() or any((out / n).exists() for n in (TRAIN, VALIDATION)):
        _check_existing(out, manifest)
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    for name, data in ((TRAIN, train_text), (VALIDATION, val_text), (MANIFEST, _dumps(manifest))):
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out / name)  # the manifest last: a folder with a manifest holds a complete carve
    return manifest


def _dumps(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1) + "\n").encode()


def _check_existing(out: pathlib.Path, manifest: dict) -> None:
    """An existing carve is kept only when it is this one and its files are intact."""
    mpath = out / MANIFEST
    if not mpath.exists():
        raise CarveError(f"{out}: holds {TRAIN} or {VALIDATION} but no {MANIFEST}; carve into a new folder")
    try:
        old = json.loads(mpath.read_text())
    except json.JSONDecodeError:
        raise CarveError(f"{mpath}: damaged (not JSON); carve into a new folder") from None
    keys = ("source", "seed", "num_validation")
    diff = [k for k in keys if old.get(k) != manifest[k]]
    if diff:
        raise CarveError(f"{mpath}: a different carve is there (differs in {', '.join(diff)}); "
                         f"carve into a new folder")
    for name, digest in manifest["outputs"].items():
        path = out / name
        if not path.exists() or _sha256(path.read_bytes()) != digest:
            raise CarveError(f"{path}: missing or changed since it was carved; carve into a new folder")

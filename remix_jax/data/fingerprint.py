"""Input fingerprints: which files a prepared dataset was built from, and whether they changed since.

A prepared copy stores, in its TFDS ``metadata.json`` (``builder.info.metadata["inputs"]``)::

    {"version": 1, "digest": "<sha256 of settings + file hashes>", "settings": {...},
     "files": {split: {"path", "size", "mtime_ns", "ctime_ns", "sha256"}}}

``settings`` are the builder options that change the stored records (builder version, fields, renames,
``skip_malformed``). A file counts as unchanged without reading it when its path, size, mtime and ctime are
the recorded ones (ctime cannot be set back by ``touch``/``cp -p``, so a file replaced by one of the same
size and mtime is still caught); otherwise its sha256 decides. Hashing reads the file once per preparation.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
from typing import Any

FORMAT_VERSION = 1
_STAT_KEYS = ("size", "mtime_ns", "ctime_ns")


def stat_record(path: str | os.PathLike) -> dict:
    """{"path" (absolute), "size", "mtime_ns", "ctime_ns"} of an existing file."""
    p = pathlib.Path(path).absolute()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict:
    """``stat_record`` plus the file's sha256 (stat taken before reading, so a write during it shows)."""
    rec = stat_record(path)
    rec["sha256"] = sha256_file(path)
    return rec


def same_stat(recorded: dict, current: dict) -> bool:
    """Same path, size, mtime and ctime: the file is taken as unchanged without hashing it."""
    return recorded.get("path") == current["path"] and all(recorded.get(k) == current[k] for k in _STAT_KEYS)


def make(files: dict[str, dict], settings: dict) -> dict:
    """The record of a preparation from ``files`` ({split: file_record}) with ``settings``."""
    key = json.dumps({"settings": settings, "sha256": {s: r["sha256"] for s, r in files.items()}}, sort_keys=True)
    return {
        "version": FORMAT_VERSION,
        "digest": hashlib.sha256(key.encode()).hexdigest(),
        "settings": settings,
        "files": files,
    }


def _time(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="milliseconds")


def describe_change(recorded: dict, current: dict) -> str:
    """What differs between two file records, e.g. 'size 812 -> 406 bytes, mtime ... -> ..., sha256 ...'."""
    parts = []
    if recorded.get("size") != current.get("size"):
        parts.append(f"size {recorded.get('size')} -> {current.get('size')} bytes")
    if recorded.get("mtime_ns") != current.get("mtime_ns"):
        parts.append(f"mtime {_time(recorded.get('mtime_ns', 0))} -> {_time(current.get('mtime_ns', 0))}")
    if "sha256" in current and recorded.get("sha256") != current["sha256"]:
        parts.append(f"sha256 {str(recorded.get('sha256'))[:12]} -> {current['sha256'][:12]}")
    if not parts:
        parts.append("replaced (same size and mtime, new ctime)")
    return ", ".join(parts)


@dataclasses.dataclass
class Copy:
    """A prepared copy: where it is, its input record (None: prepared by an older version), the number of
    malformed rows it skipped, and the builder reading it."""

    where: str
    inputs: dict | None
    skipped: int
    builder: Any = None

    def usable(self, settings: dict) -> bool:
        """Same settings; a copy made with skip_malformed=True serves a strict run only if it skipped nothing."""
        if self.inputs is None:
            return False
        had = dict(self.inputs["settings"])
        if had.pop("skip_malformed") and not settings["skip_malformed"] and self.skipped:
            return False
        return had == {k: v for k, v in settings.items() if k != "skip_malformed"}


def why_again(copies: list[Copy], current: dict, settings: dict) -> str:
    """Why no copy serves ``current`` ({split: file_record}) with ``settings``, told against the newest copy
    prepared from the same paths (else the newest copy)."""
    paths = {s: r["path"] for s, r in current.items()}
    same_paths = [c for c in copies if c.inputs and {s: r["path"] for s, r in c.inputs["files"].items()} == paths]
    ref = (same_paths or copies)[-1]
    if ref.inputs is None:
        return f"the copy in {ref.where} has no record of its input files (prepared by an older version)"
    if not same_paths:
        was = ", ".join(f"{s}={r['path']}" for s, r in ref.inputs["files"].items())
        return f"the copy in {ref.where} was prepared from other files ({was})"
    for split, rec in ref.inputs["files"].items():
        if rec["sha256"] != current[split]["sha256"]:
            change = describe_change(rec, current[split])
            return f"{rec['path']} changed since it was prepared into {ref.where} ({change})"
    had = ref.inputs["settings"]
    diff = {k: (had.get(k), v) for k, v in settings.items() if had.get(k) != v}
    if set(diff) == {"skip_malformed"}:
        return f"the copy in {ref.where} skipped {ref.skipped} malformed rows (skip_malformed=True)"
    return f"the copy in {ref.where} was prepared with other settings (then, now): {diff}"

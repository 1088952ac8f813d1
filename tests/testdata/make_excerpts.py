"""Rebuilds the excerpts in this folder from the full upstream files (see README.md here).

    python -m remix_jax.data --download=gsm8k,llm_adapters --out=DATA
    python tests/testdata/make_excerpts.py DATA

Checks every source file against the sha256 pinned in ``remix_jax/data/download.py``, writes each excerpt
(jsonl: the chosen lines byte for byte; JSON arrays: the chosen elements in upstream order, serialised as
upstream serialises the whole file, ``json.dumps(rows, indent=4)``), copies the licence files, and prints
the README's table rows.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import shutil
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from remix_jax.data.download import DATASETS  # noqa: E402


def options(row: dict) -> int:
    """Answer options of an LLM-Adapters multiple-choice row ("Answer1: ... Answer2: ...")."""
    return len(re.findall(r"\bAnswer\d+:", row["instruction"]))


def first(n: int):
    return lambda i, row: i < n, f"the first {n}"


def first_and_not_four(n: int):
    return (lambda i, row: i < n or options(row) != 4), f"the first {n}, then every later one with 3 or 5 options"


# file under DATA (and here) -> (dataset, keep(index, row) -> bool, how they are chosen)
EXCERPTS = {
    "gsm8k/train.jsonl": ("gsm8k", *first(300)),
    "gsm8k/test.jsonl": ("gsm8k", *first(250)),
    "llm_adapters/ARC-Challenge/train.json": ("llm_adapters", *first(100)),
    "llm_adapters/ARC-Challenge/test.json": ("llm_adapters", *first_and_not_four(200)),
    "llm_adapters/ARC-Easy/test.json": ("llm_adapters", *first_and_not_four(100)),
    "llm_adapters/boolq/test.json": ("llm_adapters", *first(100)),
    "llm_adapters/openbookqa/test.json": ("llm_adapters", *first(100)),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(src: pathlib.Path) -> None:
    rows_out = []
    for rel, (name, keep, how) in EXCERPTS.items():
        ds = DATASETS[name]
        f = next(f for f in ds.files if f"{name}/{f.dest}" == rel)
        raw = (src / rel).read_bytes()
        if sha256(raw) != f.sha256:
            sys.exit(f"{src / rel}: sha256 {sha256(raw)} is not the pinned {f.sha256}")
        if rel.endswith(".jsonl"):
            lines = raw.decode("utf-8").splitlines(keepends=True)
            kept = [i for i, line in enumerate(lines) if keep(i, json.loads(line))]
            out = "".join(lines[i] for i in kept).encode("utf-8")
            where = f"lines {kept[0] + 1}-{kept[-1] + 1}"
        else:
            rows = json.loads(raw)
            assert json.dumps(rows, indent=4).encode("utf-8") == raw, f"{rel}: not json.dumps(indent=4)"
            kept = [i for i, row in enumerate(rows) if keep(i, row)]
            out = json.dumps([rows[i] for i in kept], indent=4).encode("utf-8")
            k = next((j for j, i in enumerate(kept) if i != j), len(kept))  # kept[:k] == [0, ..., k-1]
            where = f"elements 0-{k - 1}" + "".join(f", {i}" for i in kept[k:])
        (HERE / rel).parent.mkdir(parents=True, exist_ok=True)
        (HERE / rel).write_bytes(out)
        rows_out.append(
            f"| `{rel}` | {ds.repo} @ `{ds.commit}` | `{f.path}` | {ds.licence.split(' (')[0]} | "
            f"{len(kept)} of {len(lines) if rel.endswith('.jsonl') else len(rows)}: {how} ({where}) | "
            f"`{sha256(out)}` |"
        )
    for name in ("gsm8k", "llm_adapters"):
        lic = DATASETS[name].licence_file
        data = (src / name / lic.dest).read_bytes()
        if sha256(data) != lic.sha256:
            sys.exit(f"{src / name / lic.dest}: sha256 {sha256(data)} is not the pinned {lic.sha256}")
        shutil.copyfile(src / name / lic.dest, HERE / name / lic.dest)
    print("\n".join(rows_out))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(pathlib.Path(sys.argv[1]))

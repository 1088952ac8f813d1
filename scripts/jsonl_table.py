"""Render benchmark JSON lines as a markdown table (so tables in docs/ come from the raw measurements).

    python scripts/jsonl_table.py docs/bench_data/moe_layer_h200.jsonl --columns d,k,r,dense_ms,gather_ms,base_ms
"""

from __future__ import annotations

import argparse
import json
import sys


def rows(path: str) -> list[dict]:
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{i}: not JSON ({e})") from e
    return out


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    return "" if v is None else str(v)


def table(records: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in records:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--columns", required=True, help="comma-separated keys")
    ap.add_argument("--where", default="", help="key=value filters, comma-separated")
    a = ap.parse_args(argv)
    recs = [r for f in a.files for r in rows(f)]
    for cond in filter(None, a.where.split(",")):
        k, v = cond.split("=", 1)
        recs = [r for r in recs if str(r.get(k)) == v]
    sys.stdout.write(table(recs, a.columns.split(",")) + "\n")


if __name__ == "__main__":
    main()

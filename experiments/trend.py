"""Whether a metric moves with a numeric setting of a sweep (k, M, a rank): per seed, the least-squares slope of the
metric against the setting over that seed's runs; then the mean slope over seeds with its 95% t-interval (the
seed-to-seed variation), and per seed the change from the smallest setting to the largest.

    python experiments/trend.py --results=experiments/results/qwen0.5b/k_sweep --x=adapter.top_k --y=gsm8k/accuracy

The slope is the test of "the metric grows with x" fixed before looking at the numbers: one number per seed, each
seed's runs sharing its data order and initialisation. The last-minus-first column is descriptive (picking the two
ends after the fact is a comparison chosen by the data). Accuracies are reported in points.

Reads the sweep's ``results.csv`` (complete runs only); runs of another variant (a column ``--where=KEY=VALUE``
selects one) are left out. A seed enters only with one run at every value of x that any seed has; a seed without
them is named and skipped; two runs with the same x and seed are an error. Writes ``--out`` (default
``<results>/trend_<y with / as _>.md``) and prints it.
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from remix_jax.sweep.results import ci95_half_width, mean_std  # noqa: E402


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("x takes one value: no slope")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def mean_interval(values: list[float]) -> tuple[float, float | None]:
    """(mean, 95% t-interval half-width over the values; None for one value)."""
    m, sd, n = mean_std(values)
    return m, (ci95_half_width(sd, n) if n > 1 else None)


def read_runs(path: pathlib.Path, x: str, y: str, where: dict[str, str]) -> dict[int, dict[float, float]]:
    """{seed: {x: y}} from a results.csv's complete rows that match ``where``."""
    if not path.is_file():
        raise SystemExit(f"{path}: not found (run the sweep's --report_only first)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows:
        missing = [k for k in (x, y, "seed", *where) if k not in rows[0]]
        if missing:
            raise SystemExit(f"{path}: no column {', '.join(missing)} (columns: {', '.join(rows[0])})")
    out: dict[int, dict[float, float]] = {}
    for r in rows:
        if r.get("status") != "complete" or any(r[k] != v for k, v in where.items()) or r[y] in ("", None):
            continue
        seed, xv, yv = int(r["seed"]), float(r[x]), float(r[y])
        if xv in out.setdefault(seed, {}):
            raise SystemExit(f"{path}: two complete runs with {x}={r[x]} and seed {seed} ({r['name']}); "
                             "select one with --where")
        out[seed][xv] = yv
    return out


def trend(runs: dict[int, dict[float, float]], scale: float = 1.0) -> dict:
    """Per-seed slopes and last-minus-first changes (times ``scale``) over the seeds that have every x."""
    grid = sorted({xv for per in runs.values() for xv in per})
    if len(grid) < 2:
        raise ValueError(f"need at least two values of x, found {grid}")
    used = {s: per for s, per in sorted(runs.items()) if set(per) == set(grid)}
    skipped = {s: sorted(set(grid) - set(per)) for s, per in sorted(runs.items()) if s not in used}
    if not used:
        raise ValueError(f"no seed has a run at every x of {grid}")
    seeds = []
    for s, per in used.items():
        ys = [scale * per[xv] for xv in grid]
        seeds.append({"seed": s, "values": ys, "slope": slope(grid, ys), "last_minus_first": ys[-1] - ys[0]})
    return {"grid": grid, "seeds": seeds, "skipped": skipped,
            "slope": mean_interval([r["slope"] for r in seeds]),
            "last_minus_first": mean_interval([r["last_minus_first"] for r in seeds])}


def markdown(t: dict, x: str, y: str, unit: str, digits: int = 2) -> str:
    """The report; values with ``digits`` decimals (2 for points, 4 for losses)."""

    def _fmt(v: float) -> str:
        return f"{v:+.{digits}f}"

    def _interval(m: float, h: float | None) -> str:
        return f"{_fmt(m)} [{_fmt(m - h)}, {_fmt(m + h)}]" if h is not None else f"{_fmt(m)} (one seed)"

    g = ", ".join(f"{v:g}" for v in t["grid"])
    lines = [f"# {y} against {x}", "",
             f"Per seed: {y} ({unit}) at {x} = {g}, the least-squares slope ({unit} per unit of {x}) and the last "
             f"minus the first. Row \"mean\": over seeds, with the 95% t-interval over seeds.", "",
             "| seed | " + " | ".join(f"{x} {v:g}" for v in t["grid"]) + " | slope | last - first |",
             "|---|" + "---|" * (len(t["grid"]) + 2)]
    for r in t["seeds"]:
        lines.append(f"| {r['seed']} | " + " | ".join(f"{v:.{digits}f}" for v in r["values"])
                     + f" | {_fmt(r['slope'])} | {_fmt(r['last_minus_first'])} |")
    n = len(t["seeds"])
    lines.append(f"| mean of {n} | " + " | ".join("" for _ in t["grid"])
                 + f" | {_interval(*t['slope'])} | {_interval(*t['last_minus_first'])} |")
    for s, miss in t["skipped"].items():
        lines.append(f"\nSeed {s} left out: no complete run at {x} = {', '.join(f'{v:g}' for v in miss)}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, type=pathlib.Path, help="a sweep's --out_dir (holds results.csv)")
    p.add_argument("--x", required=True, help="a numeric column of results.csv, e.g. adapter.top_k")
    p.add_argument("--y", default="gsm8k/accuracy", help="the metric column")
    p.add_argument("--where", action="append", default=[], help="KEY=VALUE: only rows with this column value")
    p.add_argument("--out", type=pathlib.Path, default=None)
    a = p.parse_args(argv)
    where = {}
    for w in a.where:
        if "=" not in w:
            p.error(f"--where={w!r}: expected KEY=VALUE")
        k, v = w.split("=", 1)
        where[k] = v
    runs = read_runs(a.results / "results.csv", a.x, a.y, where)
    points = a.y.endswith("accuracy")
    try:
        t = trend(runs, 100.0 if points else 1.0)
    except ValueError as e:
        raise SystemExit(f"{a.results / 'results.csv'}: {e}") from None
    text = markdown(t, a.x, a.y, "points" if points else "value", 2 if points else 4)
    out = a.out or a.results / f"trend_{a.y.replace('/', '_')}.md"
    out.write_text(text, encoding="utf-8")
    print(text, end="")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

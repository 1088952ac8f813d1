"""The results of a sweep's runs: each run's workdir read into one row (``collect_run``), and rows aggregated
over seeds (mean, sample standard deviation, 95% t interval) into tables (``aggregate``, ``markdown_table``,
``write_csv``).

What a run's workdir holds (written by ``python -m remix_jax.main``):
    metrics.jsonl        one JSON object per logged step: {"step", "loss", "routing/ess_softmax", ...};
                         per-block diagnostics as lists ("routing/ess_softmax_per_block": [L floats])
    eval/<task>.json     {"task", "accuracy", "heldout_loss"?, ...} (metrics at top level or under "metrics")
    run_complete.json    {"step", "wall_s", "compile_s"}: written last; only complete runs enter the aggregates
    params.json          {"trainable", "active"}: parameter counts, written when training starts (absent from runs
                         that predate it: ``python -m remix_jax.sweep --params_only`` back-fills them)

Columns of results.csv, one row per run: name, status (complete | incomplete | missing), the run's params
(grid columns, variant labels, seed), metrics ("<task>/accuracy", "<task>/heldout_loss", ...,
"train/final_loss", "routing/ess_softmax_final", "routing/ess_applied_final", "train/tokens_per_s",
"wall_s", "compile_s"), "params/trainable" and "params/active" (when params.json exists), workdir and the exact
command.

The tables give each metric as "mean ± std (±h, n=N)": the sample standard deviation over the N seeds and the
half-width h of the 95% Student t interval of the mean, t_{0.975, N-1} std / sqrt(N) (one seed: the value alone).
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

ESS_KEYS = ("routing/ess_softmax", "routing/ess_applied")
PARAMS_FILE = "params.json"
PARAM_COLUMNS = ("params/trainable", "params/active")  # from params.json's "trainable" and "active"
_SKIP_EVAL_FIELDS = {"step", "num_correct", "num_total", "num_examples", "num_predictions"}


class ReportError(ValueError):
    """Unreadable run output; the message names the file (and line)."""


# ------------------------------------------------------------------ reading one run


def read_jsonl(path: str | os.PathLike, allow_partial_last: bool = False) -> list[dict]:
    """Rows of a JSON-lines file; a malformed line raises ReportError naming file:line (a malformed last
    line is dropped when ``allow_partial_last``, e.g. a run still writing)."""
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if allow_partial_last and i == len(lines) - 1:
                break
            raise ReportError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise ReportError(f"{path}:{i + 1}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _read_json(path: pathlib.Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return data


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def eval_metrics(workdir: str | os.PathLike) -> dict[str, float]:
    """{"<task>/<metric>": value} from every WORKDIR/eval/<task>.json (numeric fields at top level and
    under "metrics"; counts are left out)."""
    out = {}
    for path in sorted((pathlib.Path(workdir) / "eval").glob("*.json")):
        rec = _read_json(path)
        task = rec.get("task") or path.stem
        fields = {**(rec.get("metrics") or {}), **{k: v for k, v in rec.items() if k != "metrics"}}
        for k, v in fields.items():
            if _is_number(v) and k not in _SKIP_EVAL_FIELDS:
                out[f"{task}/{k}"] = float(v)
    return out


def _select_block(value: Any, block: str | int) -> float | None:
    if _is_number(value):
        return float(value)
    if isinstance(value, list) and value and all(_is_number(v) for v in value):
        if block == "last":
            return float(value[-1])
        if block == "mean":
            return float(sum(value) / len(value))
        return float(value[int(block)])
    return None


def curve(rows: Sequence[Mapping], key: str, block: str | int = "mean") -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over logged steps. With ``key + "_per_block"`` lists present, ``block``
    picks a block ("last", an index) or the mean over blocks; otherwise the scalar ``key`` is used."""
    steps, values = [], []
    for row in rows:
        v = None
        if block != "mean" and f"{key}_per_block" in row:
            v = _select_block(row[f"{key}_per_block"], block)
        if v is None and key in row:
            v = _select_block(row[key], "mean" if block == "mean" else block)
        if v is not None and "step" in row:
            steps.append(int(row["step"]))
            values.append(v)
    return steps, values


def collect_run(run) -> dict:
    """One results row for a ``remix_jax.sweep.Run`` (its workdir may be missing or unfinished)."""
    wd = pathlib.Path(run.workdir)
    complete = (wd / "run_complete.json").is_file()
    row: dict[str, Any] = {"name": run.name,
                           "status": "complete" if complete else ("incomplete" if wd.exists() else "missing"),
                           **run.params}
    if complete:
        done = _read_json(wd / "run_complete.json")
        for key in ("wall_s", "compile_s"):  # compile_s: runs written before it existed have none
            if _is_number(done.get(key)):
                row[key] = float(done[key])
    if (wd / "metrics.jsonl").is_file():
        rows = read_jsonl(wd / "metrics.jsonl", allow_partial_last=not complete)
        losses = [r["loss"] for r in rows if _is_number(r.get("loss"))]
        if losses:
            row["train/final_loss"] = float(losses[-1])
        tps = [r["tokens_per_s"] for r in rows if _is_number(r.get("tokens_per_s"))]
        if tps:
            row["train/tokens_per_s"] = float(sum(tps) / len(tps))
        for key in ESS_KEYS + ("routing/entropy",):
            _, vals = curve(rows, key)
            if vals:
                row[f"{key}_final"] = vals[-1]
        # evaluation logged during training, used when no eval/<task>.json holds the same metric
        for r in rows:
            for k, v in r.items():
                if k.startswith("eval/") and _is_number(v):
                    row[k[len("eval/"):]] = float(v)
    if (wd / "eval").is_dir():
        row.update(eval_metrics(wd))
    if (wd / PARAMS_FILE).is_file():
        row.update(param_counts(wd / PARAMS_FILE))
    row["workdir"] = str(wd)
    return row


def param_counts(path: pathlib.Path) -> dict[str, int]:
    """{"params/trainable": int, "params/active": int} of a run's params.json."""
    data = _read_json(path)
    out = {}
    for column in PARAM_COLUMNS:
        key = column.split("/", 1)[1]
        v = data.get(key)
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise ReportError(f"{path}: key {key!r} must be a count (an integer >= 0), got {v!r}")
        out[column] = v
    return out


# ------------------------------------------------------------------ aggregation


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof=1; nan for one value), count) of finite values."""
    vals = [float(v) for v in values if _is_number(v) and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else math.nan
    return mean, std, n


def t_quantile_975(df: int) -> float:
    """Student's t quantile t_{0.975, df}: the 95% two-sided interval's multiplier for ``df`` degrees of freedom."""
    if not (isinstance(df, int) and df >= 1):
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df!r}")
    from scipy.stats import t  # a dependency of jax; imported here, as the report is the only user

    return float(t.ppf(0.975, df))


def ci95_half_width(std: float, n: int) -> float:
    """Half-width of the 95% t interval of a mean of ``n`` values with sample std ``std``; nan for n < 2."""
    return t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else math.nan


def run_curve(row: Mapping, key: str, block: str | int = "mean") -> dict[int, float]:
    """{step: value} of ``key`` (``curve``'s block choice) in the metrics.jsonl of a results row's workdir; {} when
    the run logged none. A metric logged again at a step (a resumed run) keeps its last value."""
    path = pathlib.Path(row["workdir"]) / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = read_jsonl(path, allow_partial_last=row.get("status") != "complete")
    return dict(zip(*curve(rows, key, block), strict=True))


def curve_table(rows: Sequence[Mapping], key: str, group_by: Sequence[str], steps: Sequence[int] | None = None,
                block: str | int = "mean") -> str:
    """A markdown table of ``key`` over training: one row per group of complete runs (``aggregate``), one column
    per step (``steps``, else every step that all those runs logged), each cell mean ± std over the group's seeds
    that logged the step ("(n=1)" after a value only one of several seeds logged; "-" where none did)."""
    complete = [r for r in rows if r.get("status", "complete") == "complete"]
    curves = [run_curve(r, key, block) for r in complete]
    if steps is None:
        logged = [set(c) for c in curves if c]
        steps = sorted(set.intersection(*logged)) if logged else []
    columns = [f"{key}@{s}" for s in steps]
    widened = [{**r, **{col: c.get(s) for col, s in zip(columns, steps, strict=True)}}
               for r, c in zip(complete, curves, strict=True)]
    groups = aggregate(widened, group_by, columns)
    head = [*group_by, "seeds", *[f"step {s}" for s in steps]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = ["-" if g.get(c) is None else str(g.get(c)) for c in group_by] + [str(g["num_seeds"])]
        for col in columns:  # a single value of a group of several seeds says so
            n = g[col][2]
            cells.append(format_cell(key, g[col]) + (" (n=1)" if n == 1 < g["num_seeds"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def aggregate(rows: Sequence[Mapping], group_by: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Group complete rows by ``group_by`` (first-seen order) and reduce each metric over the group:
    [{**group values, "num_seeds": n, metric: (mean, std, count), ..., "params/trainable": sorted distinct
    counts of the group (one value when its runs share the architecture), "params/active": the same}]."""
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        if row.get("status", "complete") != "complete":
            continue
        key = tuple(_hashable(row.get(c)) for c in group_by)
        groups.setdefault(key, []).append(row)
    out = []
    for members in groups.values():
        entry = {c: members[0].get(c) for c in group_by}
        entry["num_seeds"] = len(members)
        for m in metrics:
            entry[m] = mean_std([r.get(m) for r in members])
        for c in PARAM_COLUMNS:
            entry[c] = tuple(sorted({r[c] for r in members if _is_number(r.get(c))}))
        out.append(entry)
    return out


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def param_columns(runs: Sequence) -> list[str]:
    cols: list[str] = []
    for run in runs:
        for c in run.params:
            if c not in cols:
                cols.append(c)
    return cols


def default_metric_columns(rows: Sequence[Mapping]) -> list[str]:
    present = {k for r in rows for k in r}
    tasks = sorted(k for k in present if k.endswith("/accuracy") or k.endswith("/heldout_loss"))
    extra = ["train/final_loss", "routing/ess_softmax_final", "routing/ess_applied_final"]
    return tasks + [k for k in extra if k in present]


def is_accuracy(metric: str) -> bool:
    return metric.endswith("accuracy") or "pass@" in metric


def format_cell(metric: str, stats: tuple[float, float, int]) -> str:
    """"mean ± std (±h, n=N)" with h the 95% t-interval half-width (accuracies in %, 2 decimals; others 4
    significant digits); the mean alone for one value; "-" when absent."""
    mean, std, n = stats
    if n == 0:
        return "-"
    scale, fmt = (100.0, "{:.2f}") if is_accuracy(metric) else (1.0, "{:.4g}")
    s = fmt.format(mean * scale)
    if n < 2:
        return s
    half = ci95_half_width(std, n)
    return f"{s} ± {fmt.format(std * scale)} (±{fmt.format(half * scale)}, n={n})"


def format_count(counts: Sequence[int]) -> str:
    """A parameter count as 1.23M / 45.6K / 789 (a range "a-b" when a group's runs differ; "-" when absent)."""
    if not counts:
        return "-"

    def one(v: int) -> str:  # 3 significant digits in the largest unit that keeps them below 1000
        if v < 1000:
            return str(v)
        for unit, size in (("K", 10**3), ("M", 10**6)):
            text = f"{v / size:#.3g}".rstrip(".")  # "#" keeps trailing zeros (4.70M); drop the bare point of "123."
            if float(text) < 1000:
                return text + unit
        return f"{v / 10**9:#.3g}".rstrip(".") + "B"

    return one(counts[0]) if len(counts) == 1 else f"{one(min(counts))}-{one(max(counts))}"


def markdown_table(groups: Sequence[Mapping], group_by: Sequence[str], metrics: Sequence[str]) -> str:
    """One row per group: its values, the seeds, the parameter counts (when any group has them), the metrics."""
    counts = [c for c in PARAM_COLUMNS if c not in metrics and any(g.get(c) for g in groups)]
    head = [*group_by, "seeds", *counts, *[m + (" (%)" if is_accuracy(m) else "") for m in metrics]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = ["-" if g.get(c) is None else str(g.get(c)) for c in group_by] + [str(g["num_seeds"])]
        cells += [format_count(g.get(c, ())) for c in counts]
        cells += [format_cell(m, g[m]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[Mapping], path: str | os.PathLike, first: Sequence[str] = ()) -> None:
    columns = list(first)
    for r in rows:
        columns += [k for k in r if k not in columns]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})

"""Aggregate the runs of a sweep: results.csv, results.md (mean and std over seeds) and PNG plots.

What a run's workdir holds (written by ``remix_jax.main``):
    metrics.jsonl        one JSON object per logged step: {"step", "loss", "routing/ess_softmax", ...};
                         per-block diagnostics as lists ("routing/ess_softmax_per_block": [L floats])
    eval/<task>.json     {"task", "accuracy", "heldout_loss"?, ...} (metrics at top level or under "metrics")
    run_complete.json    {"step", "wall_s"}: written last; only complete runs enter the aggregates

Columns of results.csv, one row per run: name, status (complete | incomplete | missing), the run's params
(grid columns, variant labels, seed), metrics ("<task>/accuracy", "<task>/heldout_loss", ...,
"train/final_loss", "routing/ess_softmax_final", "routing/ess_applied_final", "train/tokens_per_s",
"wall_s"), workdir and the exact command.

The ``report`` field of a sweep definition chooses tables and plots:
    {"tables": [{"title": str, "rows": [param columns] (default: every param but seed),
                 "columns": [metric columns] (default: accuracies, held-out losses, final loss and ESS)}],
     "plots": [{"kind": "line", "x": column, "y": metric, "series": column | None, "file": "a.png",
                "title": str, "xlog": bool},            # e.g. accuracy against k or M, error bars = std
               {"kind": "bar", "x": column, "y": metric, "series": column | None, "file", "title"},
               {"kind": "ess", "series": column, "block": "last" | "mean" | int, "file", "title"},
               {"kind": "ess_blocks", "series": column, "metric": "routing/ess_softmax", "file", "title"}]}
Accuracies are fractions in results.csv and percentages in results.md and on plot axes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

ESS_KEYS = ("routing/ess_softmax", "routing/ess_applied")
_ESS_TITLES = {"routing/ess_softmax": "softmax over all n", "routing/ess_applied": "applied weights"}
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
        if _is_number(done.get("wall_s")):
            row["wall_s"] = float(done["wall_s"])
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
    row["workdir"] = str(wd)
    return row


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


def aggregate(rows: Sequence[Mapping], group_by: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Group complete rows by ``group_by`` (first-seen order) and reduce each metric over the group:
    [{**group values, "num_seeds": n, metric: (mean, std, count), ...}]."""
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


def _is_accuracy(metric: str) -> bool:
    return metric.endswith("accuracy") or "pass@" in metric


def format_cell(metric: str, stats: tuple[float, float, int]) -> str:
    """"mean ± std" (accuracies in %, 2 decimals; others 4 significant digits); "-" when absent."""
    mean, std, n = stats
    if n == 0:
        return "-"
    scale, fmt = (100.0, "{:.2f}") if _is_accuracy(metric) else (1.0, "{:.4g}")
    s = fmt.format(mean * scale)
    return s + (" ± " + fmt.format(std * scale) if n > 1 else "")


def markdown_table(groups: Sequence[Mapping], group_by: Sequence[str], metrics: Sequence[str]) -> str:
    head = [*group_by, "seeds", *[m + (" (%)" if _is_accuracy(m) else "") for m in metrics]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = ["-" if g.get(c) is None else str(g.get(c)) for c in group_by] + [str(g["num_seeds"])]
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


# ------------------------------------------------------------------ plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series_groups(rows, series: str | None, x: str, y: str):
    """{series value: [(x, mean, std)] sorted by x} over complete rows."""
    out: dict[Any, list] = {}
    group_by = [c for c in (series, x) if c]
    for g in aggregate(rows, group_by, [y]):
        mean, std, n = g[y]
        if n:
            out.setdefault(g.get(series) if series else y, []).append((g[x], mean, std if n > 1 else 0.0))
    return out


def _plot_data(rows, spec: Mapping):
    """(x, y, series, scale, groups) of a plot spec: scale 100 for accuracies (plotted in %), groups from
    ``_series_groups``."""
    x, y, series = spec["x"], spec["y"], spec.get("series")
    return x, y, series, 100.0 if _is_accuracy(y) else 1.0, _series_groups(rows, series, x, y)


def plot_line(rows, spec: Mapping, path: pathlib.Path) -> bool:
    """y (mean ± std over seeds) against a numeric column x, one line per series value (False: no data)."""
    x, y, series, scale, data = _plot_data(rows, spec)
    if not data:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, pts in data.items():
        pts.sort(key=lambda p: p[0])
        ax.errorbar([p[0] for p in pts], [scale * p[1] for p in pts], yerr=[scale * p[2] for p in pts],
                    marker="o", capsize=3, label=str(label))
    if spec.get("xlog"):
        ax.set_xscale("log", base=2)
    ax.set_xlabel(spec.get("xlabel", x))
    return _finish(plt, fig, ax, spec, f"{y} vs {x}", y + (" (%)" if scale == 100.0 else ""), series, path,
                   grid_axis="both")


def plot_bar(rows, spec: Mapping, path: pathlib.Path) -> bool:
    """y (mean ± std over seeds) per category x, grouped bars per series value (False: no data)."""
    x, y, series, scale, data = _plot_data(rows, spec)
    if not data:
        return False
    plt = _pyplot()
    cats: list = []
    for pts in data.values():
        cats += [p[0] for p in pts if p[0] not in cats]
    width = 0.8 / max(1, len(data))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(cats) + 2), 3.6))
    for i, (label, pts) in enumerate(data.items()):
        by_cat = {p[0]: p for p in pts}
        xs = [j + i * width for j, c in enumerate(cats) if c in by_cat]
        ax.bar(xs, [scale * by_cat[c][1] for c in cats if c in by_cat], width,
               yerr=[scale * by_cat[c][2] for c in cats if c in by_cat], capsize=3, label=str(label))
    ax.set_xticks([j + width * (len(data) - 1) / 2 for j in range(len(cats))], [str(c) for c in cats],
                  rotation=20)
    return _finish(plt, fig, ax, spec, y, y + (" (%)" if scale == 100.0 else ""), series, path, grid_axis="y")


def _finish(plt, fig, ax, spec: Mapping, title: str, ylabel: str, series, path: pathlib.Path,
            grid_axis: str) -> bool:
    """Title, y label (the spec's own when given), legend, grid; save to path and close. Returns True."""
    ax.set_ylabel(spec.get("ylabel", ylabel))
    ax.set_title(spec.get("title", title))
    if series:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis=grid_axis)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _mean_curve(workdirs: Sequence[str], key: str, block) -> tuple[list[int], list[float]]:
    """Mean over runs of a metric curve, at the steps every run logged."""
    curves = []
    for wd in workdirs:
        path = pathlib.Path(wd) / "metrics.jsonl"
        if path.is_file():
            steps, vals = curve(read_jsonl(path, allow_partial_last=True), key, block)
            if steps:
                curves.append(dict(zip(steps, vals, strict=True)))
    if not curves:
        return [], []
    common = sorted(set.intersection(*(set(c) for c in curves)))
    return common, [sum(c[s] for c in curves) / len(curves) for s in common]


def _by_series(rows, series: str | None) -> dict[Any, list[str]]:
    out: dict[Any, list[str]] = {}
    for r in rows:
        if r.get("status") == "complete":
            out.setdefault(r.get(series) if series else "all", []).append(r["workdir"])
    return out


def plot_ess(rows, spec: Mapping, path: pathlib.Path) -> bool:
    """ESS over training steps per series (mean over seeds): the full softmax and the applied weights
    (paper Figure 3). Returns False when no run logged ESS."""
    plt = _pyplot()
    block = spec.get("block", "last")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    drew = False
    for ax, key in zip(axes, ESS_KEYS, strict=True):
        for label, wds in _by_series(rows, spec.get("series")).items():
            steps, vals = _mean_curve(wds, key, block)
            if steps:
                ax.plot(steps, vals, label=str(label))
                drew = True
        ax.set_title(_ESS_TITLES[key])
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"ESS (block: {block})")
    if drew:
        axes[0].legend(fontsize=8)
    fig.suptitle(spec.get("title", "Effective support size over training"))
    fig.tight_layout()
    if drew:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drew


def plot_ess_blocks(rows, spec: Mapping, path: pathlib.Path) -> bool:
    """One panel per series: the ESS of every block (router) over training, mean over seeds."""
    plt = _pyplot()
    key = spec.get("metric", "routing/ess_softmax")
    series = _by_series(rows, spec.get("series"))
    per_series = {}
    for label, wds in series.items():
        rows0 = read_jsonl(pathlib.Path(wds[0]) / "metrics.jsonl", allow_partial_last=True) \
            if (pathlib.Path(wds[0]) / "metrics.jsonl").is_file() else []
        lists = [r[f"{key}_per_block"] for r in rows0 if isinstance(r.get(f"{key}_per_block"), list)]
        if lists:
            per_series[label] = [_mean_curve(wds, key, b) for b in range(len(lists[0]))]
    if not per_series:
        return False
    fig, axes = plt.subplots(1, len(per_series), figsize=(4 * len(per_series), 3.4), squeeze=False,
                             sharey=True)
    for ax, (label, curves) in zip(axes[0], per_series.items(), strict=True):
        for b, (steps, vals) in enumerate(curves):
            ax.plot(steps, vals, label=f"block {b}", lw=1)
        ax.set_title(str(label))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(key)
    if len(curves) <= 12:
        axes[0][-1].legend(fontsize=6)
    fig.suptitle(spec.get("title", f"{key} per block"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


PLOTTERS = {"line": plot_line, "bar": plot_bar, "ess": plot_ess, "ess_blocks": plot_ess_blocks}


# ------------------------------------------------------------------ the report


def write_report(sweep, runs: Sequence | None = None) -> list[pathlib.Path]:
    """Write <out_dir>/results.csv, results.md and the plots of ``sweep.report``; returns the paths."""
    runs = list(sweep.runs if runs is None else runs)
    out = pathlib.Path(sweep.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [collect_run(r) for r in runs]
    for r, run in zip(rows, runs, strict=True):
        r["command"] = shlex.join(run.command(sweep.runner))
    params = param_columns(runs)
    written = []
    csv_path = out / "results.csv"
    write_csv(rows, csv_path, first=["name", "status", *params])
    written.append(csv_path)

    report = dict(sweep.report)
    unknown = set(report) - {"tables", "plots"}
    if unknown:
        raise ReportError(f"{sweep.path}: report has unknown field(s) {sorted(unknown)}; "
                          "known: tables, plots")
    default_rows = [c for c in params if c != "seed"]
    metrics = default_metric_columns(rows)
    tables = report.get("tables") or [{"title": "Results"}]
    md = [f"# {sweep.name}", "",
          f"Sweep `{sweep.path}`; config `{sweep.config}`.",
          "Mean ± sample standard deviation over seeds, complete runs only.",
          f"Reproduce: `python -m remix_jax.sweep --sweep={sweep.path}` (per-run commands: results.csv).", ""]
    for t in tables:
        group_by = list(t.get("rows", default_rows))
        cols = list(t.get("columns", metrics))
        md += [f"## {t.get('title', 'Results')}", "", markdown_table(aggregate(rows, group_by, cols),
                                                                     group_by, cols), ""]
    n_done = sum(r["status"] == "complete" for r in rows)
    md.append(f"{n_done} of {len(rows)} runs complete.")
    unfinished = [r for r in rows if r["status"] != "complete"]
    if unfinished:
        md += ["", "Not complete (left out of the tables):", ""]
        md += [f"- {r['name']}: {r['status']}" for r in unfinished]

    for i, spec in enumerate(report.get("plots", [])):
        kind = spec.get("kind")
        if kind not in PLOTTERS:
            raise ReportError(f"{sweep.path}: report.plots[{i}]: unknown kind {kind!r}; "
                              f"known: {', '.join(PLOTTERS)}")
        for field in {"line": ("x", "y"), "bar": ("x", "y")}.get(kind, ()):
            if field not in spec:
                raise ReportError(f"{sweep.path}: report.plots[{i}] ({kind}): missing '{field}'")
        path = out / spec.get("file", f"{kind}_{i}.png")
        drew = PLOTTERS[kind](rows, spec, path)
        if drew is False:
            md.append(f"\n(plot {path.name}: no data)")
        else:
            written.append(path)
            md += ["", f"![{spec.get('title', path.stem)}]({path.name})"]
    md_path = out / "results.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    written.insert(1, md_path)
    return written

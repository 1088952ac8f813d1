"""A sweep's report: results.csv, results.md (mean, std and 95% t interval over seeds; parameter counts) and PNG
plots (``write_report``; the rows come from ``results``, the plots from ``plots``).

The ``report`` field of a sweep definition chooses tables and plots:
    {"tables": [{"title": str, "rows": [param columns] (default: every param but seed),
                 "columns": [metric columns] (default: accuracies, held-out losses, final loss and ESS)}],
     "curves": [{"title": str, "metric": key of metrics.jsonl ("eval/heldout_loss", "routing/max_load", ...),
                 "rows": [param columns] (default as tables), "steps": [int] (default: every step all runs logged),
                 "block": "mean" | "last" | int (per-block metrics; default "mean")}],   # a metric over training
     "plots": [{"kind": "line", "x": column, "y": metric, "series": column | None, "file": "a.png",
                "title": str, "xlog": bool},            # e.g. accuracy against k or M, error bars = std
               {"kind": "bar", "x": column, "y": metric, "series": column | None, "file", "title"},
               {"kind": "ess", "series": column, "block": "last" | "mean" | int, "file", "title"},
               {"kind": "ess_blocks", "series": column, "metric": "routing/ess_softmax", "file", "title"},
               {"kind": "curve", "y": key of metrics.jsonl, "series": column, "block", "file", "title", "ylabel"}]}
Accuracies are fractions in results.csv and percentages in results.md and on plot axes.
"""

from __future__ import annotations

import pathlib
import shlex
from collections.abc import Sequence

from remix_jax.sweep.plots import PLOTTERS
from remix_jax.sweep.results import (
    PARAM_COLUMNS,
    ReportError,
    aggregate,
    collect_run,
    curve_table,
    default_metric_columns,
    markdown_table,
    param_columns,
    write_csv,
)


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
    unknown = set(report) - {"tables", "curves", "plots"}
    if unknown:
        raise ReportError(f"{sweep.path}: report has unknown field(s) {sorted(unknown)}; "
                          "known: tables, curves, plots")
    default_rows = [c for c in params if c != "seed"]
    metrics = default_metric_columns(rows)
    tables = report.get("tables") or [{"title": "Results"}]
    md = [f"# {sweep.name}", "",
          f"Sweep `{sweep.path}`; config `{sweep.config}`.",
          "Mean ± sample std over seeds; 95% t-interval half-width in brackets (t_{0.975, n-1} std / sqrt(n), "
          "n seeds); complete runs only.",
          *(["params/trainable: the adapter and router parameters trained; params/active: those one token uses "
             "(the router and k of the n experts of top-k mixtures, all of them otherwise)."]
            if any(c in r for r in rows for c in PARAM_COLUMNS) else []),
          f"Reproduce: `python -m remix_jax.sweep --sweep={sweep.path}` (per-run commands: results.csv).", ""]
    for t in tables:
        group_by = list(t.get("rows", default_rows))
        cols = list(t.get("columns", metrics))
        md += [f"## {t.get('title', 'Results')}", "", markdown_table(aggregate(rows, group_by, cols),
                                                                     group_by, cols), ""]
    for i, c in enumerate(report.get("curves", [])):
        if "metric" not in c:
            raise ReportError(f"{sweep.path}: report.curves[{i}]: missing 'metric'")
        md += [f"## {c.get('title', c['metric'] + ' over training')}", "",
               curve_table(rows, c["metric"], list(c.get("rows", default_rows)), c.get("steps"),
                           c.get("block", "mean")), ""]
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
        for field in {"line": ("x", "y"), "bar": ("x", "y"), "curve": ("y",)}.get(kind, ()):
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

"""The plots of a sweep's report (PNG, matplotlib imported only when one is drawn): ``PLOTTERS`` maps a plot
spec's kind (line, bar, ess, ess_blocks, curve; ``report``'s docstring) to the function drawing it from the rows of
``results.collect_run``. Accuracies are plotted in percent.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from remix_jax.sweep.results import ESS_KEYS, aggregate, curve, is_accuracy, read_jsonl

ESS_TITLES = {"routing/ess_softmax": "softmax over all n", "routing/ess_applied": "applied weights"}


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
    return x, y, series, 100.0 if is_accuracy(y) else 1.0, _series_groups(rows, series, x, y)


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
        ax.set_title(ESS_TITLES[key])
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


def plot_curve(rows, spec: Mapping, path: pathlib.Path) -> bool:
    """A metric of metrics.jsonl (spec "y", e.g. "eval/heldout_loss") over training steps, one line per series (mean
    over seeds at the steps all of them logged; "block" as for ess). Returns False when no run logged it."""
    key, block = spec["y"], spec.get("block", "mean")
    lines = {label: _mean_curve(wds, key, block) for label, wds in _by_series(rows, spec.get("series")).items()}
    lines = {label: c for label, c in lines.items() if c[0]}
    if not lines:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, (steps, vals) in lines.items():
        ax.plot(steps, vals, marker="o" if len(steps) <= 30 else None, ms=3, label=str(label))
    ax.set_xlabel("step")
    return _finish(plt, fig, ax, spec, f"{key} over training", key, spec.get("series"), path, grid_axis="both")


PLOTTERS = {"line": plot_line, "bar": plot_bar, "ess": plot_ess, "ess_blocks": plot_ess_blocks, "curve": plot_curve}

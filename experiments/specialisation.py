"""Routing specialisation per task in the multi-task sweep (experiments/multitask.py): which experts each task's
tokens go to, block by block, and how much the four tasks differ in that.

    python experiments/specialisation.py --results=experiments/results/multitask [--tasks=arc_c,arc_e,boolq,obqa]
        [--top=K] [--runs=DIR]

Reads every run folder ``<method>__seed=<s>`` under ``--results``/runs (``--runs`` names another folder) and, from
each task's ``eval/<task>.json`` (the run's final evaluation), ``routing_stats.load`` [L][n]: per block, each
expert's share of the task's scoring forward passes, a mean over the task's tokens (question and options, each
context token once). For top-k routers (ReMix, MixLoRA) it is the fraction of tokens whose k selected experts
include the expert (a block's loads sum to k); for the dense HydraLoRA router, the mean softmax weight (sum 1).
Each block's vector is divided by its sum: the distribution of routing mass over the n experts (for top-k, the
fraction of the k selection slots per token each expert fills). A load vector that is negative, all zero or not
finite is an error naming the file and the block.

Measures, per run:
    JS_l(a, b)      Jensen-Shannon divergence (base 2, in [0, 1]) between tasks a and b's distributions at block l:
                    0 when the two tasks route identically, 1 when they use disjoint experts.
    JS_l            its mean over the task pairs (6 for four tasks).
    specialisation  the mean over blocks of JS_l: one number per run.
    top-k           each task's k most loaded experts per block (k = the run's adapter.top_k, or --top).
Per method, the mean ± sample std over seeds. JS does not depend on how the experts are numbered, so it averages
over seeds; the loads do not: each seed's routers and adapters start from their own initialisation, and expert 3 of
seed 0 has nothing to do with expert 3 of seed 1, so the heatmaps (``specialisation_<method>.png``: blocks x experts,
one panel per task, one row of panels per seed) and the top-k lists are per seed, not averaged over seeds.

"At initialisation": the same measure on the evaluation before training (``eval_history/step_0/eval/``, written
with eval.at_start), where it exists: how far the tasks' inputs alone separate the routing of the untrained routers.
It is not an estimate of evaluation noise.

"Within task (halves)": the noise reference. The evaluation also records the load over the even- and the
odd-numbered scoring batches of a task apart (``routing_stats.load_halves``: two disjoint halves of its questions);
the JS between a task's two halves, averaged over blocks and then over tasks, is what two samples of one task give.
Each half holds half the task's tokens, so for sampling noise it is about twice the chance divergence of two whole
tasks: a conservative reference, and a specialisation at or below it shows nothing beyond chance. Evaluations written
before the halves were recorded have none; the report then says that no noise reference is available.

Runs whose jsons hold no routing statistics (LoRA, or eval.routing_stats off) are listed as "no routing"; runs
missing a task's json as incomplete. Writes ``<results>/specialisation.md`` and the PNGs, and prints the summary and
per-block tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from remix_jax.sweep.results import mean_std  # noqa: E402

TASKS = ("arc_c", "arc_e", "boolq", "obqa")  # experiments/common.py's MULTITASK_TASKS
RUN_NAME = re.compile(r"^(?P<method>.+)__seed=(?P<seed>\d+)$")
INIT_DIR = pathlib.Path("eval_history") / "step_0" / "eval"  # the evaluation before training (eval.at_start)


class SpecialisationError(ValueError):
    """Unusable evaluation output; the message names the file (and block)."""


# ------------------------------------------------------------------ measures


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence in bits of two distributions p, q [n] (each summing to 1): in [0, 1]."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.shape != q.shape:
        raise ValueError(f"distributions of shapes {p.shape} and {q.shape}")
    m = 0.5 * (p + q)

    def kl(a):  # KL(a || m) in bits; 0 log 0 = 0, and m > 0 wherever a > 0
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return min(1.0, max(0.0, 0.5 * kl(p) + 0.5 * kl(q)))  # clipped: float rounding only


def normalised_load(load, where: str) -> np.ndarray:
    """``routing_stats.load`` [L][n] -> float64 [L, n], each block divided by its sum. ``where`` (the file) names
    the problem: not a rectangular list of numbers, or a block that is not finite, has a negative entry or is all
    zero."""
    try:
        a = np.asarray(load, np.float64)
    except (TypeError, ValueError):
        raise SpecialisationError(f"{where}: routing_stats.load is not an [L][n] list of numbers") from None
    if a.ndim != 2 or 0 in a.shape:
        raise SpecialisationError(f"{where}: routing_stats.load has shape {a.shape}, expected [blocks, experts]")
    for b, row in enumerate(a):
        if not np.all(np.isfinite(row)):
            raise SpecialisationError(f"{where}: block {b}: load {row.tolist()} is not finite")
        if np.any(row < 0):
            raise SpecialisationError(f"{where}: block {b}: load {row.tolist()} has a negative entry")
        if not np.any(row > 0):
            raise SpecialisationError(f"{where}: block {b}: load is all zero (no token routed)")
    return a / a.sum(axis=1, keepdims=True)


def top_experts(p: Sequence[float], k: int) -> list[int]:
    """The k experts with the largest share, largest first (ties to the lower index)."""
    return [int(i) for i in np.argsort(-np.asarray(p), kind="stable")[:k]]


def block_js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """JS per block of two normalised loads [L, n]: [L]."""
    return np.array([js_divergence(a, b) for a, b in zip(p, q, strict=True)])


def run_measures(loads: Mapping[str, np.ndarray], top: int,
                 halves: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """Measures of one run from its tasks' normalised loads {task: [L, n]} (same shape):
    {"pairs": {(a, b): [L] JS per block}, "per_block": [L] mean over pairs, "specialisation": mean over blocks,
    "top": {task: [[k experts] per block]}}, and with ``halves`` ({task: its two halves' normalised loads})
    "within": {task: mean over blocks of the JS between its halves} and "within_mean" (mean over tasks)."""
    tasks = list(loads)
    first = loads[tasks[0]]
    pairs = {(a, b): block_js(loads[a], loads[b]) for a, b in itertools.combinations(tasks, 2)}
    per_block = np.mean(np.stack(list(pairs.values())), axis=0) if pairs else np.zeros(first.shape[0])
    out = {"pairs": pairs, "per_block": per_block, "specialisation": float(np.mean(per_block)),
           "top": {t: [top_experts(p, top) for p in loads[t]] for t in tasks}}
    if halves:
        out["within"] = {t: float(np.mean(block_js(*halves[t]))) for t in tasks}
        out["within_mean"] = float(np.mean(list(out["within"].values())))
    return out


# ------------------------------------------------------------------ reading runs


def _read(path: pathlib.Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpecialisationError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise SpecialisationError(f"{path}: expected a JSON object")
    return record


def read_halves(stats: Mapping, shape: tuple, where: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``routing_stats.load_halves`` (two [L][n] loads) normalised, or None when the json has none; halves not of
    the load's shape are an error naming the file."""
    halves = stats.get("load_halves")
    if halves is None:
        return None
    if not isinstance(halves, list) or len(halves) != 2:
        raise SpecialisationError(f"{where}: routing_stats.load_halves is not a list of two loads")
    out = tuple(normalised_load(h, f"{where}: load_halves[{i}]") for i, h in enumerate(halves))
    if any(h.shape != shape for h in out):
        raise SpecialisationError(f"{where}: routing_stats.load_halves has shapes {[list(h.shape) for h in out]}, "
                                  f"the load {list(shape)}")
    return out


def read_loads(eval_dir: pathlib.Path, tasks: Sequence[str]) -> tuple[dict[str, np.ndarray] | None, dict, dict]:
    """({task: normalised load [L, n]} or None when no json holds routing statistics, the adapter config of the
    first json, {task: its two halves' normalised loads} for the tasks whose json has them (``read_halves``)). Every
    task's json must exist; routing statistics in some tasks' jsons and not others', or loads of different shapes,
    are errors naming the files."""
    loads, without, adapter, halves = {}, [], {}, {}
    for task in tasks:
        path = eval_dir / f"{task}.json"
        record = _read(path)
        adapter = adapter or dict(record.get("adapter_config") or {})
        stats = record.get("routing_stats")
        if stats is None:
            without.append(path)
            continue
        if not isinstance(stats, dict) or "load" not in stats:
            raise SpecialisationError(f"{path}: routing_stats has no 'load'")
        loads[task] = normalised_load(stats["load"], str(path))
        pair = read_halves(stats, loads[task].shape, str(path))
        if pair is not None:
            halves[task] = pair
    if not loads:
        return None, adapter, halves
    if without:
        raise SpecialisationError(f"{without[0]}: no routing statistics, but {eval_dir / (next(iter(loads)) + '.json')}"
                                  " has them (evaluations of one run with different settings?)")
    shapes = {t: v.shape for t, v in loads.items()}
    if len(set(shapes.values())) > 1:
        raise SpecialisationError(f"{eval_dir}: load shapes differ between tasks: "
                                  + ", ".join(f"{t}.json {list(s)}" for t, s in shapes.items()))
    return loads, adapter, halves


def collect(runs_dir: pathlib.Path, tasks: Sequence[str], top: int = 0) -> dict:
    """Every run folder ``<method>__seed=<s>`` of ``runs_dir``:
    {"routed": {method: {seed: {"loads", "measures", "init"?, "top_k"}}}, "no_routing": {method: [seeds]},
     "incomplete": [(run name, missing json)]}. ``top``: experts listed per task (0: the run's adapter.top_k)."""
    if not runs_dir.is_dir():
        raise SpecialisationError(f"{runs_dir}: no such folder of runs")
    out = {"routed": {}, "no_routing": {}, "incomplete": []}
    for run in sorted(runs_dir.iterdir(), key=lambda p: p.name):
        m = RUN_NAME.match(run.name)
        if not m or not run.is_dir():
            continue
        method, seed = m["method"], int(m["seed"])
        missing = [t for t in tasks if not (run / "eval" / f"{t}.json").is_file()]
        if missing:
            out["incomplete"].append((run.name, f"eval/{missing[0]}.json"))
            continue
        loads, adapter, halves = read_loads(run / "eval", tasks)
        if loads is None:
            out["no_routing"].setdefault(method, []).append(seed)
            continue
        k = top or int(adapter.get("top_k") or 2)
        entry = {"loads": loads, "measures": run_measures(loads, k, halves if len(halves) == len(tasks) else None),
                 "top_k": k}
        init_dir = run / INIT_DIR
        if all((init_dir / f"{t}.json").is_file() for t in tasks):
            init_loads, _, _ = read_loads(init_dir, tasks)
            if init_loads is not None:
                entry["init"] = run_measures(init_loads, k)["specialisation"]
        out["routed"].setdefault(method, {})[seed] = entry
    return out


# ------------------------------------------------------------------ report


def _stat(values: Sequence[float]) -> str:
    """"mean ± std (n=N)" over seeds, 3 decimals; the value alone for one seed; "-" for none."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "-"
    return f"{mean:.3f}" if n == 1 else f"{mean:.3f} ± {std:.3f} (n={n})"


def _pair_name(pair: tuple[str, str]) -> str:
    return f"{pair[0]}/{pair[1]}"


def summary_table(found: dict, tasks: Sequence[str]) -> str:
    pairs = list(itertools.combinations(tasks, 2))
    head = ["method", "seeds", "specialisation", "at initialisation", "within task (halves)",
            *(f"JS {_pair_name(p)}" for p in pairs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, seeds in found["routed"].items():
        runs = [seeds[s] for s in sorted(seeds)]
        cells = [method, ",".join(map(str, sorted(seeds))),
                 _stat([r["measures"]["specialisation"] for r in runs]),
                 _stat([r["init"] for r in runs if "init" in r]),
                 _stat([r["measures"]["within_mean"] for r in runs if "within_mean" in r["measures"]]),
                 *(_stat([float(np.mean(r["measures"]["pairs"][p])) for r in runs]) for p in pairs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def block_table(seeds: Mapping[int, dict], tasks: Sequence[str]) -> str:
    """Per block: JS_l (mean ± std over seeds) and each pair's JS (mean over seeds)."""
    pairs = list(itertools.combinations(tasks, 2))
    runs = [seeds[s] for s in sorted(seeds)]
    head = ["block", "JS (mean over pairs)", *(_pair_name(p) for p in pairs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in range(len(runs[0]["measures"]["per_block"])):
        cells = [str(b), _stat([r["measures"]["per_block"][b] for r in runs]),
                 *(f"{np.mean([r['measures']['pairs'][p][b] for r in runs]):.3f}" for p in pairs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def top_table(entry: dict, tasks: Sequence[str]) -> str:
    """Per block, each task's top-k experts with their share of the routing mass in %."""
    lines = ["| block | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for b in range(len(entry["measures"]["per_block"])):
        cells = [", ".join(f"{e} ({100 * entry['loads'][t][b][e]:.0f}%)" for e in entry["measures"]["top"][t][b])
                 for t in tasks]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOISE_NOTE = ("No evaluation-noise reference: these evaluations record each task's routing as one mean over all its "
              "tokens (written before the evaluation kept the load of two halves of a task's questions), so the JS "
              "divergence between two halves of one task's questions (what two samples of the same task give) "
              "cannot be computed from these files. A specialisation above zero therefore shows that the tasks' "
              "tokens are routed differently, not by how much that exceeds what a finite test set gives by chance; "
              "the column \"at initialisation\" (where present) gives what the untrained routers already do with "
              "the four tasks' inputs.")
HALVES_NOTE = ("Noise reference, the column \"within task (halves)\": the JS between the load of a task's even- and "
               "odd-numbered scoring batches (two disjoint halves of its questions), mean over blocks, then over "
               "tasks. Each half has half the task's tokens, so for sampling noise it is about twice the chance "
               "divergence of two whole tasks: a specialisation at or below it shows nothing beyond chance. Per "
               "task (mean over seeds): {per_task}.")


def noise_note(found: dict, tasks: Sequence[str]) -> str:
    """HALVES_NOTE with each task's within-task JS when every routed run has halves, else NOISE_NOTE."""
    runs = [r for seeds in found["routed"].values() for r in seeds.values()]
    if not runs or any("within" not in r["measures"] for r in runs):
        return NOISE_NOTE
    per_task = ", ".join(f"{t} {np.mean([r['measures']['within'][t] for r in runs]):.3f}" for t in tasks)
    return HALVES_NOTE.format(per_task=per_task)


def markdown(found: dict, tasks: Sequence[str], results: pathlib.Path, plots: Mapping[str, str]) -> tuple[str, str]:
    """(the whole report, the part that is printed: summary and per-block tables)."""
    head = ["# Routing specialisation per task", "",
            f"Runs of `{results}`; tasks {', '.join(tasks)}. Per block, each task's expert load "
            "(`routing_stats.load` of its `eval/<task>.json`) normalised to sum 1; JS = Jensen-Shannon divergence "
            "in bits between two tasks' distributions (0 identical, 1 disjoint experts); specialisation = mean over "
            "blocks of the mean JS over task pairs; mean ± sample std over seeds. "
            "`python experiments/specialisation.py --results=...` (its docstring defines every number).", "",
            "## Summary", "", summary_table(found, tasks), ""]
    if found["no_routing"]:
        head += ["No routing (no routing statistics in the jsons): " + "; ".join(
            f"{m} (seeds {', '.join(map(str, sorted(s)))})" for m, s in found["no_routing"].items()), ""]
    if found["incomplete"]:
        head += ["Incomplete (left out): " + "; ".join(f"{n} (no {f})" for n, f in found["incomplete"]), ""]
    head += ["## Reference", "", noise_note(found, tasks), ""]
    blocks, tops = [], []
    for method, seeds in found["routed"].items():
        blocks += [f"## {method}: JS per block", "", block_table(seeds, tasks), ""]
        if method in plots:
            tops += [f"![{method}: expert load per block]({plots[method]})", ""]
        for s in sorted(seeds):
            k = seeds[s]["top_k"]
            tops += [f"### {method}, seed {s}: top-{k} experts per task (share of routing mass)", "",
                     top_table(seeds[s], tasks), ""]
    printed = "\n".join(head + blocks)
    return "\n".join(head + blocks + tops), printed


def heatmap(method: str, seeds: Mapping[int, dict], tasks: Sequence[str], path: pathlib.Path) -> None:
    """One panel per (seed, task): the normalised load, blocks (rows) x experts (columns), one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(seeds)
    vmax = max(float(seeds[s]["loads"][t].max()) for s in order for t in tasks)
    n_blocks, n_experts = seeds[order[0]]["loads"][tasks[0]].shape
    fig, axes = plt.subplots(len(order), len(tasks), squeeze=False, sharex=True, sharey=True, layout="constrained",
                             figsize=(1.2 + len(tasks) * max(2.0, 0.3 * n_experts),
                                      0.8 + len(order) * max(1.8, 0.12 * n_blocks)))
    image = None
    for i, s in enumerate(order):
        for j, t in enumerate(tasks):
            ax = axes[i][j]
            image = ax.imshow(seeds[s]["loads"][t], aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax,
                              interpolation="nearest")
            ax.set_title(f"{t}, seed {s}", fontsize=8)
            if i == len(order) - 1:
                ax.set_xlabel("expert")
            if j == 0:
                ax.set_ylabel("block")
    fig.colorbar(image, ax=axes, shrink=0.8, label="share of routing mass")
    fig.suptitle(f"{method}: expert load per block and task (each seed its own expert numbering)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def report(results: pathlib.Path, tasks: Sequence[str] = TASKS, top: int = 0,
           runs_dir: pathlib.Path | None = None) -> tuple[str, list[pathlib.Path]]:
    """Read the runs, write specialisation.md and one PNG per routed method into ``results``; returns (the printed
    part of the report, the paths written). Nothing is written when a run's files are unusable."""
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise SpecialisationError(f"--tasks: need two or more distinct tasks, got {list(tasks)}")
    found = collect(runs_dir or results / "runs", tasks, top)
    if not found["routed"] and not found["no_routing"]:
        raise SpecialisationError(f"{runs_dir or results / 'runs'}: no run folder <method>__seed=<s> holds "
                                  f"eval/<task>.json for every task of {', '.join(tasks)}")
    plots = {m: f"specialisation_{re.sub(r'[^A-Za-z0-9._+-]', '_', m)}.png" for m in found["routed"]}
    text, printed = markdown(found, tasks, results, plots)
    written = []
    for method, seeds in found["routed"].items():
        heatmap(method, seeds, tasks, results / plots[method])
        written.append(results / plots[method])
    _write(results / "specialisation.md", text + "\n")
    return printed, [results / "specialisation.md", *written]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, type=pathlib.Path, help="a sweep's --out_dir (runs under runs/)")
    p.add_argument("--runs", type=pathlib.Path, default=None, help="the run folders (default: RESULTS/runs)")
    p.add_argument("--tasks", default=",".join(TASKS), help="eval/<task>.json names, comma-separated")
    p.add_argument("--top", type=int, default=0, help="experts listed per task and block (0: the run's top_k)")
    args = p.parse_args(argv)
    if args.top < 0:
        p.error(f"--top={args.top}: expected 0 or more")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        printed, written = report(args.results, tasks, args.top, args.runs)
    except SpecialisationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(printed)
    print("written: " + ", ".join(str(w) for w in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())

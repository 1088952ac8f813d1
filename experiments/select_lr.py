"""Each method's adapter learning rate for the main table, chosen on validation data from the runs of
``experiments/lr_grid.py``: per method (the sweep's "variant" column) the adapter learning rate
("optimizer.adapter_lr") with the lowest held-out loss on the validation split carved from GSM8K train
("heldout/heldout_loss"), read from the results.csv that the sweep writes into its --out_dir.

    python experiments/select_lr.py --results=experiments/results/qwen0.5b/lr_grid \\
        --out=experiments/results/qwen0.5b/lr_grid/selected_lr.json
    REMIX_SELECTED_LR=experiments/results/qwen0.5b/lr_grid/selected_lr.json \\
        python -m remix_jax.sweep --sweep=experiments/main_table.py --out_dir=...

The same for the HumanEval and ARC-Challenge tables: the results of lr_grid_codealpaca.py / lr_grid_arc_c.py, the
file named by $REMIX_CODEALPACA_SELECTED_LR / $REMIX_ARC_C_SELECTED_LR for humaneval_table.py / arc_c_table.py.

Rules:
- a learning rate's loss is the mean over its runs (lr_grid.py has one seed). A learning rate with a run that did
  not finish (status other than "complete"), that has no loss, or whose loss is NaN or infinite is excluded, and
  the exclusion is printed; a method with no learning rate left is an error naming it;
- equal losses (exactly equal, as read) go to the smaller learning rate, and the tie is printed;
- ``--metric`` names another results.csv column to minimise, and ``--maximize`` maximises it instead (an
  accuracy: lr_grid_arc_c_mc_acc.py's ``arc_c_mc_heldout/accuracy`` on the validation rows); "losses" below are
  then that column's values, written under "scores" with the column's name in "metric";
- ``--outcomes=TASK`` measures how far the validation data separate the rates, on the per-example verdicts of
  the task (``outcomes`` in each run's ``eval/<TASK>.json``, e.g. ``arc_c_mc_heldout``): for each rate not chosen,
  the accuracy of the chosen rate minus its own, paired on the same examples (each example's verdict averaged
  over a rate's runs), with the standard error of that mean difference; a rate within two standard errors is
  listed, and warned about, as not separated from the choice;
- ``edge``: the chosen rate has no evaluated rate below or above it: it is the lowest or highest of the grid
  (the grid should be extended on that side), or the runs on that side did not finish. A diverged run (NaN or
  infinite loss) counts as evaluated: it bounds the choice from its side.

Output: a table on stdout (method, the loss at each rate, the chosen rate), warnings on stderr, and ``--out``:
    {method: {"adapter_lr": float, "losses": {"<rate>": loss, ...}, "edge": bool, "excluded": {"<rate>": why}}}
(with another --metric or --maximize: "metric": name, "maximize": bool, and "scores" in place of "losses"; with
--outcomes also "outcomes_task": TASK, "paired": {"<rate>": {"difference": d, "stderr": e}}, "not_separated":
["<rate>", ...])
in the sweep's order of methods, rates written as Python writes floats ("0.0003"). An existing --out with
different content is kept unless --force. ``load_selection`` reads the file back (experiments/common.py, for
main_table.py under $REMIX_SELECTED_LR, and the other tables under theirs).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import pathlib
import sys
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from remix_jax import cli  # noqa: E402
from remix_jax.cli import UserError  # noqa: E402
from remix_jax.sweep import KEYS  # noqa: E402

METRIC = "heldout/heldout_loss"
METHOD_COLUMN = "variant"
LR_COLUMN = KEYS.adapter_lr
RESULTS_FILE = "results.csv"
SEPARATION = 2.0  # standard errors of a paired difference between two rates that separate them


@dataclasses.dataclass
class Choice:
    """One method's selection: the grid's rates, the loss of each evaluated rate, the excluded ones and why."""

    method: str
    grid: list[float]
    losses: dict[float, float]  # finite mean losses of the rates whose every run finished
    excluded: dict[float, str]  # rate -> reason
    diverged: set[float]  # excluded rates with a NaN / infinite loss (evaluated: they bound the choice)
    adapter_lr: float = math.nan
    tied: list[float] = dataclasses.field(default_factory=list)  # rates sharing the best value (> 1: a tie)
    unbounded: list[str] = dataclasses.field(default_factory=list)  # "below" / "above": no evaluated rate there
    rows: dict[float, list[dict]] = dataclasses.field(default_factory=dict)  # results.csv rows of each valid rate
    paired: dict[float, tuple[float, float]] = dataclasses.field(default_factory=dict)  # rate -> (chosen - it, error)
    not_separated: list[float] = dataclasses.field(default_factory=list)  # within SEPARATION errors of the chosen

    @property
    def edge(self) -> bool:
        return bool(self.unbounded)


def read_results(path: str | os.PathLike, metric: str = METRIC) -> tuple[pathlib.Path, list[dict]]:
    """(the results.csv read, its rows with "line" added). ``path``: the sweep's out_dir or its results.csv."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise UserError(f"{path}: no such file",
                        "pass the --out_dir of the lr_grid sweep (python -m remix_jax.sweep writes results.csv "
                        "there when its runs end; --report_only writes it again)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in ("name", "status", METHOD_COLUMN, LR_COLUMN) if c not in columns]
        if missing:
            raise UserError(f"{path}: no column(s) {', '.join(missing)}: not the results of experiments/lr_grid.py")
        rows = [{**row, "line": reader.line_num} for row in reader]
    if metric not in columns and any(r["status"] == "complete" for r in rows):
        raise UserError(f"{path}: complete runs but no column {metric!r}",
                        "--metric names a results.csv column, e.g. heldout/heldout_loss")
    return path, rows


def _run_problem(row: dict, metric: str) -> tuple[str, bool] | None:
    """(why the run cannot be used, whether it diverged), or None for a usable run."""
    if row["status"] != "complete":
        return f"{row['name']} did not finish ({row['status']})", False
    cell = (row.get(metric) or "").strip()
    if not cell:
        return f"{row['name']} has no {metric}", False
    value = float(cell)  # csv.DictWriter wrote a float: "nan" and "inf" included
    if not math.isfinite(value):
        return f"{row['name']}: {metric} is {value}", True
    return None


def select(rows: Sequence[dict], metric: str = METRIC, where: str = RESULTS_FILE,
           maximize: bool = False) -> dict[str, Choice]:
    """{method: Choice} over ``rows`` (read_results), methods in order of first appearance; the rate with the
    lowest mean ``metric`` (the highest with ``maximize``)."""
    runs: dict[str, dict[float, list[dict]]] = {}
    for row in rows:
        try:
            lr = float(row[LR_COLUMN])
        except ValueError:
            raise UserError(f"{where}:{row['line']}: {LR_COLUMN} {row[LR_COLUMN]!r} is not a number") from None
        try:
            if row["status"] == "complete" and (row.get(metric) or "").strip():
                float(row[metric])
        except ValueError:
            raise UserError(f"{where}:{row['line']}: {metric} {row[metric]!r} is not a number") from None
        runs.setdefault(row[METHOD_COLUMN], {}).setdefault(lr, []).append(row)
    choices, empty = {}, []
    for method, by_lr in runs.items():
        c = Choice(method=method, grid=sorted(by_lr), losses={}, excluded={}, diverged=set())
        for lr in c.grid:
            problems = [p for p in (_run_problem(r, metric) for r in by_lr[lr]) if p]
            if problems:
                c.excluded[lr] = "; ".join(p for p, _ in problems)
                if any(d for _, d in problems):
                    c.diverged.add(lr)
            else:
                c.losses[lr] = sum(float(r[metric]) for r in by_lr[lr]) / len(by_lr[lr])
                c.rows[lr] = by_lr[lr]
        if not c.losses:
            empty.append(f"{method} ({'; '.join(c.excluded.values())})")
            continue
        best = max(c.losses.values()) if maximize else min(c.losses.values())
        c.tied = [lr for lr in c.grid if c.losses.get(lr) == best]
        c.adapter_lr = c.tied[0]  # equal losses: the smaller rate
        evaluated = sorted(set(c.losses) | c.diverged)
        c.unbounded = [side for side, at_end in (("below", c.adapter_lr == evaluated[0]),
                                                 ("above", c.adapter_lr == evaluated[-1])) if at_end]
        choices[method] = c
    if empty:
        raise UserError(f"{where}: no valid run for method(s): {', '.join(empty)}",
                        "finish or rerun those runs (python -m remix_jax.sweep resumes the sweep)")
    return choices


def _outcomes(row: dict, task: str, results: pathlib.Path) -> tuple[str, str, pathlib.Path]:
    """(verdicts as a "0"/"1" string, the digest of the examples' ids, the json) of one run's ``task``: from
    RESULTS_DIR/runs/<name>, else the row's workdir."""
    candidates = [results.parent / "runs" / row["name"]]
    if row.get("workdir"):
        candidates.append(pathlib.Path(row["workdir"]))
    path = next((d / "eval" / f"{task}.json" for d in candidates if (d / "eval" / f"{task}.json").is_file()), None)
    if path is None:
        raise UserError(f"{results}:{row['line']}: {row['name']}: no {task} evaluation "
                        f"({candidates[0] / 'eval' / f'{task}.json'} is missing)",
                        "--outcomes names a task the grid's runs evaluated, e.g. arc_c_mc_heldout")
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    from paired import run_outcomes  # the same reader as the paired comparisons (here only when asked for)

    try:
        out = run_outcomes(path)
        values, digest = out["values"], out["ids_sha256"]
    except FileNotFoundError as e:  # no outcomes in the json and no predictions file beside it
        raise UserError(str(e), "an evaluation writes them into its json") from None
    except (ValueError, KeyError, TypeError) as e:  # unreadable json, verdict-less predictions, malformed outcomes
        raise UserError(f"{path}: unreadable per-example outcomes ({e})") from None
    if not values or set(values) - {"0", "1"}:
        raise UserError(f"{path}: outcomes must be a non-empty string of 0 and 1")
    return values, digest, path


def separate(choices: dict[str, Choice], task: str, results: pathlib.Path) -> None:
    """Fill each choice's ``paired`` and ``not_separated`` from the per-example outcomes of ``task``."""
    for c in choices.values():
        per_rate: dict[float, list[float]] = {}
        first = None
        for lr, runs in c.rows.items():
            verdicts = []
            for row in runs:
                values, digest, path = _outcomes(row, task, results)
                if first is None:
                    first = (digest, path)
                elif digest != first[0]:
                    raise UserError(f"{path} and {first[1]} scored different examples (or in a different order)")
                verdicts.append(values)
            per_rate[lr] = [sum(v[i] == "1" for v in verdicts) / len(verdicts) for i in range(len(verdicts[0]))]
        chosen = per_rate[c.adapter_lr]
        n = len(chosen)
        for lr, other in per_rate.items():
            if lr == c.adapter_lr:
                continue
            d = [a - b for a, b in zip(chosen, other, strict=True)]
            mean = sum(d) / n
            se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else math.inf
            c.paired[lr] = (mean, se)
            if abs(mean) < SEPARATION * se or mean == 0:
                c.not_separated.append(lr)


def warnings(choices: dict[str, Choice]) -> list[str]:
    """One line per excluded rate, tie and unbounded side."""
    out = []
    for m, c in choices.items():
        for lr, why in c.excluded.items():
            out.append(f"{m}: adapter LR {lr:g} excluded: {why}")
        if len(c.tied) > 1:
            out.append(f"{m}: adapter LRs {', '.join(f'{lr:g}' for lr in c.tied)} tie at {c.losses[c.adapter_lr]!r}; "
                       f"the smaller, {c.adapter_lr:g}, is chosen")
        if c.not_separated:
            out.append(f"{m}: adapter LR(s) {', '.join(f'{lr:g}' for lr in c.not_separated)} within {SEPARATION:g} "
                       f"paired standard errors of the chosen {c.adapter_lr:g}: the validation data do not separate "
                       "them")
        for side in c.unbounded:
            end = c.grid[0] if side == "below" else c.grid[-1]
            if c.adapter_lr == end:
                extreme = "lowest" if side == "below" else "highest"
                out.append(f"{m}: the best adapter LR {c.adapter_lr:g} is the {extreme} of the grid: extend the grid "
                           f"{side} {c.adapter_lr:g}")
            else:
                out.append(f"{m}: the best adapter LR {c.adapter_lr:g} has no finished run {side} it: finish the "
                           f"excluded runs {side} it")
    return out


def table(choices: dict[str, Choice], metric: str = METRIC) -> str:
    """Markdown: one row per method, the mean loss at each rate of any grid ("-": not in its grid), the choice
    (and, when the choices were separated on outcomes, the rates not separated from it)."""
    lrs = sorted({lr for c in choices.values() for lr in c.grid})
    paired = any(c.paired for c in choices.values())
    sep = f" not separated from it ({SEPARATION:g} paired SE) |" if paired else ""
    lines = [f"| method | {' | '.join(f'{metric} @ {lr:g}' for lr in lrs)} | chosen adapter LR |{sep}",
             "|" + "---|" * (len(lrs) + 2 + paired)]
    for m, c in choices.items():
        cells = []
        for lr in lrs:
            if lr in c.losses:
                cells.append(f"**{c.losses[lr]:.4f}**" if lr == c.adapter_lr else f"{c.losses[lr]:.4f}")
            else:
                cells.append("diverged" if lr in c.diverged else "excluded" if lr in c.excluded else "-")
        edge = " (edge)" if c.edge else ""
        close = f" {', '.join(f'{lr:g}' for lr in c.not_separated) or 'none'} |" if paired else ""
        lines.append(f"| {m} | {' | '.join(cells)} | {c.adapter_lr:g}{edge} |{close}")
    return "\n".join(lines)


def to_json(choices: dict[str, Choice], metric: str = METRIC, maximize: bool = False,
            outcomes: str | None = None) -> str:
    """The selection file; minimising the default metric, each method's values are its "losses", else its
    "scores" of "metric" ("maximize" says which way); with ``outcomes`` (the task) the paired differences."""
    values = "scores" if maximize or metric != METRIC else "losses"
    extra = {"metric": metric, "maximize": maximize} if values == "scores" else {}
    out = {}
    for m, c in choices.items():
        sep = {"outcomes_task": outcomes,
               "paired": {repr(lr): {"difference": d, "stderr": e} for lr, (d, e) in c.paired.items()},
               "not_separated": [repr(lr) for lr in c.not_separated]} if outcomes else {}
        out[m] = {"adapter_lr": c.adapter_lr, **extra, values: {repr(lr): v for lr, v in c.losses.items()},
                  **sep, "edge": c.edge, "excluded": {repr(lr): why for lr, why in c.excluded.items()}}
    return json.dumps(out, indent=2) + "\n"


def write_selection(path: str | os.PathLike, text: str, force: bool = False) -> str:
    """Write ``text`` to ``path`` (atomically); an existing file with other content only with ``force``.
    Returns "wrote", "unchanged" or "overwrote"."""
    path = pathlib.Path(path)
    verb = "wrote"
    if path.exists():
        if path.read_text(encoding="utf-8") == text:
            return "unchanged"
        if not force:
            raise UserError(f"{path} exists with a different selection; it is kept",
                            "pass --force to overwrite it, or choose another --out")
        verb = "overwrote"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return verb


def load_selection(path: str | os.PathLike, methods: Sequence[str]) -> dict[str, float]:
    """{method: adapter_lr} for ``methods`` from a file written by this script; a method the file lacks, or
    a rate that is not a positive finite number, is an error naming it."""
    path = pathlib.Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file", "write it with python experiments/select_lr.py") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object {{method: {{\"adapter_lr\": ...}}}}")
    missing = [m for m in methods if m not in data]
    if missing:
        raise UserError(f"{path}: no learning rate for method(s) {', '.join(missing)} (it has "
                        f"{', '.join(data) or 'none'})", "run the lr_grid sweep and select_lr.py with those methods")
    out = {}
    for m in methods:
        lr = data[m].get("adapter_lr") if isinstance(data[m], dict) else None
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not (math.isfinite(lr) and lr > 0):
            raise UserError(f"{path}: {m}: adapter_lr must be a positive number, got {lr!r}")
        out[m] = float(lr)
    return out


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python experiments/select_lr.py", description=__doc__.split("\n")[0])
    p.add_argument("--results", required=True, help="the lr_grid sweep's --out_dir (or its results.csv)")
    p.add_argument("--out", required=True, help="the selection's JSON file (e.g. OUT_DIR/selected_lr.json)")
    p.add_argument("--metric", default=METRIC, help="the results.csv column to minimise")
    p.add_argument("--maximize", action="store_true", help="maximise --metric instead (an accuracy)")
    p.add_argument("--outcomes", default=None, metavar="TASK",
                   help="a task the runs evaluated (e.g. arc_c_mc_heldout): report, on its per-example verdicts, "
                        "the rates the validation data do not separate from the chosen one")
    p.add_argument("--force", action="store_true", help="overwrite an --out holding a different selection")
    p.add_argument("--debug", action="store_true", help="show the traceback of expected failures")
    args = p.parse_args(argv)
    path, rows = read_results(args.results, args.metric)
    choices = select(rows, args.metric, where=str(path), maximize=args.maximize)
    if args.outcomes:
        separate(choices, args.outcomes, path)
    print(table(choices, args.metric))
    for line in warnings(choices):
        print(f"warning: {line}", file=sys.stderr)
    verb = write_selection(args.out, to_json(choices, args.metric, args.maximize, args.outcomes), force=args.force)
    print(f"{verb} {args.out}" if verb != "unchanged" else f"{args.out} holds this selection already (unchanged)")
    return 0


if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(cli.guard(lambda: main(argv), argv))

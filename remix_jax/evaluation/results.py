"""Evaluation outputs: a task's result (``TaskResult``), ``DIR/eval/<task>.json`` (metrics, counts, config,
commit, and each example's outcome in compact form for paired comparisons), per-example predictions
``DIR/eval/<task>.predictions.jsonl``, and a results table."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import numbers
import os
import pathlib
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence


@dataclasses.dataclass
class TaskResult:
    """What a task runner returns: metrics (accuracy, counts, ...), one dict per example, routing statistics."""

    task: str
    metrics: dict
    predictions: list[dict]
    routing_stats: dict | None = None


SOURCE_COMMIT_ENV = "REMIX_SOURCE_COMMIT"


def git_commit(repo_dir: str | os.PathLike | None = None) -> dict | None:
    """{"commit": sha, "dirty": bool} of the git checkout holding ``repo_dir`` (default: this package). A copy of
    the source without git metadata (a tree shipped to a cluster) records the commit named by
    $REMIX_SOURCE_COMMIT, as {"commit": sha, "dirty": None, "from": "REMIX_SOURCE_COMMIT"} (the copier's word: it
    is not checked against the files; a value that is not a hash is kept as "error", never stopping the write);
    None when neither is available."""
    cwd = str(repo_dir or pathlib.Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10)
        if sha.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                   capture_output=True, text=True, timeout=30)
            return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        pass
    named = os.environ.get(SOURCE_COMMIT_ENV, "").strip()
    if not named:
        return None
    if re.fullmatch(r"[0-9a-f]{7,40}", named):
        return {"commit": named, "dirty": None, "from": SOURCE_COMMIT_ENV}
    return {"commit": None, "dirty": None, "from": SOURCE_COMMIT_ENV,
            "error": f"not a commit hash (7 to 40 lower-case hex digits): {named[:80]!r}"}


def _jsonable(config) -> object:
    """ConfigDict / dataclass / mapping -> plain JSON data (unknown objects become their repr)."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=repr))


OUTCOME_KEYS = ("correct", "passed")  # the per-example verdict of scored tasks (GSM8K / choice tasks, HumanEval)


def per_example_outcomes(predictions: Sequence[Mapping]) -> dict | None:
    """{"key", "values": "0110...", "ids_sha256"}: each example's verdict in prediction order ("1" right), and a
    digest of the examples' ids in that order, so that two runs' outcomes are paired only when they scored the same
    examples in the same order; None when the rows carry no verdict (log-likelihood-only tasks, no rows)."""
    key = next((k for k in OUTCOME_KEYS if predictions and all(k in r for r in predictions)), None)
    if key is None:
        return None
    ids = [r.get("id", r.get("task_id")) for r in predictions]
    digest = hashlib.sha256(json.dumps(ids, default=repr).encode()).hexdigest()
    return {"key": key, "values": "".join("1" if r[key] else "0" for r in predictions), "ids_sha256": digest}


def finite_metrics(metrics: Mapping) -> tuple[dict, list[str]]:
    """(metrics with every NaN or infinite number replaced by None, the names of those metrics): JSON has no
    NaN, and a result file must still be written (and say which metric was not finite) when a model's scores
    are."""
    out, bad = {}, []
    for k, v in metrics.items():
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isfinite(float(v)):
            out[k] = None
            bad.append(str(k))
        else:
            out[k] = v
    return out, bad


def write_task_results(workdir: str | os.PathLike, task: str, metrics: Mapping,
                       predictions: Iterable[Mapping], config=None,
                       extra: Mapping | None = None, subdir: str = "eval") -> pathlib.Path:
    """Write DIR/eval/<task>.json and DIR/eval/<task>.predictions.jsonl; returns the json path.

    metrics: e.g. {"accuracy": 0.5, "num_correct": 1, "num_examples": 2} (a NaN or infinite value is written as
    null and named in the record's "non_finite_metrics"); predictions: one dict per example
    (their verdicts are also kept in the json as ``outcomes``: ``per_example_outcomes``).
    ``subdir``: the folder under DIR ("" writes into DIR itself).
    """
    if not task or "/" in task or task.startswith("."):
        raise ValueError(f"bad task name {task!r}")
    out = pathlib.Path(workdir) / subdir
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / f"{task}.predictions.jsonl"
    predictions = list(predictions)
    n = len(predictions)
    with open(pred_path, "w", encoding="utf-8") as f:
        for row in predictions:
            f.write(json.dumps(row, ensure_ascii=False, default=repr) + "\n")
    metrics, non_finite = finite_metrics(metrics)
    record = {
        "task": task,
        "metrics": metrics,
        "num_predictions": n,
        "config": _jsonable(config) if config is not None else None,
        "git": git_commit(),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "predictions_file": pred_path.name,
        "outcomes": per_example_outcomes(predictions),
        **(dict(extra) if extra else {}),
    }
    if non_finite:
        record["non_finite_metrics"] = non_finite
    path = out / f"{task}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_task_results(workdir: str | os.PathLike, subdir: str = "eval") -> dict[str, dict]:
    """task -> record of every DIR/eval/<task>.json (DIR/<subdir>/<task>.json)."""
    out = pathlib.Path(workdir) / subdir
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("*.json"))}


def format_table(results: Mapping[str, Mapping], columns: Sequence[str] | None = None) -> str:
    """A markdown table: one row per task, one column per metric (numbers in [0, 1] shown as percentages,
    counts as integers). results: task -> record (with "metrics") or task -> metrics."""
    rows = {t: (r.get("metrics", r)) for t, r in results.items()}
    if columns is None:
        columns = sorted({k for m in rows.values() for k, v in m.items() if isinstance(v, (int, float))})

    def cell(v) -> str:
        if isinstance(v, bool) or v is None:
            return "-" if v is None else str(v)
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return "nan" if math.isnan(v) else (f"{100 * v:.2f}" if 0.0 <= v <= 1.0 else f"{v:.4g}")
        return str(v)

    lines = ["| task | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {t} | " + " | ".join(cell(m.get(c)) for c in columns) + " |" for t, m in rows.items()]
    return "\n".join(lines)

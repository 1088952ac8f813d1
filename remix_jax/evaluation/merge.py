"""Join the results of one task evaluated in parts (``eval.offset`` / ``eval.limit``) into one result.

    python -m remix_jax.evaluation.merge --task=hellaswag --out=DIR PART_DIR [PART_DIR ...]

Each PART_DIR holds <task>.json and <task>.predictions.jsonl written by ``python -m remix_jax.evaluate`` under the
same config but for eval.offset / eval.limit. The parts must cover consecutive questions with no gap or overlap.
Writes DIR/<task>.json, whose metrics are recomputed from the joined predictions as the task runners compute them
(each metric's share of correct predictions and its standard error), with "parts" (each part's offset, questions,
commit and time; the parts' routing statistics are left out), and DIR/<task>.predictions.jsonl. An existing
DIR/<task>.json is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from remix_jax.evaluation.mc_runner import stderr
from remix_jax.evaluation.results import write_task_results

PART_KEYS = ("offset", "limit")  # the eval.* keys parts may differ in


class MergeError(ValueError):
    """Parts that cannot be joined; the message names the part."""


def _read(part: str, task: str) -> tuple[dict, list[dict]]:
    path = os.path.join(part, f"{task}.json")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        with open(os.path.join(part, record["predictions_file"]), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError, KeyError) as e:
        raise MergeError(f"{path}: cannot read the part ({e})") from None
    if len(rows) != record.get("num_predictions"):
        raise MergeError(f"{path}: {len(rows)} predictions, the record says {record.get('num_predictions')}")
    return record, rows


def _config(record: dict) -> dict:
    cfg = json.loads(json.dumps(record.get("config") or {}))
    for k in PART_KEYS:
        cfg.get("eval", {}).pop(k, None)
    return cfg


def recompute(metrics: dict, rows: list[dict]) -> dict:
    """The part-independent metrics of ``rows`` (every per-metric share and stderr, accuracy, counts)."""
    out = dict(metrics)
    names = [k[: -len("_stderr")] for k in metrics if k.endswith("_stderr")]
    for m in names:
        correct = [float((r["predictions"][m] if "predictions" in r else r["prediction"]) == r["gold"])
                   if m != "exact_match" else float(r["correct"]) for r in rows]
        out[m], out[f"{m}_stderr"] = sum(correct) / len(correct), stderr(correct)
    out["num_correct"] = sum(bool(r["correct"]) for r in rows)
    out["num_examples"] = len(rows)
    out["accuracy"] = out["num_correct"] / len(rows)
    if "num_no_answer" in out:
        out["num_no_answer"] = sum(r.get("prediction") is None for r in rows)
    return out


def merge(task: str, parts: list[str], out_dir: str) -> dict:
    """Join ``parts`` (folders) of ``task`` into ``out_dir``; returns the merged metrics."""
    if os.path.exists(os.path.join(out_dir, f"{task}.json")):
        raise MergeError(f"{os.path.join(out_dir, task + '.json')} exists; choose another --out")
    loaded = sorted((_read(p, task) + (p,) for p in parts), key=lambda x: x[1][0]["id"] if x[1] else -1)
    first, rows, info = loaded[0][0], [], []
    for record, part_rows, part in loaded:
        if _config(record) != _config(first) or record.get("adapters") != first.get("adapters"):
            raise MergeError(f"{part}: evaluated under another config or model than {loaded[0][2]} "
                             f"(parts may differ in eval.{' / eval.'.join(PART_KEYS)} only)")
        if rows and part_rows and part_rows[0]["id"] != rows[-1]["id"] + 1:
            raise MergeError(f"{part}: starts at question {part_rows[0]['id']}, the parts before end at "
                             f"{rows[-1]['id']} (a gap or an overlap)")
        rows += part_rows
        info.append({"part": os.path.basename(os.path.normpath(part)), "offset": part_rows[0]["id"],
                     "questions": len(part_rows), "git": record.get("git"), "time": record.get("time")})
    metrics = recompute(first["metrics"], rows)
    extra = {k: v for k, v in first.items() if k not in ("task", "metrics", "num_predictions", "config", "git",
                                                          "time", "predictions_file", "routing_stats")}
    config = json.loads(json.dumps(first.get("config")))
    if config and "eval" in config:
        config["eval"]["offset"], config["eval"]["limit"] = rows[0]["id"], len(rows)
    write_task_results(out_dir, task, metrics, rows, config=config, extra={**extra, "parts": info}, subdir="")
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--out", required=True, help="folder for the joined <task>.json and predictions")
    parser.add_argument("parts", nargs="+", help="folders holding each part's <task>.json")
    args = parser.parse_args(argv)
    try:
        metrics = merge(args.task, args.parts, args.out)
    except MergeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

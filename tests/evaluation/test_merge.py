"""eval.offset splits a task into parts; remix_jax.evaluation.merge joins the parts' results into what one run over
all questions gives (the hand-computed scores of test_task_files), and refuses parts that do not fit together."""

import json

import pytest

from remix_jax.evaluation import evaluator, merge, results
from tests.evaluation.test_task_files import EXPECTED, GOLD, QUESTIONS, TASK_YAML, FakeRunner, _eval_cfg, _write


@pytest.fixture
def parts(tmp_path):
    _write(tmp_path / "toy.jsonl", QUESTIONS)
    (tmp_path / "tasks.yaml").write_text(TASK_YAML)
    out = []
    for name, offset, limit in (("a", 0, 1), ("b", 1, 2), ("c", 3, 0)):
        c = _eval_cfg(task_files=str(tmp_path / "tasks.yaml"), tasks="toy", offset=offset, limit=limit)
        res = evaluator.run_task("toy", FakeRunner(), c)
        results.write_task_results(tmp_path / name, "toy", res.metrics, res.predictions, config={"eval": c.to_dict()},
                                   extra={"adapters": "base model"}, subdir="")
        out.append(tmp_path / name)
    return out


def test_parts_join_into_the_whole(parts, tmp_path):
    assert [json.loads((p / "toy.json").read_text())["metrics"]["num_examples"] for p in parts] == [1, 2, 1]
    metrics = merge.merge("toy", [str(p) for p in reversed(parts)], str(tmp_path / "all"))
    for metric, preds in EXPECTED.items():
        p = sum(int(x == g) for x, g in zip(preds, GOLD, strict=True)) / 4
        assert metrics[metric] == pytest.approx(p)
        assert metrics[f"{metric}_stderr"] == pytest.approx((p * (1 - p) / 3) ** .5)
    assert metrics["num_examples"] == 4 and metrics["accuracy"] == metrics["acc"]
    rec = json.loads((tmp_path / "all" / "toy.json").read_text())
    assert [p["offset"] for p in rec["parts"]] == [0, 1, 3] and rec["config"]["eval"]["offset"] == 0
    rows = [json.loads(x) for x in (tmp_path / "all" / "toy.predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2, 3]
    with pytest.raises(merge.MergeError, match="exists"):
        merge.merge("toy", [str(p) for p in parts], str(tmp_path / "all"))


def test_parts_that_do_not_fit(parts, tmp_path):
    with pytest.raises(merge.MergeError, match="starts at question 3, the parts before end at 0"):
        merge.merge("toy", [str(parts[0]), str(parts[2])], str(tmp_path / "gap"))
    rec = json.loads((parts[1] / "toy.json").read_text())
    rec["config"]["eval"]["seed"] = 5
    (parts[1] / "toy.json").write_text(json.dumps(rec))
    with pytest.raises(merge.MergeError, match="under another config"):
        merge.merge("toy", [str(p) for p in parts], str(tmp_path / "cfg"))
    assert merge.main(["--task=toy", f"--out={tmp_path / 'cli'}", str(tmp_path / "missing")]) == 2


def test_offset_beyond_the_file(tmp_path):
    from remix_jax.data.sources import DataError

    _write(tmp_path / "toy.jsonl", QUESTIONS)
    (tmp_path / "tasks.yaml").write_text(TASK_YAML)
    with pytest.raises(DataError, match="has 4 questions; eval.offset=4 skips them all"):
        evaluator.run_task("toy", FakeRunner(), _eval_cfg(task_files=str(tmp_path / "tasks.yaml"), offset=4))

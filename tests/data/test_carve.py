"""Validation carving: a partition of the source's rows, reproducible from the seed, never overwriting a carve."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from remix_jax.data import carve as carve_lib


def _rows(n):
    return [{"question": f"q{i} ü", "answer": f"#### {i}"} for i in range(n)]


def _write_jsonl(path, rows, blank_every=0):
    lines = []
    for i, r in enumerate(rows):
        lines.append(json.dumps(r))
        if blank_every and i % blank_every == 0:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("as_list", [False, True])
def test_partition_in_order(tmp_path, as_list):
    rows = _rows(50)
    src = tmp_path / ("train.json" if as_list else "train.jsonl")
    if as_list:
        src.write_text(json.dumps(rows, indent=2))
    else:
        _write_jsonl(src, rows, blank_every=7)
    m = carve_lib.carve(src, tmp_path / "out", num_val=12, seed=3)
    val_idx = sorted(np.random.default_rng(3).choice(50, size=12, replace=False).tolist())
    assert m["validation_rows"] == val_idx
    assert _read(tmp_path / "out" / "validation.jsonl") == [rows[i] for i in val_idx]
    assert _read(tmp_path / "out" / "train.jsonl") == [r for i, r in enumerate(rows) if i not in val_idx]
    assert (m["num_rows"], m["num_train"], m["num_validation"]) == (50, 38, 12)
    on_disk = json.loads((tmp_path / "out" / "carve.json").read_text())
    assert on_disk == m and on_disk["source"]["size"] == src.stat().st_size


def test_seed_changes_the_split_and_rerun_keeps_it(tmp_path):
    src = tmp_path / "train.jsonl"
    _write_jsonl(src, _rows(40))
    a = carve_lib.carve(src, tmp_path / "a", 10, seed=0)
    b = carve_lib.carve(src, tmp_path / "b", 10, seed=1)
    assert a["validation_rows"] != b["validation_rows"]
    before = (tmp_path / "a" / "train.jsonl").stat().st_mtime_ns
    assert carve_lib.carve(src, tmp_path / "a", 10, seed=0) == a  # same carve: kept as it is
    assert (tmp_path / "a" / "train.jsonl").stat().st_mtime_ns == before


def test_refuses_a_different_or_damaged_carve(tmp_path):
    src = tmp_path / "train.jsonl"
    _write_jsonl(src, _rows(40))
    out = tmp_path / "out"
    carve_lib.carve(src, out, 10, seed=0)
    with pytest.raises(carve_lib.CarveError, match=r"carve.json: a different carve is there \(differs in seed\)"):
        carve_lib.carve(src, out, 10, seed=1)
    _write_jsonl(src, _rows(41))
    with pytest.raises(carve_lib.CarveError, match=r"differs in source"):
        carve_lib.carve(src, out, 10, seed=0)
    _write_jsonl(src, _rows(40))
    (out / "validation.jsonl").write_text("{}\n")
    with pytest.raises(carve_lib.CarveError, match=r"validation.jsonl: missing or changed"):
        carve_lib.carve(src, out, 10, seed=0)
    assert (out / "validation.jsonl").read_text() == "{}\n"  # nothing rewritten


def test_bad_inputs_name_the_line(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text('{"a": 1}\n{"a": 2\n')
    with pytest.raises(carve_lib.CarveError, match=r"train.jsonl:2: not a JSON object"):
        carve_lib.carve(src, tmp_path / "o", 1)
    src.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(carve_lib.CarveError, match=r"train.jsonl:2: a list, not an object"):
        carve_lib.carve(src, tmp_path / "o", 1)
    src.write_text('{"a": 1}\n{"a": 2}\n')
    with pytest.raises(carve_lib.CarveError, match=r"num_val=2: must be between 1 and 1"):
        carve_lib.carve(src, tmp_path / "o", 2)
    with pytest.raises(carve_lib.CarveError, match=r"nope.jsonl: no such file"):
        carve_lib.carve(tmp_path / "nope.jsonl", tmp_path / "o", 1)
    assert not (tmp_path / "o").exists()


def test_cli(tmp_path):
    src = tmp_path / "train.jsonl"
    _write_jsonl(src, _rows(30))
    cmd = [sys.executable, "-m", "remix_jax.data", f"--carve={src}", "--num_val=5", f"--out={tmp_path / 'o'}"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "25 training rows in train.jsonl, 5 in validation.jsonl (seed 0" in ok.stdout
    bad = subprocess.run(cmd[:-2] + ["--num_val=6", f"--out={tmp_path / 'o'}"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: ")
    assert "differs in num_validation" in bad.stderr


# ---- JSON lists: CodeAlpaca's and LLM-Adapters' files


def _code_alpaca_rows(n):
    """CodeAlpaca-format rows written here (the upstream data is CC BY-NC 4.0 and is not in the repository):
    multi-line code with quotes, backslashes and tabs, non-ASCII text, an empty and a missing input."""
    rows = []
    for i in range(n):
        row = {"instruction": f"Write a function f{i} that returns \"{i}\" — ü {i}.",
               "input": "" if i % 3 else f"x = [{i}, {i + 1}]\n\ty = 'a\\\\b'",
               "output": f"def f{i}():\n    \"\"\"Return {i}.\"\"\"\n    return '{i}'\n"}
        if i % 7 == 0:
            del row["input"]
        rows.append(row)
    return rows


def _write_list(path, rows, indent=4):
    path.write_text(json.dumps(rows, indent=indent, ensure_ascii=False), encoding="utf-8")
    return path


def _split_by_reference(rows, num_val, seed):
    """The expected (train, validation) rows: the held-out indices drawn as the module documents it."""
    held = set(np.random.default_rng(seed).choice(len(rows), size=num_val, replace=False).tolist())
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def test_code_alpaca_list_rows_kept_as_they_are(tmp_path):
    rows = _code_alpaca_rows(40)
    src = _write_list(tmp_path / "code_alpaca.json", rows)
    m = carve_lib.carve(src, tmp_path / "out", num_val=9, seed=5)
    train, val = _read(tmp_path / "out" / "train.jsonl"), _read(tmp_path / "out" / "validation.jsonl")
    want_train, want_val = _split_by_reference(rows, 9, 5)
    assert (train, val) == (want_train, want_val)  # every field and value
    assert [list(r) for r in train + val] == [list(r) for r in want_train + want_val]  # and the keys' order
    assert (len(train), len(val), m["num_rows"], m["num_train"]) == (31, 9, 40, 31)
    assert "ü" in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8")  # not escaped


def test_llm_adapters_excerpt_partition_disjoint_and_deterministic(tmp_path, data_dir):
    src = data_dir / "llm_adapters" / "ARC-Challenge" / "train.json"
    rows = json.loads(src.read_text())
    a = carve_lib.carve(src, tmp_path / "a", num_val=20, seed=0)
    b = carve_lib.carve(src, tmp_path / "b", num_val=20, seed=0)
    for name in ("train.jsonl", "validation.jsonl", "carve.json"):  # the same file and seed: the same bytes
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a == b and len(a["validation_rows"]) == 20
    train, val = _read(tmp_path / "a" / "train.jsonl"), _read(tmp_path / "a" / "validation.jsonl")
    assert (len(train), len(val)) == (len(rows) - 20, 20) == (80, 20)
    keys = [(r["instruction"], r["answer"]) for r in rows]
    assert len(set(keys)) == len(rows)  # the excerpt's questions are distinct, so rows can be told apart
    got_train = {(r["instruction"], r["answer"]) for r in train}
    got_val = {(r["instruction"], r["answer"]) for r in val}
    assert not got_train & got_val and got_train | got_val == set(keys)
    assert all(set(r) == {"instruction", "input", "output", "answer"} for r in train + val)
    assert (train, val) == _split_by_reference(rows, 20, 0)


def test_list_and_lines_of_the_same_rows_carve_alike(tmp_path):
    rows = _code_alpaca_rows(25)
    as_list = _write_list(tmp_path / "rows.json", rows, indent=None)
    as_lines = tmp_path / "rows.jsonl"
    _write_jsonl(as_lines, rows, blank_every=4)
    a = carve_lib.carve(as_list, tmp_path / "a", 5, seed=2)
    b = carve_lib.carve(as_lines, tmp_path / "b", 5, seed=2)
    assert a["validation_rows"] == b["validation_rows"] and a["outputs"] == b["outputs"]
    assert a["source"]["sha256"] != b["source"]["sha256"]
    for name in ("train.jsonl", "validation.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_carved_rows_read_back_as_the_source_reads_them(tmp_path):
    from remix_jax.data import source_config
    from remix_jax.data.readers import open_source

    rows = _code_alpaca_rows(12)
    src = _write_list(tmp_path / "code_alpaca.json", rows)
    m = carve_lib.carve(src, tmp_path / "out", 4, seed=1)
    whole = open_source("all", source_config("file", path=str(src), fmt="alpaca"))
    val = open_source("val", source_config("file", path=str(tmp_path / "out" / "validation.jsonl"), fmt="alpaca"))
    train = open_source("train", source_config("file", path=str(tmp_path / "out" / "train.jsonl"), fmt="alpaca"))
    held = m["validation_rows"]
    assert [val.get(i) for i in range(val.size)] == [whole.get(i) for i in held]
    assert [train.get(i) for i in range(train.size)] == [whole.get(i) for i in range(12) if i not in held]


@pytest.mark.parametrize("name, text, message", [
    ("train.json", '[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]\n',
     r"train.json:2: not valid JSON \(Expecting ',' delimiter, column 22\)"),
    ("train.json", '{\n  "instruction": "a",\n  "output": "b"\n}\n',
     r"train.json: a JSON dict, not a list of objects \(as CodeAlpaca and LLM-Adapters files are\)"),
    ("train.json", '[{"instruction": "a", "output": "b"}, ["c"]]', r"train.json: item 1 is a list, not an object"),
    ("train.json", "[]", r"train.json: no rows"),
    ("train.json", "  \n", r"train.json:2: not valid JSON \(Expecting value, column 1\)"),
    ("train.jsonl", "\n\n", r"train.jsonl: no rows"),
    ("data.txt", '[{"a": 1}, 3]', r"data.txt: item 1 is a int, not an object"),  # read as a list by its text
    ("train.jsonl", '[{"a": 1}]\n', r"train.jsonl:1: a list, not an object"),  # .jsonl: lines, whatever the text
])
def test_malformed_list_files_are_errors_naming_them(tmp_path, name, text, message):
    src = tmp_path / name
    src.write_text(text, encoding="utf-8")
    with pytest.raises(carve_lib.CarveError, match=f"^{re.escape(str(tmp_path))}/{message}$"):
        carve_lib.carve(src, tmp_path / "o", 1)
    assert not (tmp_path / "o").exists()


def test_a_file_that_is_not_text_is_an_error_naming_it(tmp_path):
    import gzip

    src = tmp_path / "train.json"
    src.write_bytes(gzip.compress(json.dumps(_code_alpaca_rows(3)).encode()))
    with pytest.raises(carve_lib.CarveError, match=r"train.json: not UTF-8 text \(byte 1\); carve a .jsonl file"):
        carve_lib.carve(src, tmp_path / "o", 1)
    r = subprocess.run([sys.executable, "-m", "remix_jax.data", f"--carve={src}", "--num_val=1",
                        f"--out={tmp_path / 'o'}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == f"error: {src}: not UTF-8 text (byte 1); carve a .jsonl file " \
                                                       "or a .json list"
    assert not (tmp_path / "o").exists()

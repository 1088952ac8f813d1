"""Validation carving: a partition of the source's rows, reproducible from the seed, never overwriting a carve."""

import json
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

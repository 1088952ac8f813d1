"""eval.template="chat": contexts written by the tokenizer's chat template (few-shot as a multi-turn conversation, as
lm-eval's --apply_chat_template --fewshot_as_multiturn), checked against strings written out by hand for a 2-shot
GSM8K question and an ARC-style multiple-choice question; the plain format unchanged; one BOS; generation stopping at
the template's end-of-turn token; HumanEval in lm-eval's humaneval_instruct form; the errors; and
``python -m remix_jax.evaluate --config.eval.template=chat``."""

import json
import random

import jax
import numpy as np
import pytest

from remix_jax.data.sources import DataError
from remix_jax.evaluation import chat_format, evaluator
from remix_jax.evaluation.eval_config import EvalConfigError, default_eval_config, validate_eval_config
from remix_jax.inference import generation
from remix_jax.models.llama import Decoder, init_params
from remix_jax.models.model_config import named_config
from tests import tiny_run

# ChatML, with the BOS the template writes itself (as Llama 3's template does).
CHATML = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Gemma's turn markers: an end-of-turn token that is neither EOS nor one of tokenizer.END_OF_TURN_TOKENS.
GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
         "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def make_tokenizer(specials=("<s>", "</s>", "<|im_start|>", "<|im_end|>"), template=CHATML):
    """Byte-level tokens (no merges) after ``specials`` (ids 0, 1, ...); BOS "<s>" added by its post-processor on
    every encode with special tokens, EOS "</s>"; 260 ids, within the tiny model's 272."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    names = [*specials, *sorted(pre_tokenizers.ByteLevel.alphabet())]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(names)}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", names.index("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    if template:
        fast.chat_template = template
    return fast


@pytest.fixture(scope="module")
def chatml():
    return make_tokenizer()


GSM8K_TRAIN = [
    {"question": "Ann has 3 apples and buys 2 more. How many apples does she have?",
     "answer": "She has 3 + 2 = <<3+2=5>>5 apples.\n#### 5"},
    {"question": "A box holds 4 pens. How many pens are in 2 boxes?",
     "answer": "2 boxes hold 2 * 4 = <<2*4=8>>8 pens.\n#### 8"},
]
GSM8K_TEST = [{"question": "Tom reads 6 pages a day. How many pages does he read in 3 days?",
               "answer": "He reads 6 * 3 = <<6*3=18>>18 pages.\n#### 18"}]
# The demonstrations are train rows 1, 0 (random.Random(0).sample(range(2), 2)), their answers without the calculator
# annotations and with "#### N" written "The answer is N.".
GSM8K_CHAT = (
    "<s><|im_start|>user\nA box holds 4 pens. How many pens are in 2 boxes?<|im_end|>\n"
    "<|im_start|>assistant\n2 boxes hold 2 * 4 = 8 pens.\nThe answer is 8.<|im_end|>\n"
    "<|im_start|>user\nAnn has 3 apples and buys 2 more. How many apples does she have?<|im_end|>\n"
    "<|im_start|>assistant\nShe has 3 + 2 = 5 apples.\nThe answer is 5.<|im_end|>\n"
    "<|im_start|>user\nTom reads 6 pages a day. How many pages does he read in 3 days?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
GSM8K_PLAIN = (
    "### Instruction:\nA box holds 4 pens. How many pens are in 2 boxes?\n\n### Response:\n"
    "2 boxes hold 2 * 4 = 8 pens.\nThe answer is 8.\n\n"
    "### Instruction:\nAnn has 3 apples and buys 2 more. How many apples does she have?\n\n### Response:\n"
    "She has 3 + 2 = 5 apples.\nThe answer is 5.\n\n"
    "### Instruction:\nTom reads 6 pages a day. How many pages does he read in 3 days?\n\n### Response:\n"
)

ARC_TRAIN = [{"question": "Which of these is a mammal?",
              "choices": {"text": ["shark", "whale", "trout"], "label": ["A", "B", "C"]}, "answerKey": "B"}]
ARC_TEST = [{"question": "What do plants need to make food?",
             "choices": {"text": ["sunlight", "sand", "noise", "darkness"], "label": ["A", "B", "C", "D"]},
             "answerKey": "A"}]
ARC_TASK = dict(doc_to_text="Question: {{question}}\nAnswer:", doc_to_choice="{{choices.text}}",
                doc_to_target="{{choices.label.index(answerKey)}}", num_fewshot=1,
                description="The following are questions about science.\n\n")
# lm-eval puts the description in a system turn.
ARC_CHAT = (
    "<s><|im_start|>system\nThe following are questions about science.\n\n<|im_end|>\n"
    "<|im_start|>user\nQuestion: Which of these is a mammal?\nAnswer:<|im_end|>\n"
    "<|im_start|>assistant\nwhale<|im_end|>\n"
    "<|im_start|>user\nQuestion: What do plants need to make food?\nAnswer:<|im_end|>\n"
    "<|im_start|>assistant\n"
)
ARC_PLAIN = ("The following are questions about science.\n\n"
             "Question: Which of these is a mammal?\nAnswer: whale\n\n"
             "Question: What do plants need to make food?\nAnswer:")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def files(tmp_path):
    return {"gsm8k_train": _write(tmp_path / "gsm8k_train.jsonl", GSM8K_TRAIN),
            "gsm8k_test": _write(tmp_path / "gsm8k_test.jsonl", GSM8K_TEST),
            "arc_train": _write(tmp_path / "arc_train.jsonl", ARC_TRAIN),
            "arc_test": _write(tmp_path / "arc_test.jsonl", ARC_TEST)}


def eval_cfg(files, template, **kw):
    c = default_eval_config()
    c.template, c.tasks = template, "gsm8k"
    c.gsm8k.path, c.gsm8k.shots_path, c.gsm8k.shots = files["gsm8k_test"], files["gsm8k_train"], 2
    c.task_defs = {"arc_toy": {**ARC_TASK, "data": files["arc_test"], "fewshot_data": files["arc_train"]}}
    for k, v in kw.items():
        c[k] = v
    return c


class FakeRunner:
    """Records what the tasks ask; log-likelihoods favour the first choice."""

    def __init__(self, tokenizer):
        self.tokenizer, self.loglik_calls = tokenizer, []

    def loglik(self, contexts, continuations):
        self.loglik_calls.append((list(contexts), list(continuations)))
        return -np.arange(1.0, len(contexts) + 1), np.ones(len(contexts), np.int64)

    def record_routing(self, *a):
        pass

    def take_routing(self):
        return None


def test_shot_draw_as_the_expected_strings_assume():
    assert random.Random(0).sample(range(2), 2) == [1, 0]


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_gsm8k_two_shot_context(chatml, files, template):
    seen = []

    def generator(texts, gen, stops, rng, **kw):
        seen.append((list(texts), list(stops), kw, gen.stop_token_ids))
        return ["2 boxes.\n\n### Instruction: The answer is 18."]

    c = eval_cfg(files, template)
    assert validate_eval_config(c) == ["gsm8k"]
    res = evaluator.run_task("gsm8k", FakeRunner(chatml), c, generator)
    ((texts, stops, kw, stop_ids),) = seen
    if template == "chat":
        # Stops at EOS and <|im_end|> (ids 1, 3) only: no plain stop string cuts a chat completion, and the prompt
        # is encoded without adding special tokens (the template wrote its BOS).
        assert (texts, stops, kw, stop_ids) == ([GSM8K_CHAT], [], {"add_special_tokens": False}, (1, 3))
    else:
        assert (texts, stops, kw, stop_ids) == ([GSM8K_PLAIN], ["\n\n### Instruction:"], {}, (1, 3))
    assert res.metrics["template"] == template and res.metrics["num_correct"] == 1


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_arc_style_multiple_choice_context(chatml, files, template):
    runner = FakeRunner(chatml)
    res = evaluator.run_task("arc_toy", runner, eval_cfg(files, template, tasks="arc_toy"))
    ((contexts, conts),) = runner.loglik_calls
    choices = ["sunlight", "sand", "noise", "darkness"]
    if template == "chat":  # each choice continues the generation prompt, with no delimiter (lm-eval)
        assert (contexts, conts) == ([ARC_CHAT] * 4, choices)
    else:
        assert (contexts, conts) == ([ARC_PLAIN] * 4, [" " + c for c in choices])
    assert res.metrics["template"] == template and res.metrics["acc"] == 1.0


def test_chat_context_has_one_bos(chatml, files):
    """The template writes BOS and the tokenizer adds one on encode(add_special_tokens=True): the scoring and the
    generation encodings of a chat context both start with exactly one."""
    runner = evaluator.ModelRunner(None, {}, chatml, routing_stats=False)
    ids = runner.encode(ARC_CHAT)
    assert ids[0] == chatml.bos_token_id and ids.count(chatml.bos_token_id) == 1
    from remix_jax.models.tokenizer import encode_prompt

    gen_ids = encode_prompt(chatml, GSM8K_CHAT, add_special_tokens=False)
    assert gen_ids[0] == chatml.bos_token_id and gen_ids.count(chatml.bos_token_id) == 1
    assert encode_prompt(chatml, GSM8K_CHAT).count(chatml.bos_token_id) == 2  # what add_special_tokens=False avoids


def test_end_of_turn_ids():
    chatml, gemma = make_tokenizer(), make_tokenizer(("<end_of_turn>", "<s>", "</s>", "<start_of_turn>"), GEMMA)
    assert chat_format.end_of_turn_ids(chatml) == (3,)  # <|im_end|>
    assert chat_format.end_of_turn_ids(gemma) == (0,)  # <end_of_turn>
    text_turns = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}assistant:{% endif %}")
    assert chat_format.end_of_turn_ids(make_tokenizer(template=text_turns)) == ()


def test_chat_generation_stops_at_end_of_turn(files, monkeypatch):
    """A tiny decoder whose final norm is zero gives all-zero logits, so greedy decoding picks id 0: Gemma's
    <end_of_turn> in this tokenizer. In the chat format generation stops there at once, with one BOS in front
    of the prompt; the plain format keeps its stop tokens (EOS only here) and runs to max_new_tokens."""
    tok = make_tokenizer(("<end_of_turn>", "<s>", "</s>", "<start_of_turn>"), GEMMA)
    cfg = named_config("tiny", vocab_size=272)
    variables = init_params(Decoder(cfg), jax.random.key(0))
    variables["params"]["final_norm"]["scale"] = np.zeros_like(variables["params"]["final_norm"]["scale"])
    calls = []
    real = generation.generate

    def spy(model, variables, prompts, config, *a, **kw):
        out = real(model, variables, prompts, config, *a, **kw)
        calls.append((prompts, config.stop_token_ids, out))
        return out

    monkeypatch.setattr(generation, "generate", spy)
    runner = evaluator.ModelRunner(Decoder(cfg), variables, tok, batch_size=2, routing_stats=False)
    for template in ("chat", "plain"):
        c = eval_cfg(files, template)
        c.gsm8k.max_new_tokens = 5
        res = evaluator.run_task("gsm8k", runner, c)
        assert res.predictions[0]["output"] == ""
    (chat_ids, chat_stops, chat_out), (plain_ids, plain_stops, plain_out) = [(p[0], s, o) for p, s, o in calls]
    assert chat_stops == (0, 2) and chat_out.tokens == [[]] and chat_out.stopped == [True]
    assert plain_stops == (2,) and plain_out.tokens == [[0] * 5] and plain_out.stopped == [False]
    bos = tok.bos_token_id
    assert chat_ids[:2] == [bos, tok.convert_tokens_to_ids("<start_of_turn>")] and chat_ids.count(bos) == 1
    assert plain_ids[0] == bos and plain_ids.count(bos) == 1  # the plain prompt as before: the tokenizer's BOS


HUMANEVAL = [
    {"task_id": "T/0", "prompt": 'def add(a, b):\n    """Sum."""\n', "canonical_solution": "    return a + b\n",
     "test": "def check(f):\n    assert f(1, 2) == 3\n", "entry_point": "add"},
    {"task_id": "T/1", "prompt": 'def neg(a):\n    """Negate."""\n', "canonical_solution": "    return -a\n",
     "test": "def check(f):\n    assert f(2) == -2\n", "entry_point": "neg"},
]
# T/0 with one demonstration (T/1) in the chat form of lm-eval's humaneval_instruct: the assistant's turn is begun
# with the prompt in a code block, which the model continues.
HUMANEVAL_CHAT_0 = (
    "<s><|im_start|>user\nWrite a solution to the following problem and make sure that it passes the tests:\n"
    '```def neg(a):\n    """Negate."""\n<|im_end|>\n'
    '<|im_start|>assistant\nHere is the completed function:\n```python\ndef neg(a):\n    """Negate."""\n\n'
    "    return -a\n```<|im_end|>\n"
    "<|im_start|>user\nWrite a solution to the following problem and make sure that it passes the tests:\n"
    '```def add(a, b):\n    """Sum."""\n<|im_end|>\n'
    '<|im_start|>assistant\nHere is the completed function:\n```python\ndef add(a, b):\n    """Sum."""\n\n'
)
HUMANEVAL_PLAIN_0 = ('def neg(a):\n    """Negate."""\n    return -a\n\n\n'
                     'def add(a, b):\n    """Sum."""\n')


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_humaneval_chat_form(chatml, tmp_path, template):
    """The chat form's context written out by hand, the closing fence among the stop strings and cutting the
    completion, and the program run still the prompt + the completion (both problems pass in the sandbox)."""
    c = default_eval_config()
    c.template, c.tasks = template, "humaneval"
    c.humaneval.path, c.humaneval.shots = _write(tmp_path / "he.jsonl", HUMANEVAL), 1
    seen = []

    def generator(texts, gen, stops, rng, **kw):
        seen.append((list(texts), list(stops), kw, gen.stop_token_ids))
        bodies = ["    return a + b\n", "    return -a\n"]
        return [b + "```\nThis function works." if template == "chat" else b + "\ndef more():\n" for b in bodies]

    res = evaluator.run_task("humaneval", FakeRunner(chatml), c, generator)
    ((texts, stops, kw, stop_ids),) = seen
    if template == "chat":
        assert texts[0] == HUMANEVAL_CHAT_0 and texts[1].endswith('```python\ndef neg(a):\n    """Negate."""\n\n')
        assert (stops[-1], kw, stop_ids) == ("```", {"add_special_tokens": False}, (1, 3))
    else:
        assert texts[0] == HUMANEVAL_PLAIN_0 and (kw, stop_ids) == ({}, (1, 3)) and "```" not in stops
    assert [r["completion"] for r in res.predictions] == ["    return a + b\n", "    return -a\n"]
    assert res.metrics["pass@1"] == 1.0 and res.metrics["template"] == template


def test_no_chat_template_is_one_line_error(files):
    plain_tok = make_tokenizer(template=None)
    with pytest.raises(EvalConfigError) as e:
        chat_format.check_tokenizer(eval_cfg(files, "chat"), plain_tok, "/m/tiny")
    assert str(e.value) == ("eval.template='chat': the tokenizer of model.path='/m/tiny' has no chat_template (use "
                            "eval.template='plain', or set eval.tokenizer to a tokenizer with a chat template)")
    with pytest.raises(EvalConfigError, match=r"^eval.template='chat': the tokenizer of eval.tokenizer='/t/x' has"):
        chat_format.check_tokenizer(eval_cfg(files, "chat", tokenizer="/t/x"), plain_tok, "/m/tiny")
    chat_format.check_tokenizer(eval_cfg(files, "plain"), plain_tok, "/m/tiny")  # plain needs none
    chat_format.check_tokenizer(eval_cfg(files, "chat"), make_tokenizer(), "/m/tiny")
    with pytest.raises(EvalConfigError, match="has no chat_template"):  # a runner used directly errs the same way
        evaluator.run_task("gsm8k", FakeRunner(plain_tok), eval_cfg(files, "chat"), lambda *a, **k: [""])


def test_bad_template_value(files):
    with pytest.raises(EvalConfigError) as e:
        validate_eval_config(eval_cfg(files, "Chat"))
    assert str(e.value) == "invalid eval config:\n  eval.template: 'Chat' is not 'plain' or 'chat'"


def test_template_refusing_a_system_turn_names_the_question(files):
    strict = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
              + CHATML)
    with pytest.raises(DataError) as e:
        evaluator.run_task("arc_toy", FakeRunner(make_tokenizer(template=strict)),
                           eval_cfg(files, "chat", tasks="arc_toy"))
    assert str(e.value) == f"{files['arc_test']}:1: task arc_toy, the chat template: System role not supported"


def test_template_refusing_humaneval_turns_names_the_problem(tmp_path):
    strict = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ raise_exception('no assistant turns') }}"
              "{% endif %}{% endfor %}" + CHATML)
    c = default_eval_config()
    c.template, c.tasks = "chat", "humaneval"
    c.humaneval.path, c.humaneval.shots = _write(tmp_path / "he.jsonl", HUMANEVAL), 1
    with pytest.raises(DataError) as e:
        evaluator.run_task("humaneval", FakeRunner(make_tokenizer(template=strict)), c, lambda *a, **k: [""])
    assert str(e.value) == f"{c.humaneval.path}: problem T/0, the chat template: no assistant turns"


def test_command_line_chat(tmp_path, data_dir):
    """python -m remix_jax.evaluate --config.eval.template=chat on the tiny model: the results record the template;
    a tokenizer without a chat template is a one-line error naming it."""
    model = tiny_run.make_tiny_hf(tmp_path / "model")  # its own tokenizer has no chat template
    make_tokenizer().save_pretrained(str(tmp_path / "chat_tok"))
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        "from remix_jax.run_config import default_config\n"
        "from remix_jax.evaluation.eval_config import default_eval_config\n\n\n"
        "def get_config():\n"
        "    c = default_config()\n"
        f"    c.model.path = {str(model)!r}\n"
        "    c.eval = default_eval_config()\n"
        "    c.eval.tasks, c.eval.limit, c.eval.batch_size = 'gsm8k,arc_c', 2, 4\n"
        f"    c.eval.gsm8k.path = {str(data_dir / 'gsm8k' / 'test.jsonl')!r}\n"
        f"    c.eval.gsm8k.shots_path = {str(data_dir / 'gsm8k' / 'train.jsonl')!r}\n"
        "    c.eval.gsm8k.shots, c.eval.gsm8k.max_new_tokens = 1, 4\n"
        f"    c.eval.arc_c.path = {str(data_dir / 'llm_adapters' / 'ARC-Challenge' / 'test.json')!r}\n"
        "    c.eval.arc_c.shots = 0\n"
        "    return c\n")
    ok = tiny_run.cli("evaluate", f"--config={cfg}", f"--workdir={tmp_path / 'run'}", "--config.eval.template=chat",
                      f"--config.eval.tokenizer={tmp_path / 'chat_tok'}", timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    for task in ("gsm8k", "arc_c"):
        rec = json.loads((tmp_path / "run" / "eval" / f"{task}.json").read_text())
        assert rec["config"]["eval"]["template"] == "chat" and rec["metrics"]["template"] == "chat"
        assert rec["metrics"]["num_examples"] == 2
    bad = tiny_run.cli("evaluate", f"--config={cfg}", f"--workdir={tmp_path / 'run2'}",
                       "--config.eval.template=chat", timeout=300)
    assert bad.returncode == 2
    assert tiny_run.stderr_lines(bad)[-1] == (
        f"error: eval.template='chat': the tokenizer of model.path={str(model)!r} has no chat_template (use "
        "eval.template='plain', or set eval.tokenizer to a tokenizer with a chat template)")


def test_training_with_chat_eval_and_no_chat_template_stops_before_training(tmp_path):
    """python -m remix_jax.main: the evaluation's tokenizer is checked when the run's evaluator is made, before the
    first step."""
    model = tiny_run.make_tiny_hf(tmp_path / "model")
    data = tiny_run.write_gsm8k(tmp_path / "gsm8k.jsonl")
    cfg = tiny_run.write_config(tmp_path / "cfg.py", model, data, data, **{"eval.template": "chat"})
    r = tiny_run.cli("main", f"--config={cfg}", f"--workdir={tmp_path / 'run'}", timeout=300)
    assert r.returncode == 2
    assert tiny_run.stderr_lines(r)[-1] == (
        f"error: eval.template='chat': the tokenizer of model.path={str(model)!r} has no chat_template (use "
        "eval.template='plain', or set eval.tokenizer to a tokenizer with a chat template)")
    assert "train step memory" not in r.stdout + r.stderr  # refused before the step compiled
    # the run's records (its config, its parameter counts), no step, no checkpoint
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "params.json"]

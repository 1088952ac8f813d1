"""Data test fixtures: a small byte-level BPE tokenizer with a chat template, and TFDS datasets built once."""

import json

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(texts):
    """A lossless byte-level BPE (about 400 tokens) wrapped in PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        chat_template=CHAT_TEMPLATE,
    )


@pytest.fixture(scope="session")
def tokenizer(data_dir):
    lines = (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()[:300]
    texts = [json.loads(x)["question"] + json.loads(x)["answer"] for x in lines]
    return make_tokenizer(texts)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    import tensorflow_datasets as tfds

    tfds.display_progress_bar(False)
    return tmp_path_factory.mktemp("tfds")


# CodeAlpaca-format rows written by hand (the upstream CodeAlpaca data is CC BY-NC 4.0 and is not in the
# repository): code_alpaca_2k.json's layout, a JSON list of {instruction, input, output}, with an empty
# input, a missing input key, multi-line code and non-ASCII text.
CODE_ALPACA_ROWS = [
    {"instruction": "Write a Python function that returns the square of a number.", "input": "",
     "output": "def square(x):\n    return x * x"},
    {"instruction": "Reverse the given string.", "input": "string = \"héllo wörld\"",
     "output": "reversed_string = string[::-1]"},
    {"instruction": "Write a SQL query that selects every column of the table 'users'.", "input": "",
     "output": "SELECT * FROM users;"},
    {"instruction": "Explain what the following code prints.", "input": "for i in range(3):\n    print(i)",
     "output": "It prints 0, 1 and 2, one per line."},
    {"instruction": "Create an empty list named items.", "output": "items = []"},
]


@pytest.fixture(scope="session")
def code_alpaca_dir(tmp_path_factory):
    """A manual_dir for ``code_alpaca/2k`` holding CODE_ALPACA_ROWS as code_alpaca_2k.json."""
    d = tmp_path_factory.mktemp("code_alpaca")
    (d / "code_alpaca_2k.json").write_text(json.dumps(CODE_ALPACA_ROWS, indent=4), encoding="utf-8")
    return d


@pytest.fixture(scope="session")
def built(tfds_dir, data_dir, code_alpaca_dir, humaneval_file):
    """The project builders prepared once from the committed excerpts: name -> builder."""
    from remix_jax.data import builders

    return {
        "gsm8k": builders.prepare("gsm8k", data_dir=tfds_dir, manual_dir=data_dir / "gsm8k"),
        "llm_adapters/arc_challenge": builders.prepare(
            "llm_adapters/arc_challenge", data_dir=tfds_dir, manual_dir=data_dir / "llm_adapters"
        ),
        "code_alpaca/2k": builders.prepare("code_alpaca/2k", data_dir=tfds_dir, manual_dir=code_alpaca_dir),
        "humaneval": builders.prepare("humaneval", data_dir=tfds_dir, files={"test": humaneval_file}),
    }


def gsm8k_config(data_dir, tfds_dir, **overrides):
    """A data config over the GSM8K train excerpt (the first 300 rows of the real file)."""
    from remix_jax.data import default_data_config, source_config

    cfg = default_data_config()
    cfg.sources.gsm8k = source_config("gsm8k", manual_dir=str(data_dir / "gsm8k"))
    cfg.tfds_data_dir = str(tfds_dir)
    cfg.update(overrides)
    return cfg

"""Tokenizers and model configs read without transformers (models/tokenizer.Tokenizer, hf_io._complete_llama_config)
give what transformers gives: the same ids, texts, special tokens, vocabulary and rendered chat templates as
transformers' tokenizer of the same file, on real texts, and the same ModelConfig as AutoConfig; and the commands'
loading path imports neither transformers nor torch."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from remix_jax.models import hf_io
from remix_jax.models.model_config import ModelConfig, from_hf_config, named_config, to_hf_config_dict
from remix_jax.models.tokenizer import Tokenizer, load_tokenizer
from tests.tiny_run import REPO, byte_tokenizer

ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "pad_token", "bos_token_id", "eos_token_id", "unk_token_id",
              "pad_token_id", "all_special_ids", "all_special_tokens", "special_tokens_map", "chat_template",
              "name_or_path")

CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}[SYS]{{ m['content'] | trim }}\n"
                 "{% elif m['role'] == 'user' %}{{ bos_token }}U: {{ m['content'] | tojson }}\n{% else %}"
                 "{% generation %}A: {{ m['content'] }}{{ eos_token }}{% endgeneration %}\n{% endif %}"
                 "{% if loop.index > 5 %}{% break %}{% endif %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}")

CONVERSATIONS = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1 ünïcode 🙂"},
     {"role": "user", "content": "Q2\n\n  x"}],
)


def _texts(data_dir, humaneval_file) -> list[str]:
    with open(data_dir / "gsm8k" / "test.jsonl") as f:
        gsm = [json.loads(line)["question"] for line in f][:100]
    with gzip.open(humaneval_file, "rt") as f:
        he = [json.loads(line)["prompt"] for line in f][:40]
    return gsm + he + ["héllo wörld ñ 日本語 🙂👍🏽", "  leading\n\n\ttabs 12345 3.14159",
                       "<|im_start|>user\nHi<|im_end|>\n", "<|endoftext|>x</s>", "It's we'll THEY'RE",
                       "\r\n\r\n  \t x", ""]


def assert_same_tokenizer(ours, ref, texts):
    assert isinstance(ours, Tokenizer)
    for name in ATTRIBUTES:
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.get_vocab() == ref.get_vocab() and len(ours) == len(ref)
    assert ({i: (str(t), t.special) for i, t in ours.added_tokens_decoder.items()}
            == {i: (str(t), t.special) for i, t in ref.added_tokens_decoder.items()})
    assert ours.backend_tokenizer.to_str() == ref.backend_tokenizer.to_str()
    for text in texts:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == ref.encode(text, add_special_tokens=special), text
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    some = ours.encode(texts[0]) + [ours.eos_token_id]
    assert ours.convert_ids_to_tokens(some) == ref.convert_ids_to_tokens(some)
    assert ours.convert_ids_to_tokens(some[0]) == ref.convert_ids_to_tokens(some[0])
    assert ours.convert_tokens_to_ids(ours.convert_ids_to_tokens(some)) == some
    if ref.chat_template:
        with pytest.raises(NotImplementedError, match="tokenize=False"):  # the text only, never other outputs
            ours.apply_chat_template(CONVERSATIONS[0])
        for conversation in CONVERSATIONS:
            for prompt in (True, False):
                rendered = ours.apply_chat_template(conversation, add_generation_prompt=prompt, tokenize=False)
                assert rendered == ref.apply_chat_template(conversation, add_generation_prompt=prompt, tokenize=False)
                assert ours.apply_chat_template(conversation, add_generation_prompt=prompt, tokenize=False,
                                                chat_template=CHAT_TEMPLATE, bos_token="B") == ref.apply_chat_template(
                    conversation, add_generation_prompt=prompt, tokenize=False, chat_template=CHAT_TEMPLATE,
                    bos_token="B")


def test_gguf_tokenizer_equals_transformers_tokenizer(smollm2_gguf, data_dir, humaneval_file, tmp_path):
    """The GGUF tokenizer against transformers' PreTrainedTokenizerFast on the same backend (how load_tokenizer
    built it before), then the directory save_pretrained writes from it against AutoTokenizer on that directory."""
    ours = load_tokenizer(smollm2_gguf)
    texts = _texts(data_dir, humaneval_file)
    assert_same_tokenizer(ours, ours.transformers_tokenizer(), texts)
    ours.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = load_tokenizer(tmp_path)
    assert_same_tokenizer(again, AutoTokenizer.from_pretrained(tmp_path), texts)
    assert again.encode(texts[0]) == ours.encode(texts[0])


def test_directory_tokenizer_equals_auto_tokenizer(tmp_path, data_dir, humaneval_file):
    """The tests' byte-level tokenizer (its eos/pad token is no vocabulary entry: transformers adds it) saved
    without and with a chat template, against AutoTokenizer."""
    from transformers import AutoTokenizer

    texts = _texts(data_dir, humaneval_file)
    plain, chat = tmp_path / "plain", tmp_path / "chat"
    byte_tokenizer().save_pretrained(plain)
    tok = byte_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(chat)
    for d in (plain, chat):
        ours = load_tokenizer(d)
        assert_same_tokenizer(ours, AutoTokenizer.from_pretrained(d), texts)
        assert ours.name_or_path == str(d)
        assert_same_tokenizer(ours, ours.transformers_tokenizer(), texts[:5])
    assert load_tokenizer(chat).chat_template == CHAT_TEMPLATE and load_tokenizer(plain).chat_template is None


def test_other_directories_load_through_transformers(tmp_path):
    """A tokenizer_config.json with anything beyond the generic class and string special tokens (here
    add_bos_token) loads through AutoTokenizer, as before."""
    from transformers import AutoTokenizer

    byte_tokenizer().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(bos_token="<|endoftext|>", add_bos_token=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    assert not isinstance(tok, Tokenizer)
    ref = AutoTokenizer.from_pretrained(tmp_path)
    assert type(tok) is type(ref) and tok.encode("ab<|endoftext|>") == ref.encode("ab<|endoftext|>")


@pytest.mark.parametrize("shape", ["tiny", "smollm2-135m", "llama3.2-1b"])
def test_complete_llama_config_equals_auto_config(tmp_path, shape):
    """What save_hf_checkpoint writes, and the same without rope_parameters (rope_theta alone) or with an int
    rope_theta, read directly gives AutoConfig's ModelConfig; with a field missing, another architecture or a rope
    scaling it is left to AutoConfig."""
    from transformers import AutoConfig

    cfg = named_config(shape)
    written = to_hf_config_dict(cfg)
    no_params = {k: v for k, v in written.items() if k != "rope_parameters"}
    variants = [written, no_params, {**no_params, "rope_theta": int(cfg.rope_theta)}]
    direct_expected = not cfg.rope_scaling
    for i, raw in enumerate(variants):
        d = tmp_path / str(i)
        d.mkdir()
        (d / "config.json").write_text(json.dumps(raw))
        want = from_hf_config(AutoConfig.from_pretrained(str(d), local_files_only=True))
        direct = hf_io._complete_llama_config(raw)
        assert (direct is not None) == direct_expected
        if direct is not None:
            assert from_hf_config(direct) == want
        assert hf_io._read_config(d) == want and isinstance(want, ModelConfig)
    for other in ({**written, "model_type": "qwen2"}, {k: v for k, v in written.items() if k != "head_dim"},
                  {**written, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
                  {**written, "vocab_size": float(cfg.vocab_size)}):
        assert hf_io._complete_llama_config(other) is None


def test_loading_imports_neither_transformers_nor_torch(tmp_path, smollm2_gguf):
    """A fresh interpreter imports the commands, then loads a Hugging Face directory written by save_hf_checkpoint
    (config and tokenizer) and a GGUF file's tokenizer, as the commands do: transformers (which imports torch,
    about two seconds) is never imported."""
    from tests.tiny_run import make_tiny_hf

    model = make_tiny_hf(tmp_path / "model")
    code = (
        "import sys\n"
        "import remix_jax.evaluate, remix_jax.generate, remix_jax.main\n"
        "from remix_jax.models.loading import load_model_config, load_tokenizer\n"
        f"cfg = load_model_config({str(model)!r})\n"
        f"tok = load_tokenizer({str(model)!r})\n"
        f"gguf = load_tokenizer({str(smollm2_gguf)!r})\n"
        "assert cfg.vocab_size == 272 and tok.encode('ab') and gguf.encode('ab')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"

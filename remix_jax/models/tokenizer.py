"""Tokenizers from a Hugging Face model directory or from a GGUF file, behind one API.

Both paths return an object with transformers' ``PreTrainedTokenizerFast`` API for what the package uses
(encode / decode / apply_chat_template, bos/eos/pad/unk tokens and ids, chat template, vocabulary, special ids,
save_pretrained):

- a .gguf file: rebuilt with the ``tokenizers`` library from the GGUF vocabulary, merges, token types
  and special tokens, with the pre-tokenizer llama.cpp uses for the file's ``tokenizer.ggml.pre``,
  plus bos/eos/pad/unk ids and the chat template from the metadata, as a ``Tokenizer``;
- a directory whose tokenizer_config.json names the generic class (``TokenizersBackend`` or
  ``PreTrainedTokenizerFast``) with plain string special tokens and nothing else to interpret (what
  ``save_pretrained`` of such a tokenizer writes): its tokenizer.json as a ``Tokenizer``;
- any other directory: transformers' AutoTokenizer on it.

``Tokenizer`` (models/text_tokenizer.py) gives the ids, texts and rendered chat templates transformers gives
without importing transformers, which imports torch (about two seconds at every start of a command);
``save_pretrained`` and ``transformers_tokenizer()`` build transformers' tokenizer as before (tests compare the two
on real files).

Only byte-level BPE GGUF vocabularies (``tokenizer.ggml.model == "gpt2"``: SmolLM2, Llama 3, Qwen2,
Mistral-Nemo, ...) are supported; SentencePiece vocabularies (``"llama"``) are refused with a clear
error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from remix_jax.models.model_config import ModelLoadError
from remix_jax.models.text_tokenizer import SPECIAL_ATTRIBUTES, Tokenizer

# llama.cpp token types (gguf.TokenType).
_CONTROL, _USER_DEFINED = 3, 4

_GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Names of end-of-turn tokens that stop generation when present in a vocabulary.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<|end|>")


def _pre_tokenizer(pre: str, path: str):
    """The pre-tokenizer llama.cpp applies for ``tokenizer.ggml.pre`` (byte-level BPE vocabularies)."""
    from tokenizers import Regex, pre_tokenizers

    def split_then_bytes(regex: str):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])

    if pre in ("smollm", "starcoder", "refact", "codeshell", "smaug-bpe"):
        # Single digits, then the GPT-2 regex (SmolLM2's tokenizer.json: Digits + ByteLevel).
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)])
    if pre in ("llama-bpe", "llama3", "dbrx", "tekken"):
        return split_then_bytes(_LLAMA3_REGEX)
    if pre in ("qwen2", "deepseek-r1-qwen"):
        return split_then_bytes(_QWEN2_REGEX)
    if pre in ("gpt-2", "gpt2", "default", "olmo", "phi-2", "jina-es", "mpt", "stablelm2"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    raise ModelLoadError(f"{path}: unsupported GGUF pre-tokenizer tokenizer.ggml.pre={pre!r}")


def _gguf_parts(path: str):
    """(backend tokenizer, named special tokens, chat template) of a GGUF file's vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    from remix_jax.models.gguf_io import _open_reader, field_value

    reader = _open_reader(path)
    kind = field_value(reader, "tokenizer.ggml.model")
    if kind is None:
        raise ModelLoadError(
            f"{path}: GGUF file has no tokenizer (metadata key 'tokenizer.ggml.model' missing)")
    if kind != "gpt2":
        raise ModelLoadError(
            f"{path}: unsupported GGUF tokenizer model {kind!r} (supported: gpt2 byte-level BPE)")
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    merges = field_value(reader, "tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise ModelLoadError(f"{path}: GGUF tokenizer lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    types = field_value(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise ModelLoadError(f"{path}: {len(types)} token types for {len(tokens)} tokens")

    vocab = {tok: i for i, tok in enumerate(tokens)}
    pairs = []
    for line_no, m in enumerate(merges):
        parts = m.split(" ")
        if len(parts) != 2:
            raise ModelLoadError(f"{path}: malformed merge #{line_no} {m!r} in tokenizer.ggml.merges")
        pairs.append((parts[0], parts[1]))
    tok = Tokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(field_value(reader, "tokenizer.ggml.pre", "default"), path)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    special = [AddedToken(tokens[i], normalized=False, special=True) for i, t in enumerate(types)
               if t == _CONTROL]
    user = [AddedToken(tokens[i], normalized=False, special=False) for i, t in enumerate(types)
            if t == _USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)

    def token_at(key: str) -> str | None:
        idx = field_value(reader, key)
        if idx is None:
            return None
        if not 0 <= int(idx) < len(tokens):
            raise ModelLoadError(f"{path}: {key}={idx} is outside the vocabulary of {len(tokens)} tokens")
        return tokens[int(idx)]

    bos = token_at("tokenizer.ggml.bos_token_id")
    eos = token_at("tokenizer.ggml.eos_token_id")
    if bos is not None and field_value(reader, "tokenizer.ggml.add_bos_token", False):
        bos_id = vocab[bos]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    named = dict(bos_token=bos, eos_token=eos, unk_token=token_at("tokenizer.ggml.unknown_token_id"),
                 pad_token=token_at("tokenizer.ggml.padding_token_id"))
    return tok, named, field_value(reader, "tokenizer.chat_template") or None


def tokenizer_from_gguf(path: str) -> Tokenizer:
    """Rebuild the tokenizer of a GGUF file (a ``Tokenizer``; ``transformers_tokenizer()`` gives the
    ``PreTrainedTokenizerFast`` of the same parts)."""
    backend, named, template = _gguf_parts(path)
    return Tokenizer(backend, special=named, chat_template=template,
                     transformers_factory=lambda: transformers_tokenizer_from_gguf(path))


def transformers_tokenizer_from_gguf(path: str):
    """The tokenizer of a GGUF file as a transformers ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    backend, named, template = _gguf_parts(path)
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                   **{k: v for k, v in named.items() if v is not None})
    if template:
        fast.chat_template = template
    return fast


# tokenizer_config.json keys a directory's tokenizer may hold for it to load as a ``Tokenizer``: the generic class,
# named special tokens as strings, and settings that change nothing the package uses.
_PLAIN_CONFIG_KEYS = {"backend", "tokenizer_class", "model_max_length", "clean_up_tokenization_spaces",
                      "chat_template", *SPECIAL_ATTRIBUTES}
_PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
_PLAIN_FILES = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
_TOKENIZER_FILES = {"special_tokens_map.json", "added_tokens.json", "chat_template.json", "vocab.json", "merges.txt",
                    "tokenizer.model", "additional_chat_templates"}


def _plain_directory_tokenizer(path: str) -> Tokenizer | None:
    """The tokenizer of a model directory as a ``Tokenizer`` where transformers would load it as the generic class
    from its tokenizer.json and nothing more (see ``_PLAIN_CONFIG_KEYS``); None for any other directory."""
    import json

    try:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    if (not isinstance(config, dict) or set(config) - _PLAIN_CONFIG_KEYS
            or config.get("tokenizer_class") not in _PLAIN_CLASSES
            or config.get("backend", "tokenizers") != "tokenizers"
            or config.get("clean_up_tokenization_spaces", False) is not False
            or not all(isinstance(config.get(k), str | None) for k in (*SPECIAL_ATTRIBUTES, "chat_template"))
            or _TOKENIZER_FILES & set(os.listdir(path))):
        return None
    template = config.get("chat_template")
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.exists(jinja):
        if template is not None:
            return None
        with open(jinja, encoding="utf-8") as f:
            template = f.read()
    from tokenizers import Tokenizer as Backend

    try:
        backend = Backend.from_file(os.path.join(path, "tokenizer.json"))
    except Exception:
        return None  # transformers reports it
    # transformers keeps a truncation or padding setting of tokenizer.json and may rewrite the pre-tokenizer of a
    # vocabulary over 100k tokens (older Mistral tokenizers): those load through it.
    if backend.truncation is not None or backend.padding is not None or backend.get_vocab_size() > 100_000:
        return None
    return Tokenizer(backend, special={k: config.get(k) for k in SPECIAL_ATTRIBUTES}, chat_template=template,
                     name_or_path=path, transformers_factory=lambda: _auto_tokenizer(path))


def _auto_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ModelLoadError(f"{path}: cannot load tokenizer: {type(e).__name__}: {e}") from e


def load_tokenizer(path: str | os.PathLike):
    """Tokenizer of a Hugging Face model directory or of a .gguf file (a ``Tokenizer``, or transformers'
    ``PreTrainedTokenizerFast`` for a directory that needs transformers to interpret it)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "tokenizer.json")):
            raise ModelLoadError(f"{path}: model directory has no tokenizer.json")
        return _plain_directory_tokenizer(path) or _auto_tokenizer(path)
    if path.endswith(".gguf"):
        return tokenizer_from_gguf(path)
    raise ModelLoadError(f"{path}: unknown tokenizer format (expected a model directory or a .gguf file)")


def encode_prompt(tokenizer, text: str, chat: bool = False, system: str | None = None,
                  add_special_tokens: bool = True) -> list[int]:
    """Token ids of a prompt; with ``chat`` the text is one user turn in the model's chat template.

    The chat template adds its own special tokens, so they are not added a second time; nor, with
    ``add_special_tokens=False``, to a text that holds them already (a chat template rendered beforehand).
    """
    if not chat:
        return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError("chat formatting was asked for but the tokenizer has no chat template")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer.encode(rendered, add_special_tokens=False))


def stop_token_ids(tokenizer, extra: Sequence[str] = ()) -> tuple[int, ...]:
    """Ids that end generation: eos, the vocabulary's end-of-turn tokens, and ``extra`` tokens.

    An end-of-turn name counts only when it is a special token: Qwen2's vocabulary also holds "</s>" as an
    ordinary text token (id 128247), which is no end of turn there.
    """
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    special = {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    special.update(int(i) for i in tokenizer.all_special_ids)
    for name in END_OF_TURN_TOKENS:
        if name in vocab and int(vocab[name]) in special:
            ids.add(int(vocab[name]))
    ids.update(int(vocab[name]) for name in extra if name in vocab)
    return tuple(sorted(ids))

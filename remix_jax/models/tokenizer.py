"""Tokenizers from a Hugging Face model directory or from a GGUF file, behind one API.

Both paths return a transformers ``PreTrainedTokenizerFast`` (encode / decode /
apply_chat_template, bos/eos/pad ids, chat template):

- a directory: transformers' AutoTokenizer on its tokenizer.json (no torch);
- a .gguf file: rebuilt with the ``tokenizers`` library from the GGUF vocabulary, merges, token types
  and special tokens, with the pre-tokenizer llama.cpp uses for the file's ``tokenizer.ggml.pre``,
  plus bos/eos/pad/unk ids and the chat template from the metadata.

Only byte-level BPE GGUF vocabularies (``tokenizer.ggml.model == "gpt2"``: SmolLM2, Llama 3, Qwen2,
Mistral-Nemo, ...) are supported; SentencePiece vocabularies (``"llama"``) are refused with a clear
error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from remix_jax.models.model_config import ModelLoadError

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


def tokenizer_from_gguf(path: str):
    """Rebuild the tokenizer of a GGUF file as a transformers PreTrainedTokenizerFast."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

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
    kwargs = dict(bos_token=bos, eos_token=eos, unk_token=token_at("tokenizer.ggml.unknown_token_id"),
                  pad_token=token_at("tokenizer.ggml.padding_token_id"))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False,
                                   **{k: v for k, v in kwargs.items() if v is not None})
    template = field_value(reader, "tokenizer.chat_template")
    if template:
        fast.chat_template = template
    return fast


def load_tokenizer(path: str | os.PathLike):
    """Tokenizer of a Hugging Face model directory or of a .gguf file (PreTrainedTokenizerFast)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "tokenizer.json")):
            raise ModelLoadError(f"{path}: model directory has no tokenizer.json")
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(path)
        except Exception as e:
            raise ModelLoadError(f"{path}: cannot load tokenizer: {type(e).__name__}: {e}") from e
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

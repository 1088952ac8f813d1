"""A ``tokenizers.Tokenizer`` with the part of transformers' ``PreTrainedTokenizerFast`` API the package uses,
without importing transformers (which imports torch): what ``models.tokenizer.load_tokenizer`` returns for GGUF
files and plain tokenizer directories. The ids, texts, special tokens, vocabulary and rendered chat templates are
transformers' (tests/models/test_tokenizer_without_transformers.py compares them on real files)."""

from __future__ import annotations

SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "pad_token")  # transformers' order, those we read


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with transformers' ``PreTrainedTokenizerFast`` API for what the package uses.

    Built as transformers' ``TokenizersBackend.__init__`` builds its backend from a ``tokenizer_object`` or a
    tokenizer.json without a truncation or padding setting: named special tokens missing from the vocabulary are
    added as special tokens (in transformers' order: bos, eos, unk, pad), and a backend without a post-processor
    gets the one transformers sets when neither bos nor eos is added (``$A:0`` / ``$A:0 $B:1``)."""

    def __init__(self, backend, *, special: dict[str, str | None], chat_template: str | None = None,
                 name_or_path: str = "", transformers_factory=None):
        from tokenizers import AddedToken, processors

        self.backend_tokenizer = backend
        self._special = {k: special.get(k) for k in SPECIAL_ATTRIBUTES}
        self.chat_template = chat_template
        self.name_or_path = name_or_path
        self._transformers_factory = transformers_factory
        present = {str(t.content) for t in backend.get_added_tokens_decoder().values()}
        missing = []
        for value in self._special.values():
            if value is not None and value not in present and value not in missing:
                missing.append(value)
        if missing:
            backend.add_tokens([AddedToken(t, special=True) for t in missing])
        backend.encode_special_tokens = False
        if backend.post_processor is None:
            backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1",
                                                                   special_tokens=[])

    # Special tokens.
    bos_token = property(lambda self: self._special["bos_token"])
    eos_token = property(lambda self: self._special["eos_token"])
    unk_token = property(lambda self: self._special["unk_token"])
    pad_token = property(lambda self: self._special["pad_token"])
    bos_token_id = property(lambda self: self._id_or_none(self.bos_token))
    eos_token_id = property(lambda self: self._id_or_none(self.eos_token))
    unk_token_id = property(lambda self: self._id_or_none(self.unk_token))
    pad_token_id = property(lambda self: self._id_or_none(self.pad_token))

    def _id_or_none(self, token: str | None) -> int | None:
        return None if token is None else self.convert_tokens_to_ids(token)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {k: v for k, v in self._special.items() if v is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys(self.special_tokens_map.values()))

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    @property
    def added_tokens_decoder(self) -> dict:
        return dict(sorted(self.backend_tokenizer.get_added_tokens_decoder().items()))

    # Vocabulary.
    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            index = self.backend_tokenizer.token_to_id(tokens)
            return self.unk_token_id if index is None else index
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids if int(i) not in special]

    # Text.
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids, skip_special_tokens: bool = False) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        return self.backend_tokenizer.decode([int(i) for i in token_ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, conversation, add_generation_prompt: bool = False, tokenize: bool = True,
                            chat_template: str | None = None, **kwargs) -> str:
        """The conversation (one list of messages) rendered by the chat template as transformers renders it (its
        jinja environment, the special tokens as template variables, ``kwargs`` over them). Only the text
        (``tokenize=False``); its ids are ``encode(text, add_special_tokens=False)``."""
        if tokenize:
            raise NotImplementedError("apply_chat_template(..., tokenize=False) gives the text; encode it with "
                                      "add_special_tokens=False for its ids")
        template = chat_template if chat_template is not None else self.chat_template
        if template is None:
            raise ValueError("Cannot use apply_chat_template because this tokenizer does not have a chat template.")
        if not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        return _compiled_chat_template(template).render(
            messages=conversation, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
            **{**self.special_tokens_map, **kwargs})

    # transformers' own object.
    def transformers_tokenizer(self):
        """The transformers tokenizer this one stands for (imports transformers, hence torch where installed)."""
        if self._transformers_factory is None:
            raise ValueError("this tokenizer has no transformers counterpart")
        return self._transformers_factory()

    def save_pretrained(self, save_directory) -> tuple[str, ...]:
        return self.transformers_tokenizer().save_pretrained(save_directory)


_CHAT_TEMPLATES: dict[str, object] = {}


def _compiled_chat_template(template: str):
    """The template compiled in the jinja environment transformers' chat templates render in (sandboxed, trimmed
    blocks, loop controls, the ``{% generation %}`` tag, its ``tojson`` filter, ``raise_exception`` and
    ``strftime_now``)."""
    if template not in _CHAT_TEMPLATES:
        import datetime
        import json

        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        class GenerationTag(jinja2.ext.Extension):
            """``{% generation %}...{% endgeneration %}`` renders its body (transformers marks the assistant's
            tokens with it when asked for their mask, which is never asked here)."""

            tags = {"generation"}

            def parse(self, parser):
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
                return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

            def _body(self, caller):
                return caller()

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        def strftime_now(format):
            return datetime.datetime.now().strftime(format)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[GenerationTag, jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = strftime_now
        _CHAT_TEMPLATES[template] = env.from_string(template)
    return _CHAT_TEMPLATES[template]

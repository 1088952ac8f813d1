"""Evaluation contexts in the model's chat format (``eval.template="chat"``), as lm-evaluation-harness writes them
with ``--apply_chat_template --fewshot_as_multiturn``.

A question's context is the tokenizer's chat template applied to one conversation, ending in the template's
generation prompt (``add_generation_prompt=True``)::

    system: description                                   (only when the task has one, as lm-eval does)
    user: doc_to_text(shot_1)    assistant: fewshot_target(shot_1)
    ...
    user: doc_to_text(shot_n)    assistant: fewshot_target(shot_n)
    user: doc_to_text(question)

The plain format's pieces (``prompt_format``, the delimiters) have no place in it: the template marks the turns. A
multiple-choice task scores each choice itself (no ``target_delimiter``, as lm-eval) as the continuation of the
generation prompt; a generation task stops at EOS, at the template's end-of-turn token (``end_of_turn_ids``) and at
the task's own ``until`` strings, never at the plain format's default (the start of a next demonstration).

The rendered text holds the template's special tokens (its BOS, where the template writes one), so it is encoded
with ``add_special_tokens=False``, as transformers' ``apply_chat_template(tokenize=True)`` encodes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from remix_jax.evaluation.eval_config import EvalConfigError

_PROBE = "PROBE"  # an assistant turn's content, to find what the template writes after it


def template_of(eval_cfg) -> str:
    """``eval.template`` ("plain" where an older config lacks the key)."""
    return str(eval_cfg.get("template", "plain"))


def require_chat_template(tokenizer, source: str) -> None:
    """Raise EvalConfigError (one line, naming ``source``: the tokenizer's path or the model's) when the tokenizer
    has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise EvalConfigError(f"eval.template='chat': the tokenizer of {source} has no chat_template (use "
                              "eval.template='plain', or set eval.tokenizer to a tokenizer with a chat template)")


def check_tokenizer(eval_cfg, tokenizer, model_path: str) -> None:
    """Before any task runs: with eval.template="chat", the evaluation's tokenizer (eval.tokenizer where set, else
    the one of ``model_path``) must have a chat template."""
    if template_of(eval_cfg) == "chat":
        path = eval_cfg.get("tokenizer", "")
        require_chat_template(tokenizer, f"eval.tokenizer={path!r}" if path else f"model.path={model_path!r}")


def conversation(description: str, shots: Sequence[tuple[str, str]], query: str) -> list[dict]:
    """The messages of one question: shots are (question text, answer) pairs, each a user and an assistant turn."""
    messages = [{"role": "system", "content": description}] if description else []
    for text, answer in shots:
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": query}]


def context(tokenizer, description: str, shots: Sequence[tuple[str, str]], query: str) -> str:
    """The conversation rendered by the tokenizer's chat template, ending in its generation prompt. Raises
    jinja2.TemplateError where the template refuses the conversation (e.g. a system turn)."""
    name = getattr(tokenizer, "name_or_path", "")
    require_chat_template(tokenizer, repr(name) if name else "this evaluation")
    return tokenizer.apply_chat_template(conversation(description, shots, query), tokenize=False,
                                         add_generation_prompt=True)


def end_of_turn_ids(tokenizer) -> tuple[int, ...]:
    """The special token the chat template closes an assistant turn with (ChatML's <|im_end|>, Llama 3's <|eot_id|>,
    Gemma's <end_of_turn>), found by rendering one turn; () where the template closes it with ordinary text."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": _PROBE}], tokenize=False)
    _, found, tail = text.rpartition(_PROBE)
    ids = tokenizer.encode(tail.lstrip(), add_special_tokens=False) if found else []
    special = set(tokenizer.all_special_ids) | {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return (int(ids[0]),) if ids and int(ids[0]) in special else ()

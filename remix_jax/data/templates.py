"""Prompt templates and tokenization with response-only loss masks.

Mask convention (used by the whole project): ``loss_mask[t] = 1`` iff ``tokens[t]`` is a response token, i.e.
a *target*. The loss at position ``t-1`` predicts ``tokens[t]``, so a trainer computes
``ce(logits[:, :-1], tokens[:, 1:]) * loss_mask[:, 1:]``. The first token of every example is a prompt token
(mask 0), so with packing no loss ever crosses from one segment into the next.

Templates:
- ``plain``: ``prompt_format.format(prompt=...)`` then the response, then EOS.
- ``chat``: ``tokenizer.apply_chat_template`` with a user turn (and an optional system turn); the response is
  the text the template adds for the assistant turn, up to and including its end token (EOS is appended if the
  template adds none). Prompt and response are tokenized separately so the mask boundary is exact.
"""

from __future__ import annotations

import numpy as np

from remix_jax.data.sources import DataError

DEFAULT_PLAIN_FORMAT = "### Instruction:\n{prompt}\n\n### Response:\n"


def _messages(prompt: str, system: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def render_prompt(
    tokenizer,
    prompt: str,
    *,
    template: str = "plain",
    plain_format: str = DEFAULT_PLAIN_FORMAT,
    system: str = "",
) -> str:
    """The text the model sees before it starts its response (for training and for generation)."""
    if template == "plain":
        return plain_format.format(prompt=prompt)
    if template == "chat":
        if getattr(tokenizer, "chat_template", None) is None:
            raise DataError("template 'chat' needs a tokenizer with a chat_template")
        return tokenizer.apply_chat_template(
            _messages(prompt, system), tokenize=False, add_generation_prompt=True
        )
    raise DataError(f"unknown template {template!r}; expected 'plain' or 'chat'")


def _response_text(tokenizer, prompt: str, response: str, system: str, prompt_text: str) -> tuple[str, bool]:
    """For chat: the template's assistant turn text after the prompt, and whether it already ends with EOS."""
    full = tokenizer.apply_chat_template(
        _messages(prompt, system) + [{"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(prompt_text):
        raise DataError(
            "the chat template's conversation does not start with its generation prompt; "
            "cannot separate the response for the loss mask"
        )
    tail = full[len(prompt_text) :]
    eos = tokenizer.eos_token
    if eos and eos in tail:
        return tail[: tail.rindex(eos) + len(eos)], True
    return tail, False


def tokenize_example(
    tokenizer,
    prompt: str,
    response: str,
    *,
    template: str = "plain",
    plain_format: str = DEFAULT_PLAIN_FORMAT,
    system: str = "",
    add_bos: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids [n] int32, loss_mask [n] float32) with mask 1 exactly on the response tokens (EOS included)."""
    prompt_text = render_prompt(
        tokenizer, prompt, template=template, plain_format=plain_format, system=system
    )
    p_ids = list(tokenizer.encode(prompt_text, add_special_tokens=False))
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise DataError("add_bos=True but the tokenizer has no BOS token")
        p_ids = [tokenizer.bos_token_id] + p_ids
    if template == "chat":
        resp_text, has_eos = _response_text(tokenizer, prompt, response, system, prompt_text)
    else:
        resp_text, has_eos = response, False
    r_ids = list(tokenizer.encode(resp_text, add_special_tokens=False))
    if not has_eos:
        if tokenizer.eos_token_id is None:
            raise DataError("the tokenizer has no EOS token to end the response")
        r_ids.append(tokenizer.eos_token_id)
    if not p_ids:
        raise DataError("empty prompt: the first token of an example must be a prompt token")
    ids = np.asarray(p_ids + r_ids, np.int32)
    mask = np.concatenate([np.zeros(len(p_ids), np.float32), np.ones(len(r_ids), np.float32)])
    return ids, mask

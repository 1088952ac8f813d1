"""Prompt templates: the loss mask covers exactly the response tokens (plain and chat; test and real
tokenizers)."""

import numpy as np
import pytest

from remix_jax.data import formats, render_prompt, tokenize_example


def _check_masks(tok, ex, template):
    ids, mask = tokenize_example(tok, ex.prompt, ex.response, template=template)
    prompt_ids = tok.encode(render_prompt(tok, ex.prompt, template=template), add_special_tokens=False)
    n_p = len(prompt_ids)
    assert ids.dtype == np.int32 and mask.dtype == np.float32 and ids.shape == mask.shape
    assert list(ids[:n_p]) == prompt_ids and not mask[:n_p].any() and mask[n_p:].all()
    assert ids[-1] == tok.eos_token_id
    # The masked tokens decode to exactly the response and its end-of-turn marker.
    resp = tok.decode(ids[n_p:].tolist())
    assert resp == ex.response + tok.eos_token
    # The whole example decodes to the template's full conversation (prompt + response).
    if template == "chat":
        full = tok.apply_chat_template(
            [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.response}],
            tokenize=False,
        )
        assert full.startswith(tok.decode(ids.tolist()))


@pytest.mark.parametrize("template", ["plain", "chat"])
def test_mask_is_response_only(tokenizer, data_dir, template):
    import json

    for line in (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[:20]:
        _check_masks(tokenizer, formats.gsm8k(json.loads(line), "t"), template)


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_gguf):
    from remix_jax.models.tokenizer import load_tokenizer

    return load_tokenizer(smollm2_gguf)


@pytest.mark.parametrize("template", ["plain", "chat"])
def test_mask_real_smollm2_tokenizer(smollm2_tokenizer, data_dir, template):
    import json

    tok = smollm2_tokenizer
    rows = json.loads((data_dir / "llm_adapters" / "ARC-Challenge" / "test.json").read_text())[:10]
    for row in rows:
        _check_masks(tok, formats.alpaca(row, "t"), template)


def test_plain_format_and_bos(tokenizer):
    ids, mask = tokenize_example(tokenizer, "2+2?", "4", plain_format="Q: {prompt}\nA: ", add_bos=True)
    assert ids[0] == tokenizer.bos_token_id and mask[0] == 0
    assert tokenizer.decode(ids.tolist()) == "<|bos|>Q: 2+2?\nA: 4<|im_end|>"
    assert tokenizer.decode(ids[mask == 1].tolist()) == "4<|im_end|>"


def test_arc_llm_adapters_from_both_row_kinds():
    hf = {"question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]},
          "answerKey": "B"}
    doc = {"query": "Question: Which is a gas?\nAnswer:", "choices": ["ice", "steam", "rock"], "gold": 1}
    want = ("Please choose the correct answer to the question: Which is a gas?\n\n"
            "Answer1: ice Answer2: steam Answer3: rock\n\nAnswer format: answer1/answer2/answer3")
    for row in (hf, doc):
        ex = formats.arc_llm_adapters(row, "t.jsonl:1")
        assert (ex.prompt, ex.response, ex.answer) == (want, "steam", "answer2")
    with pytest.raises(formats.DataError, match="t.jsonl:2"):
        formats.arc_llm_adapters({**hf, "answerKey": "Z"}, "t.jsonl:2")

"""Packing respects segment boundaries: packed logits equal each example's logits computed alone."""

import dataclasses

import jax
import numpy as np

import remix_jax.data as data
from remix_jax.models.llama import Decoder, init_params
from remix_jax.models.model_config import named_config
from tests.data.conftest import gsm8k_config


def test_packed_equals_unpacked_logits(data_dir, tfds_dir, built, tokenizer):
    cfg = gsm8k_config(data_dir, tfds_dir, packing=True, max_length=768, batch_size=2, seed=1)
    batch = next(data.build_train_loader(cfg, tokenizer))
    B, T = batch["tokens"].shape
    model = Decoder(dataclasses.replace(named_config("tiny"), vocab_size=len(tokenizer)))
    params = init_params(model, jax.random.PRNGKey(0))
    apply = jax.jit(lambda toks, seg, pos: model.apply(params, toks, segment_ids=seg, positions=pos)[0])
    packed = np.asarray(apply(batch["tokens"], batch["segment_ids"], batch["positions"]))
    ones, arange = np.ones((B, T), np.int32), np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
    joined = np.asarray(
        apply(batch["tokens"], ones, arange)
    )  # one sequence per row: attention crosses examples

    spans = [
        (b, np.flatnonzero(seg == s))
        for b, seg in enumerate(batch["segment_ids"])
        for s in range(1, seg.max() + 1)
    ]
    assert len(spans) > B  # some row holds several examples
    spans += [spans[0]] * (-len(spans) % B)  # whole batches of references: one compiled shape
    for start in range(0, len(spans), B):
        chunk = spans[start : start + B]
        alone = np.full((B, T), tokenizer.pad_token_id, np.int32)
        seg = np.zeros((B, T), np.int32)
        for r, (b, idx) in enumerate(chunk):
            alone[r, : len(idx)], seg[r, : len(idx)] = batch["tokens"][b, idx], 1
        ref = np.asarray(apply(alone, seg, arange))
        for r, (b, idx) in enumerate(chunk):
            np.testing.assert_allclose(packed[b, idx], ref[r, : len(idx)], atol=2e-5, rtol=2e-5)
            if idx[0] > 0:  # the check can fail: without segment ids a later example sees earlier ones
                assert np.abs(joined[b, idx] - ref[r, : len(idx)]).max() > 1e-3

"""The loader: fixed shapes, determinism, exact resume, process shards, mixtures, truncation, packing."""

import json
import logging

import numpy as np
import pytest

import remix_jax.data as data
from remix_jax.data import source_config
from tests.data.conftest import gsm8k_config


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


@pytest.fixture(scope="module")
def mix_cfg(data_dir, tfds_dir, built):
    cfg = gsm8k_config(data_dir, tfds_dir, packing=True, max_length=1024, batch_size=4, seed=3)
    cfg.sources.arc = source_config(
        "llm_adapters/arc_challenge", manual_dir=str(data_dir / "llm_adapters"), weight=0.5
    )
    return cfg


def _segments(batch):
    """(row, start, end) of every example in a batch."""
    out = []
    for b, seg in enumerate(batch["segment_ids"]):
        for s in range(1, seg.max() + 1):
            idx = np.flatnonzero(seg == s)
            assert np.array_equal(idx, np.arange(idx[0], idx[-1] + 1))  # contiguous
            out.append((b, idx[0], idx[-1] + 1))
    return out


def test_batch_layout(mix_cfg, tokenizer):
    batch = next(data.build_train_loader(mix_cfg, tokenizer))
    assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
        "tokens": ((4, 1024), "int32"),
        "loss_mask": ((4, 1024), "float32"),
        "segment_ids": ((4, 1024), "int32"),
        "positions": ((4, 1024), "int32"),
    }
    pad = batch["segment_ids"] == 0
    assert (batch["tokens"][pad] == tokenizer.pad_token_id).all() and not batch["loss_mask"][pad].any()
    segs = _segments(batch)
    assert len(segs) > 4  # packing put several examples in some row
    for b, s, e in segs:
        assert np.array_equal(batch["positions"][b, s:e], np.arange(e - s))
        assert batch["loss_mask"][b, s] == 0 and batch["tokens"][b, e - 1] == tokenizer.eos_token_id
        # the mask is one contiguous response span ending the segment
        m = batch["loss_mask"][b, s:e]
        first = np.argmax(m)
        assert m[first:].all() and not m[:first].any()


def test_same_seed_same_batches_and_resume(mix_cfg, tokenizer):
    a = data.build_train_loader(mix_cfg, tokenizer)
    first = _take(a, 6)
    state = json.loads(json.dumps(a.get_state()))
    rest = _take(a, 6)

    b = data.build_train_loader(mix_cfg, tokenizer)
    assert _same(_take(b, 12), first + rest)

    c = data.build_train_loader(mix_cfg, tokenizer)
    c.set_state(state)
    assert _same(_take(c, 6), rest)
    assert c.get_state() == a.get_state()

    other = mix_cfg.copy_and_resolve_references()
    other.seed = 4
    assert not _same(_take(data.build_train_loader(other, tokenizer), 2), first[:2])


def test_state_from_other_settings_is_refused(mix_cfg, tokenizer):
    state = data.build_train_loader(mix_cfg, tokenizer).get_state()
    with pytest.raises(data.DataError, match="process_count"):
        data.build_train_loader(mix_cfg, tokenizer, process_count=2).set_state(state)


@pytest.mark.parametrize("packing", [False, True])
def test_two_process_shards_cover_an_epoch_exactly_once(data_dir, tfds_dir, built, tokenizer, packing):
    cfg = gsm8k_config(data_dir, tfds_dir, packing=packing, max_length=1024, batch_size=16, num_epochs=1)
    cfg.sources.gsm8k.split = "test"
    src = data.open_sources(cfg)[0]
    key_of = {
        tuple(data.tokenize_example(tokenizer, src.get(i).prompt, src.get(i).response)[0]): i
        for i in range(src.size)
    }
    assert len(key_of) == src.size == 250
    seen = []
    for p in range(2):
        loader = data.build_train_loader(cfg, tokenizer, process_index=p, process_count=2)
        for batch in loader:
            assert batch["tokens"].shape == (8, 1024)
            seen += [key_of[tuple(batch["tokens"][b, s:e])] for b, s, e in _segments(batch)]
        assert loader.stats["truncated"] == 0
    assert sorted(seen) == list(range(250))


def test_mixture_weights(mix_cfg, tokenizer):
    loader = data.build_train_loader(mix_cfg, tokenizer)
    for _ in range(4000):  # draws only: the source choice does not depend on tokenization
        loader._consume(*loader._peek())
    labels = [s.label for s in loader.sources]
    frac_gsm = loader.get_state()["counts"][labels.index("gsm8k")] / 4000
    assert abs(frac_gsm - 1 / 1.5) < 0.03


def test_truncation_is_counted(data_dir, tfds_dir, built, tokenizer, caplog):
    cfg = gsm8k_config(data_dir, tfds_dir, max_length=64, batch_size=8, shuffle=False)
    loader = data.build_train_loader(cfg, tokenizer)
    with caplog.at_level(logging.WARNING):
        batch = next(loader)
    lengths = [
        len(loader.tokenized(0, i)[0]) for i in range(8)
    ]  # shuffle=False: rows 0..7 of the record order
    assert loader.stats["truncated"] == sum(n > 64 for n in lengths) > 0
    assert "truncated 1 examples" in caplog.text
    assert (batch["segment_ids"] > 0).sum() == sum(min(n, 64) for n in lengths)

"""Rows of padding only (the filler rows of a last, partial evaluation batch): cuDNN flash attention gets a
length of at least 1 for them, the held-out loss never reads a padding position's values (even NaN), and a
non-finite metric is still written to its result file, as null and named."""

import json

import jax.numpy as jnp
import numpy as np

from remix_jax.evaluation import results
from remix_jax.models.attention import cudnn_seq_lengths
from remix_jax.training.run_evaluation import heldout_loss_fn


def test_cudnn_lengths_count_tokens_and_give_padding_rows_one():
    seg = jnp.asarray([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert cudnn_seq_lengths(seg).tolist() == [3, 1, 1, 4]
    assert cudnn_seq_lengths(seg).dtype == jnp.int32


class _NanAtPadding:
    """A stand-in decoder: fixed logits at real tokens, NaN at every padding position (as cuDNN gives rows of
    length 0). With ``return_hidden`` it gives them as final hidden states and an identity output matrix (the
    logits are their product)."""

    def __init__(self, logits):
        self.logits = logits

    def apply(self, variables, tokens, segment_ids, positions, deterministic, rngs, return_hidden=False):
        pad = (segment_ids == 0)[..., None]
        out = jnp.where(pad, jnp.nan, self.logits)
        if return_hidden:
            return (out, jnp.eye(out.shape[-1], dtype=out.dtype)), None
        return out, None


def test_heldout_loss_ignores_non_finite_values_at_padding():
    rng = np.random.default_rng(0)
    b, t, v = 3, 5, 7
    logits = jnp.asarray(rng.normal(size=(b, t, v)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    seg = jnp.asarray([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], jnp.int32)
    loss_mask = jnp.asarray([[0, 1, 1, 1, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]], jnp.int32)
    batch = {"tokens": tokens, "segment_ids": seg, "positions": jnp.zeros_like(tokens), "loss_mask": loss_mask}
    total, count = heldout_loss_fn()(_NanAtPadding(logits), {}, batch, None)
    # By hand: position j's target is token j + 1, read from the logits at j (token_cross_entropy's shift).
    logp = np.asarray(jnp.log(jnp.exp(logits) / jnp.exp(logits).sum(-1, keepdims=True)))
    want, n = 0.0, 0
    for i in range(b):
        for j in range(1, t):
            if loss_mask[i, j] and seg[i, j]:
                want -= logp[i, j - 1, int(tokens[i, j])]
                n += 1
    assert np.isfinite(float(total)) and float(count) == n == 4
    np.testing.assert_allclose(float(total), want, rtol=1e-5)


def test_non_finite_metric_is_written_as_null_and_named(tmp_path):
    path = results.write_task_results(tmp_path, "heldout", {"heldout_loss": float("nan"), "num_batches": 4,
                                                           "acc": np.float32("inf")}, [])
    record = json.loads(path.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert record["metrics"] == {"heldout_loss": None, "num_batches": 4, "acc": None}
    assert record["non_finite_metrics"] == ["heldout_loss", "acc"]
    ok = results.write_task_results(tmp_path, "gsm8k", {"accuracy": 0.25}, [])
    assert "non_finite_metrics" not in json.loads(ok.read_text())

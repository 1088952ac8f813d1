"""Rematerialisation policies of the decoder's blocks (``ModelConfig.remat``) and the checkpoint names they select.

The decoder (``models.llama``) names each projection's output ``PROJ_OUT``, each block's input ``LAYER_INPUT``
(``LAYER_INPUT_KEPT`` for the part kept on device under ``offload_keep_fraction``), and the attention and FFN
tensors "qkv", "attn_out" and "ffn_hidden"; a policy says which of them the backward pass reads from memory (or
from host memory) instead of recomputing. Measurements: docs/performance.md and the benchmarks log.
"""

from __future__ import annotations

import jax

from remix_jax.models.attention import CUDNN_ATTENTION_FWD, REMAT_SAVING_CUDNN_FORWARD

PROJ_OUT = "proj_out"  # checkpoint name of every projection's output (see REMAT_POLICIES)
LAYER_INPUT = "layer_input"  # checkpoint name of each block's input (the residual stream entering the layer)
LAYER_INPUT_KEPT = "layer_input_kept"  # the part of it kept on device (ModelConfig.offload_keep_fraction)

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_qkv_ffn": jax.checkpoint_policies.save_only_these_names("qkv", "attn_out", "ffn_hidden"),
    # Every projection's output (base + adapter delta as one tensor) and the attention output; everything else
    # (norms, rope, activations, the LoRA x @ A products) is recomputed. dots_no_batch instead saves the base
    # product and the adapter delta separately, doubling the adapted projections' activations.
    "save_proj_out": jax.checkpoint_policies.save_only_these_names(PROJ_OUT, "attn_out"),
    # save_proj_out, and with cuDNN attention its forward's output and softmax statistics
    # (attention.CUDNN_ATTENTION_FWD): the backward pass does not run the attention forward again.
    "save_proj_out_attention": jax.checkpoint_policies.save_only_these_names(PROJ_OUT, "attn_out"),
    # The same tensors as save_proj_out, moved to pinned host memory after the forward pass and back for the
    # backward pass (XLA's host offloading on GPU and TPU): device memory close to "full" without its recompute of
    # every projection, paid for in host transfers. On the CPU backend host and device memory are one, and the
    # policy computes what save_proj_out computes.
    "offload_proj_out": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=[PROJ_OUT, "attn_out"],
        offload_src="device", offload_dst="pinned_host"),
    # "full" with each block's input moved to pinned host memory: the only tensor "full" keeps per layer (its
    # input, [B, T, d]) leaves the device after the forward pass and comes back for the layer's recompute, so the
    # device holds the weights, one layer's recompute and the loss chunk (what offloaded gradient checkpointing,
    # as Unsloth's, keeps). On the CPU backend it computes what "full" computes. On a GPU (1B LoRA) the step
    # holds 0.5 GiB less than under "full" and is 12% slower; with the step compiled before the weights are
    # placed (loop.train) the process peak is the step's own (docs/performance.md). With
    # ModelConfig.offload_keep_fraction > 0 the first positions of each input stay on device (LAYER_INPUT_KEPT)
    # and only the rest travels: a dial between this policy's memory and "full"'s speed. Rolled loops only
    # (ModelConfig refuses a fully unrolled one, whose checkpoints keep their inputs on the device).
    "offload_layer_input": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[LAYER_INPUT_KEPT], names_which_can_be_offloaded=[LAYER_INPUT],
        offload_src="device", offload_dst="pinned_host"),
}


def _saving_cudnn_forward(policy):
    """``policy``, and the cuDNN attention forward's outputs saved too (attention.CUDNN_ATTENTION_FWD)."""
    def saves(prim, *avals, **params):
        return prim.name == CUDNN_ATTENTION_FWD or policy(prim, *avals, **params)
    return saves


REMAT_POLICIES.update({name: _saving_cudnn_forward(REMAT_POLICIES[name]) for name in REMAT_SAVING_CUDNN_FORWARD})

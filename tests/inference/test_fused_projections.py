"""Inference-time fused projections (inference.variables.fuse_projections): one matmul for q/k/v and one for gate/up
gives the same logits as separate projections, for the base model and every adapter method, and the same
generated tokens; DoRA (not base + delta) falls back to separate matmuls. GenerationConfig.scan_unroll changes
the compiled loop only."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.inference.generation import GenerationConfig, generate
from remix_jax.inference.variables import adapter_config_of, fuse_projections
from remix_jax.models.fused import FUSED
from remix_jax.models.llama import Decoder, init_params
from remix_jax.models.model_config import named_config

CFG = dataclasses.replace(named_config("tiny", dtype="float32", param_dtype="float32"), attention_bias=True)
TOKENS = jax.random.randint(jax.random.key(1), (2, 7), 1, CFG.vocab_size)


@pytest.fixture(scope="module")
def params():
    return init_params(Decoder(CFG), jax.random.key(0))["params"]


def adapted(method: str, targets: str, params):
    kw = {} if method in ("lora", "dora") else {"num_experts": 4, "top_k": 2}
    model = build_model(CFG, AdapterConfig(method=method, targets=targets, rank=4, alpha=8.0, **kw))
    extra = init_adapter_variables(model, jax.random.key(2))
    keys = iter(jax.random.split(jax.random.key(5), 1000))

    def nonzero(path, x):  # B = 0 at init would hide every adapter term
        return 0.1 * jax.random.normal(next(keys), x.shape, x.dtype) if path[-1].key == "lora_b" else x

    extra["adapter"] = jax.tree_util.tree_map_with_path(nonzero, extra["adapter"])
    return model, {"params": params, **extra}


def num_dots(model, variables) -> int:
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, TOKENS, rngs={"routing": jax.random.key(3)}))(variables)
    return str(jaxpr).count("dot_general")


def test_fused_collection_shapes(params):
    """Every inference matrix is [L, out, in]: the kernels' transposes, q/k/v and gate/up concatenated."""
    fused = fuse_projections({"params": params}, jnp.bfloat16)[FUSED]["layers"]
    L, d, hd, f = CFG.num_layers, CFG.hidden_size, CFG.head_dim, CFG.intermediate_size
    attn, mlp = params["layers"]["attn"], params["layers"]["mlp"]
    assert fused["attn"]["qkv_kernel"].shape == (L, (CFG.num_heads + 2 * CFG.num_kv_heads) * hd, d)
    assert fused["attn"]["qkv_bias"].shape == (L, (CFG.num_heads + 2 * CFG.num_kv_heads) * hd)
    assert fused["attn"]["o_kernel"].shape == (L, d, CFG.num_heads * hd)
    assert fused["mlp"]["gate_up_kernel"].shape == (L, 2 * f, d)
    assert fused["mlp"]["down_kernel"].shape == (L, d, f)
    assert fused["mlp"]["gate_up_kernel"].dtype == jnp.bfloat16
    bf16 = lambda a: np.asarray(a.astype(jnp.bfloat16).astype(jnp.float32))
    k = CFG.num_heads * hd
    np.testing.assert_array_equal(bf16(fused["attn"]["qkv_kernel"][1, k:k + 5]),
                                  bf16(attn["k_proj"]["kernel"][1, :, :5].T))
    np.testing.assert_array_equal(bf16(fused["attn"]["o_kernel"][0]), bf16(attn["o_proj"]["kernel"][0].T))
    np.testing.assert_array_equal(bf16(fused["mlp"]["gate_up_kernel"][1, f:]), bf16(mlp["up_proj"]["kernel"][1].T))
    np.testing.assert_array_equal(bf16(fused["mlp"]["down_kernel"][1]), bf16(mlp["down_proj"]["kernel"][1].T))


@pytest.mark.parametrize("name", ["qkv_kernel", "o_kernel", "gate_up_kernel", "down_kernel"])
def test_decoder_reads_each_fused_kernel(name, params):
    """Each inference matrix is what the decoder uses: spoiling it alone changes the logits."""
    model = Decoder(CFG)
    fused = fuse_projections({"params": params})
    ref, _ = model.apply(fused, TOKENS)
    group = "attn" if name in ("qkv_kernel", "o_kernel") else "mlp"
    layers = fused[FUSED]["layers"]
    spoiled = {**fused, FUSED: {"layers": {**layers, group: {**layers[group], name: 2.0 * layers[group][name]}}}}
    bad, _ = model.apply(spoiled, TOKENS)
    assert np.max(np.abs(np.asarray(bad) - np.asarray(ref))) > 1e-3


@pytest.mark.parametrize("method,targets", [(None, None), ("lora", "all"), ("remix", "ffn"), ("remix", "all"),
                                            ("mixlora", "ffn"), ("hydralora", "all"), ("dora", "all")])
def test_fused_equals_separate(method, targets, params):
    if method is None:
        model, variables = Decoder(CFG), {"params": params}
    else:
        model, variables = adapted(method, targets, params)
    fused = fuse_projections(variables)
    rngs = {"routing": jax.random.key(3)}
    ref, _ = model.apply(variables, TOKENS, rngs=rngs)
    out, _ = model.apply(fused, TOKENS, rngs=rngs)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)
    separate, joined = num_dots(model, variables), num_dots(model, fused)
    if method == "dora":
        assert joined == separate  # DoRA rescales the whole product: the fused kernels are not used
    elif method is None:
        assert joined == separate - 3  # the scanned block: q/k/v 3 -> 1 and gate/up 2 -> 1 matmuls
    else:
        assert joined < separate


def assert_same_generation(model, variables, prompts, configs, atol: float):
    """Generating with each GenerationConfig in ``configs`` gives the same tokens and log-probs (to atol)."""
    runs = [generate(model, variables, prompts, c) for c in configs]
    for run in runs[1:]:
        assert run.tokens == runs[0].tokens
        np.testing.assert_allclose(np.concatenate(run.logprobs), np.concatenate(runs[0].logprobs), atol=atol)


def test_generation_same_tokens_with_and_without_fusing(params):
    model, variables = adapted("remix", "all", params)
    assert_same_generation(model, variables, [[5, 9, 2, 7], [3, 3, 8]],
                           [GenerationConfig(max_new_tokens=6, fuse_projections=f) for f in (True, False)], atol=1e-5)


def test_generation_unroll_changes_nothing(params):
    model, variables = adapted("remix", "ffn", params)
    assert_same_generation(model, variables, [[5, 9, 2, 7, 1], [3, 3, 8]],
                           [GenerationConfig(max_new_tokens=5, scan_unroll=u) for u in (1, 2)], atol=1e-5)
    with pytest.raises(ValueError, match="scan_unroll"):
        GenerationConfig(scan_unroll=-1)


@pytest.mark.parametrize("targets", ["ffn", ("gate_proj", "up_proj"), ("down_proj",), ("up_proj", "q_proj")])
def test_remix_precomputed_block_matrices(targets, params):
    """fuse_remix_inference: ReMix's FFN from four precomputed matrices (frozen kernels, the experts' A and B
    and the router joined) gives the same logits as the per-step path, which builds nothing in advance."""
    from remix_jax.inference.variables import fuse_remix_inference

    model, variables = adapted("remix", targets, params)
    fused = fuse_remix_inference(fuse_projections(variables), adapter_config_of(model), CFG.dtype)
    mlp = fused[FUSED]["layers"]["mlp"]
    adapted_ffn = ("gate_proj", "up_proj", "down_proj") if targets == "ffn" else targets
    s = sum(t in adapted_ffn for t in ("gate_proj", "up_proj"))
    L, d, f, n, r = CFG.num_layers, CFG.hidden_size, CFG.intermediate_size, 4, 4
    assert mlp["remix_gate_up"].shape == (L, 2 * f + s * n * r + n, d)  # [L, out, in]; float32: one router part
    assert "gate_up_kernel" not in mlp and "down_kernel" not in mlp  # remix_gate_up / remix_down hold them
    assert ("remix_b_gate_up" in mlp) == (s > 0)
    if s:
        assert mlp["remix_b_gate_up"].shape == ((L, 2, f, n * r) if s == 2 else (L, 2 * f, n * r))
    down = "down_proj" in adapted_ffn
    assert mlp["remix_down"].shape == (L, d + n * r if down else d, f)
    assert ("remix_b_down" in mlp) == down
    ref, _ = model.apply(variables, TOKENS)
    out, _ = model.apply(fused, TOKENS)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)
    assert fuse_remix_inference(variables, None, CFG.dtype) is variables  # plain decoder: nothing to add
    # the block really reads the precomputed matrices: spoiling one changes the output
    spoiled = {**fused, FUSED: {"layers": {**fused[FUSED]["layers"],
                                           "mlp": {**mlp, "remix_gate_up": -mlp["remix_gate_up"]}}}}
    bad, _ = model.apply(spoiled, TOKENS)
    assert np.max(np.abs(np.asarray(bad) - np.asarray(ref))) > 1e-3


def test_router_parts_hold_the_router_to_16_bits():
    """bf16 hi + lo parts of a float32 router: their sum is the weight to ~2^-16 relative, and the logits of a
    bf16 input (exact in float32) computed from them match the float32 logits that closely."""
    from remix_jax.inference.remix_ffn import router_parts

    w = jax.random.normal(jax.random.key(0), (64, 8), jnp.float32)
    hi, lo = router_parts(w, jnp.bfloat16)
    assert hi.dtype == lo.dtype == jnp.bfloat16
    err = np.abs(np.asarray(hi, np.float32) + np.asarray(lo, np.float32) - np.asarray(w))
    assert err.max() <= 2.0 ** -16 * np.abs(np.asarray(w)).max()
    assert np.abs(np.asarray(hi, np.float32) - np.asarray(w)).max() > 10 * err.max()  # lo really matters
    x = jax.random.normal(jax.random.key(1), (5, 64), jnp.float32).astype(jnp.bfloat16)
    z = sum(jnp.einsum("td,dn->tn", x, p, preferred_element_type=jnp.float32) for p in (hi, lo))
    ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    np.testing.assert_allclose(np.asarray(z), ref, atol=1e-3 * np.abs(ref).max())
    (only,) = router_parts(w, jnp.float32)
    assert only.dtype == jnp.float32 and np.array_equal(np.asarray(only), np.asarray(w))


def _random_norm_scales(params):
    """Norm scales away from 1 (they start at 1, where folding them would change nothing)."""
    keys = iter(jax.random.split(jax.random.key(11), 100))
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x * (1.0 + 0.5 * jax.random.normal(next(keys), x.shape, x.dtype)) if p[-1].key == "scale" else x,
        params)


@pytest.mark.parametrize("method,targets", [(None, None), ("remix", "ffn"), ("remix", ("down_proj",)),
                                            ("remix", ("up_proj", "o_proj")), ("lora", ("o_proj", "down_proj"))])
def test_folded_norms_same_logits(method, targets, params):
    """Decoder(fold_norms=True) with the norms' scales folded into the fused kernels (and into ReMix's
    precomputed FFN matrices, router included) gives the logits of the unfolded model."""
    from remix_jax.inference.variables import foldable_norms, fuse_remix_inference

    params = _random_norm_scales(params)
    if method is None:
        model, variables = Decoder(CFG), {"params": params}
    else:
        model, variables = adapted(method, targets, params)
    cfg = adapter_config_of(model)
    assert foldable_norms(cfg)

    def fused(fold):
        return fuse_remix_inference(fuse_projections(variables, fold_norms=fold), cfg, CFG.dtype, fold_norms=fold)

    ref, _ = model.apply(variables, TOKENS)
    out, _ = model.clone(fold_norms=True).apply(fused(True), TOKENS)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=2e-5)
    # the scales really are in the kernels: the folded model on unfolded kernels is another model
    wrong, _ = model.clone(fold_norms=True).apply(fused(False), TOKENS)
    assert np.max(np.abs(np.asarray(wrong) - np.asarray(ref))) > 1e-3


def test_fold_norms_only_where_no_adapter_reads_a_norm(params):
    from remix_jax.inference.variables import foldable_norms

    for method, targets in [("lora", "all"), ("lora", ("gate_proj",)), ("mixlora", "ffn"), ("remix", "attn")]:
        model, _ = adapted(method, targets, params)
        assert not foldable_norms(adapter_config_of(model)), (method, targets)
    # a folded model without folded kernels says what it needs
    with pytest.raises(ValueError, match="fold_norms"):
        Decoder(CFG, fold_norms=True).apply({"params": params}, TOKENS)
    model, variables = adapted("remix", "ffn", params)  # ReMix's FFN without its precomputed matrices
    with pytest.raises(ValueError, match="fold_norms"):
        model.clone(fold_norms=True).apply(fuse_projections(variables, fold_norms=True), TOKENS)


@pytest.mark.parametrize("method,targets", [(None, None), ("remix", "ffn"), ("lora", "all")])
def test_generation_same_tokens_with_folded_norms(method, targets, params):
    params = _random_norm_scales(params)
    if method is None:
        model, variables = Decoder(CFG), {"params": params}
    else:
        model, variables = adapted(method, targets, params)
    assert_same_generation(model, variables, [[5, 9, 2, 7], [3, 3, 8]],
                           [GenerationConfig(max_new_tokens=5, fold_norms=f) for f in (True, False)], atol=1e-4)


def test_only_projections_that_are_base_plus_delta_are_fused(params):
    """A projection class overriding only __call__ (a custom adapter) is called as itself, never replaced by the
    fused kernels; Projection and the adapters' class (which define fusable / delta) are fused."""
    import functools

    import flax.linen as nn

    from remix_jax.adapters.modules import AdaptedProjection
    from remix_jax.models.llama import Projection, projection_class_fuses

    class Doubled(Projection):
        @nn.compact
        def __call__(self, x, deterministic=True, token_mask=None):
            return 2.0 * self.base_forward(x)

    assert projection_class_fuses(Projection)
    assert projection_class_fuses(functools.partial(AdaptedProjection, adapter=None))
    assert not projection_class_fuses(Doubled)
    model = Decoder(CFG, proj_cls=Doubled)
    fused = fuse_projections({"params": params})
    ref, _ = model.apply({"params": params}, TOKENS)
    out, _ = model.apply(fused, TOKENS)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)
    plain, _ = Decoder(CFG).apply({"params": params}, TOKENS)
    assert np.max(np.abs(np.asarray(plain) - np.asarray(ref))) > 1e-3  # the custom class really acts

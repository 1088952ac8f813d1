"""ReMix's decode kernels (inference.remix_kernels, in Pallas's interpreter here) against XLA's form of the same
FFN (remix_ffn.remix_ffn_fused), alone and inside generation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.inference import remix_kernels
from remix_jax.inference.generation import GenerationConfig, generate
from remix_jax.inference.remix_ffn import remix_block_matrices, remix_ffn_fused, routed_layout
from remix_jax.models.fused import STACKED, inference_layout, inference_product
from remix_jax.models.llama import Decoder, init_params, rms_inverse
from remix_jax.models.model_config import named_config

D, F, LAYERS, EPS = 64, 96, 3, 1e-5


@functools.cache
def stack(dtype: str, n: int = 8, r: int = 8, k: int = 2):
    """Three layers of ReMix FFN matrices as generation holds them (``remix_block_matrices``, inference layout),
    made by one jitted program (op by op it took ~2 s)."""
    cfg = AdapterConfig(num_experts=n, top_k=k, rank=r)

    @jax.jit
    def make(key):
        ks = iter(jax.random.split(key, 12))

        def normal(shape, scale):
            return jax.random.normal(next(ks), (LAYERS, *shape), jnp.float32) * scale

        shapes = {"gate_proj": (D, F), "up_proj": (D, F), "down_proj": (F, D)}
        kernels = {name: normal(s, s[0] ** -0.5) for name, s in shapes.items()}
        factors = {name: (normal((n, i, r), i ** -0.5), normal((n, r, o), 0.3)) for name, (i, o) in shapes.items()}
        router = normal((D, n), 1.0)
        mats = jax.vmap(lambda a, b, w: remix_block_matrices(a, b, w, cfg, jnp.dtype(dtype)))(kernels, factors,
                                                                                              router)
        return {name: inference_layout(m) for name, m in mats.items()}

    return cfg, make(jax.random.key(0))


def xla_form(x, mats, layer, cfg, dtype):
    one = {name: m[layer] for name, m in mats.items()}
    return (x + remix_ffn_fused(x, one, cfg, dtype, rms_inverse(x, EPS))).astype(dtype)


def kernel_form(x, mats, layer, cfg, dtype, stride=1, offset=0):
    lay = routed_layout(cfg, mats["remix_gate_up"].shape[1], D, F, EPS)
    index = jnp.array([(layer - offset) // stride], jnp.int32)
    y = inference_product(x, mats["remix_gate_up"][layer], dtype, jnp.float32)
    hidden = remix_kernels.routed_front(y, x, mats["remix_b_gate_up"], index, lay, dtype, stride=stride,
                                        offset=offset, interpret=True)
    y2 = remix_kernels.down_product(hidden, mats["remix_down"][layer], dtype)
    return remix_kernels.routed_back(y, y2, x, mats["remix_b_down"], index, lay, dtype, stride=stride,
                                     offset=offset, interpret=True)


# The float32 forms as one program each per token count (the layer an argument, the kernels' stride and offset
# static): the same operations as op by op, compiled once for the three layers instead of once per operation and
# shape. The bfloat16 test keeps op-by-op dispatch: there XLA may keep excess precision inside a fused program.
xla_form_jit = jax.jit(xla_form, static_argnums=(3, 4))
kernel_form_jit = jax.jit(kernel_form, static_argnums=(3, 4, 5, 6))


@pytest.mark.parametrize("m", [1, 3, 8, 12, 16])  # up to 8: multiply-and-sum; 12, 16: tl.dot, the down partials
def test_kernels_equal_xla_form_float32(m):
    cfg, mats = stack("float32")
    x = jax.random.normal(jax.random.key(m), (m, D), jnp.float32) * 2.0
    for layer, stride, offset in ((0, 1, 0), (2, 1, 0), (1, 2, 1)):  # the layer read from the stack at index
        want = xla_form_jit(x, mats, jnp.int32(layer), cfg, jnp.float32)
        got = kernel_form_jit(x, mats, jnp.int32(layer), cfg, jnp.float32, stride, offset)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)
    # another layer's B gives another result: the index is really used
    other = kernel_form_jit(x, mats, jnp.int32(0), cfg, jnp.float32, 1, 0)
    assert float(jnp.abs(other - xla_form_jit(x, mats, jnp.int32(2), cfg, jnp.float32)).max()) > 0.1


def test_small_expert_widths_take_multiply_and_sum_at_16_tokens():
    """n r = 8 is below a tensor-core tile: the 16-token tiling falls back to multiply-and-sum, same results."""
    cfg, mats = stack("float32", n=4, r=2, k=1)
    x = jax.random.normal(jax.random.key(7), (16, D), jnp.float32) * 2.0
    layer = jnp.int32(1)
    np.testing.assert_allclose(np.asarray(kernel_form_jit(x, mats, layer, cfg, jnp.float32, 1, 0)),
                               np.asarray(xla_form_jit(x, mats, layer, cfg, jnp.float32)), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("m", [4, 16])
def test_kernels_match_xla_form_bfloat16(m):
    # bf16 rounding at the same points as XLA's ops; XLA may keep excess precision between fused ops, so allow a
    # couple of bf16 ulps (values up to ~10).
    cfg, mats = stack("bfloat16")
    x = (jax.random.normal(jax.random.key(5), (m, D), jnp.float32) * 2.0).astype(jnp.bfloat16)
    want = xla_form(x, mats, 1, cfg, jnp.bfloat16).astype(jnp.float32)
    got = kernel_form(x, mats, 1, cfg, jnp.bfloat16).astype(jnp.float32)
    assert float(jnp.abs(want - x.astype(jnp.float32)).max()) > 1.0  # the FFN really acts
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2 ** -6, atol=0.07)


def test_top_k_ties_follow_lax_top_k():
    """Equal logits: the lower expert index wins, as lax.top_k (and remix_inference_weights) decide."""
    lay = remix_kernels.RoutedLayout(d=8, f=8, n=8, r=2, k=3, omega=1.0, parts=1, eps=EPS)
    z = jnp.array([[0.0, 1.0, 1.0, 0.5, 1.0, -2.0, 1.0, 0.0],
                   [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0],
                   [-1.0, -0.0, 0.0, 2.0, -3.0, 2.0, 1.0, 0.5]], jnp.float32)
    pi = remix_kernels._top_k_weights(z, lay, jnp.float32)
    want = np.zeros((3, 8))
    for row, zr in enumerate(np.asarray(z)):
        want[row, np.asarray(jax.lax.top_k(jnp.asarray(zr), 3)[1])] = 1.0
    np.testing.assert_array_equal(np.asarray(pi), want)


def test_layout_checks():
    cfg, mats = stack("float32")
    lay = routed_layout(cfg, mats["remix_gate_up"].shape[1], D, F, EPS)
    assert remix_kernels.supported(lay)
    assert not remix_kernels.supported(routed_layout(AdapterConfig(num_experts=5, top_k=1, rank=8), 2 * F + 90, D, F))
    y = jnp.zeros((2, lay.width + 1), jnp.float32)
    with pytest.raises(ValueError, match="routed_front"):
        remix_kernels.routed_front(y, jnp.zeros((2, D)), mats["remix_b_gate_up"], jnp.zeros(1, jnp.int32), lay,
                                   jnp.float32, interpret=True)
    x = jnp.zeros((2, D), jnp.float32)
    with pytest.raises(ValueError, match="dot=True"):  # a tensor-core tile needs 16 rows
        remix_kernels.routed_front(jnp.zeros((2, lay.width)), x, mats["remix_b_gate_up"], jnp.zeros(1, jnp.int32),
                                   lay, jnp.float32, dot=True, interpret=True)
    with pytest.raises(ValueError, match="down_partials"):
        remix_kernels.down_partials(jnp.zeros((2, F)), mats["remix_down"][0], 7, jnp.float32)
    with pytest.raises(ValueError, match="routed_back"):  # partial sums: a power of two of them
        remix_kernels.routed_back(jnp.zeros((2, lay.width)), jnp.zeros((3, 2, D + 64)), x, mats["remix_b_down"],
                                  jnp.zeros(1, jnp.int32), lay, jnp.float32, interpret=True)
    with pytest.raises(ValueError, match="remix_kernels"):
        remix_kernels.use_kernels("triton")
    with pytest.raises(ValueError, match="remix_kernels"):
        GenerationConfig(remix_kernels="cuda")
    assert not remix_kernels.use_kernels("xla") and remix_kernels.use_kernels("pallas")


@functools.cache
def tiny_remix(dtype: str):
    cfg = named_config("tiny", dtype=dtype, max_position_embeddings=256)
    base = init_params(Decoder(cfg), jax.random.key(0))
    base = jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, base)
    model = build_model(cfg, AdapterConfig(method="remix", router_init_std=0.5))
    extra = init_adapter_variables(model, jax.random.key(3))
    extra["adapter"] = jax.tree_util.tree_map_with_path(
        lambda p, v: 0.3 * jax.random.normal(jax.random.key(len(jax.tree_util.keystr(p))), v.shape)
        if "lora_b" in jax.tree_util.keystr(p) else v, extra["adapter"])
    return model, {**base, **extra}


def test_generation_with_kernels_equals_xla_form():
    model, variables = tiny_remix("float32")
    prompts = [[5, 17, 33], [9, 2, 250, 7, 7, 1, 80], [101]]
    runs = {mode: generate(model, variables, prompts, GenerationConfig(max_new_tokens=6, remix_kernels=mode))
            for mode in ("xla", "pallas")}
    assert runs["pallas"].tokens == runs["xla"].tokens
    assert len({tuple(t) for t in runs["xla"].tokens}) > 1
    for a, b in zip(runs["pallas"].logprobs, runs["xla"].logprobs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_decode_step_takes_the_kernels():
    from remix_jax.inference.variables import fuse_projections, fuse_remix_inference
    from remix_jax.models.attention import init_cache

    model, variables = tiny_remix("float32")
    model = model.clone(fold_norms=True, broadcast_stacked=True)
    fused = fuse_projections(variables, "float32", fold_norms=True)
    fused = fuse_remix_inference(fused, model.mlp_cls.keywords["adapter"], "float32", fold_norms=True, kernels=True)
    assert fused[STACKED]["layers"]["mlp"]["b_gate_up"].shape[0] == model.config.num_layers
    cache = init_cache(model.config, 2, 16)

    def step(tokens):
        return model.apply(fused, tokens, cache=cache, deterministic=True)[0]

    assert "pallas_call" in str(jax.make_jaxpr(step)(jnp.ones((2, 1), jnp.int32)))  # 2 tokens: the kernels
    assert "pallas_call" in str(jax.make_jaxpr(step)(jnp.ones((2, 8), jnp.int32)))  # 16 tokens: the kernels
    assert "pallas_call" not in str(jax.make_jaxpr(step)(jnp.ones((2, 9), jnp.int32)))  # 18 tokens: XLA's form


def test_kernels_need_variables_on_one_device():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from remix_jax.inference.generation import on_one_device

    model, variables = tiny_remix("float32")
    assert on_one_device(variables)
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    spread = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    assert not on_one_device(spread)
    with pytest.raises(ValueError, match="one device"):
        generate(model, spread, [[5, 17]], GenerationConfig(max_new_tokens=2, remix_kernels="pallas"))

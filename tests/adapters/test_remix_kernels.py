"""ReMix's routed FFN halves as Pallas kernels (adapters/remix_kernels.py), run in Pallas's interpreter here:
the same values as the XLA form for several layouts (one row, rows not a multiple of the block, a non-power-of-
two number of experts, one or two router parts, gate only / up only), ties broken as lax.top_k breaks them, and
the same generated tokens as the XLA form through the whole model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.adapters import remix_kernels as rk
from remix_jax.adapters.modules import with_remix_kernels
from remix_jax.evaluation.generation import GenerationConfig, generate
from remix_jax.models.config import named_config
from remix_jax.models.llama import Decoder, init_params

# The kernels in Pallas's interpreter everywhere, and compiled by Triton where a GPU is present.
FORMS = ["pallas_interpret"] + (["pallas"] if jax.default_backend() == "gpu" else [])
LAYOUTS = [  # rows, f, n, r, k, gate, up, parts, d
    (1, 48, 8, 4, 2, True, True, 2, 40),
    (19, 160, 6, 3, 2, False, True, 1, 20),
    (5, 24, 4, 8, 1, True, False, 2, 136),
    (33, 64, 8, 16, 3, True, True, 1, 64),
]


def _inputs(rows, f, n, r, gate, up, parts, d, layers=3):
    layout_front = int(gate) + int(up)
    width = 2 * f + layout_front * n * r + parts * n
    keys = jax.random.split(jax.random.key(rows), 4)
    y = jax.random.normal(keys[0], (rows, width), jnp.float32)
    b_front = jax.random.normal(keys[1], (layers, layout_front, n * r, f)).astype(jnp.bfloat16)
    y2 = jax.random.normal(keys[2], (rows, d + n * r), jnp.float32)
    b_down = jax.random.normal(keys[3], (layers, n * r, d)).astype(jnp.bfloat16)
    return y, b_front, y2, b_down


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("rows,f,n,r,k,gate,up,parts,d", LAYOUTS)
def test_pallas_equals_xla(rows, f, n, r, k, gate, up, parts, d, form):
    layout = rk.MixtureLayout(f=f, n=n, r=r, k=k, omega=0.5, gate=gate, up=up, parts=parts)
    y, b_front, y2, b_down = _inputs(rows, f, n, r, gate, up, parts, d)
    for layer in (0, 2):
        layer = jnp.int32(layer)
        ref = rk.front_mixture_xla(y, b_front, layer, layout, jnp.bfloat16)
        out = rk.front_mixture(y, b_front, layer, layout, jnp.bfloat16, kernels=form)
        assert out.shape == (rows, f) and out.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), rtol=1e-2, atol=1e-2)
        ref = rk.down_mixture_xla(y, y2, b_down, layer, layout, jnp.bfloat16)
        out = rk.down_mixture(y, y2, b_down, layer, layout, jnp.bfloat16, kernels=form)
        assert out.shape == (rows, d)
        np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), rtol=1e-2, atol=1e-2)
    # the layer index matters: another layer's B gives another result
    other = rk.down_mixture(y, y2, b_down, jnp.int32(1), layout, jnp.bfloat16, kernels=form)
    assert np.abs(np.asarray(other, np.float32) - np.asarray(out, np.float32)).max() > 0.1


@pytest.mark.parametrize("form", FORMS)
def test_ties_go_to_the_lower_index(form):
    """Router logits with ties: the kernel selects the experts lax.top_k selects (lower index first)."""
    f, n, r, k, d = 32, 4, 4, 2, 16
    layout = rk.MixtureLayout(f=f, n=n, r=r, k=k, omega=1.0, gate=False, up=False, parts=1)
    y = jnp.zeros((3, 2 * f + n), jnp.float32)
    z = jnp.array([[1.0, 1.0, 1.0, 0.0], [0.0, 2.0, 2.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    y = y.at[:, 2 * f:].set(z)
    y2 = jnp.zeros((3, d + n * r), jnp.float32).at[:, d:].set(1.0)
    b_down = jnp.repeat(jnp.eye(n, dtype=jnp.bfloat16)[:, None, :], r, axis=1).reshape(1, n * r, n)
    b_down = jnp.pad(b_down, ((0, 0), (0, 0), (0, d - n)))  # column e of the output = r * [e selected]
    out = rk.down_mixture(y, y2, b_down, jnp.int32(0), layout, jnp.bfloat16, kernels=form)
    chosen = np.asarray(out[:, :n], np.float32) > 0
    _, idx = jax.lax.top_k(z, k)
    expect = np.zeros((3, n), bool)
    np.put_along_axis(expect, np.asarray(idx), True, axis=1)
    assert (chosen == expect).all(), (chosen, expect)


def test_kernel_names_are_checked():
    with pytest.raises(ValueError, match="expected one of"):
        rk.resolve_kernels("cuda")
    with pytest.raises(ValueError, match="remix_kernels"):
        GenerationConfig(remix_kernels="triton")
    assert rk.resolve_kernels("auto") == ("pallas" if jax.default_backend() == "gpu" else "xla")


@pytest.mark.parametrize("form", FORMS)
def test_generation_same_tokens_as_xla_form(form):
    cfg = named_config("tiny", dtype="float32", param_dtype="float32")
    params = init_params(Decoder(cfg), jax.random.key(0))["params"]
    model = build_model(cfg, AdapterConfig(method="remix", targets="ffn", rank=4, alpha=8.0, num_experts=4,
                                           top_k=2))
    extra = init_adapter_variables(model, jax.random.key(2))
    keys = iter(jax.random.split(jax.random.key(5), 100))
    extra["adapter"] = jax.tree_util.tree_map_with_path(
        lambda p, x: 0.1 * jax.random.normal(next(keys), x.shape, x.dtype) if p[-1].key == "lora_b" else x,
        extra["adapter"])
    variables = {"params": params, **extra}
    prompts = [[5, 9, 2, 7], [3, 3, 8]]
    runs = [generate(model, variables, prompts, GenerationConfig(max_new_tokens=4, remix_kernels=kern))
            for kern in ("xla", form)]
    assert runs[0].tokens == runs[1].tokens
    np.testing.assert_allclose(np.concatenate(runs[0].logprobs), np.concatenate(runs[1].logprobs), atol=1e-4)
    # the same kernels choice gives a model that hashes the same (a jitted generate compiles once)
    assert hash(with_remix_kernels(model, "xla")) == hash(with_remix_kernels(model, "xla"))
    assert with_remix_kernels(Decoder(cfg), "xla").mlp_cls is Decoder(cfg).mlp_cls
    assert dataclasses.is_dataclass(model.config)

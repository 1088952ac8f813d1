"""cast_factors_for_inference (LoRA factors stored in the compute dtype once per generation call) changes no
logit, for every method, in bfloat16; DoRA's factors and the routers stay float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.inference.variables import cast_factors_for_inference
from remix_jax.models.llama import Decoder, init_params
from remix_jax.models.model_config import named_config

METHODS = {
    "lora": dict(method="lora", rank=4),
    "dora": dict(method="dora", rank=4),
    "remix": dict(method="remix", num_experts=4, top_k=2, rank=4),
    "mixlora": dict(method="mixlora", num_experts=4, top_k=2, rank=4),
    "mixlora_ffn": dict(method="mixlora", num_experts=4, top_k=2, rank=4, mixlora_form="expert_ffn",
                        targets=("gate_proj", "up_proj", "down_proj")),
    "hydralora": dict(method="hydralora", num_experts=4, rank=4),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_cast_changes_no_logit(name):
    cfg = named_config("tiny", dtype="bfloat16")
    base = init_params(Decoder(cfg), jax.random.key(0))
    model = build_model(cfg, AdapterConfig(**{"targets": "all", **METHODS[name]}))
    extra = init_adapter_variables(model, jax.random.key(1))
    extra["adapter"] = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape),
                                    extra["adapter"])  # nonzero B (and magnitudes)
    variables = {**base, **extra}
    cast = cast_factors_for_inference(variables, cfg.dtype)
    dtypes = {jax.tree_util.keystr(p): x.dtype for p, x in jax.tree_util.tree_flatten_with_path(cast)[0]}
    factors = [k for k in dtypes if "lora_a" in k or "lora_b" in k]
    assert factors
    want = jnp.float32 if name == "dora" else jnp.bfloat16
    assert all(dtypes[k] == want for k in factors), dtypes
    assert all(dtypes[k] == jnp.float32 for k in dtypes if "router" in k)
    tokens = jax.random.randint(jax.random.key(3), (2, 10), 0, cfg.vocab_size)
    forward = jax.jit(lambda v: model.apply(v, tokens, deterministic=True)[0])  # one program per dtype tree
    ref, got = forward(variables), forward(cast)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


def test_float32_models_are_left_alone():
    v = {"params": {}, "adapter": {"x": {"lora_a": jnp.ones((2, 2))}}}
    assert cast_factors_for_inference(v, "float32") is v
    assert cast_factors_for_inference({"params": {}}, "bfloat16") == {"params": {}}

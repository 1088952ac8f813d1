"""Bad adapter configs fail with a clear error naming the key, before anything is compiled."""

import pytest

from remix_jax.adapters import AdapterConfig, AdapterConfigError, build_model, validate_adapter_config
from remix_jax.models.model_config import named_config

TINY = named_config("tiny")


@pytest.mark.parametrize("kw,key", [
    (dict(method="remixx"), "method"),
    (dict(method="remix", num_experts=4, top_k=5), "top_k"),
    (dict(top_k=0), "top_k"),
    (dict(rank=0), "rank"),
    (dict(targets=("gate_proj", "qproj")), "targets"),
    (dict(targets=()), "targets"),
    (dict(omega="sqrt"), "omega"),
    (dict(method="mixlora", omega="paper"), "omega"),
    (dict(router_scope="layer"), "router_scope"),
    (dict(method="mixlora", mixlora_form="expert_ffn", router_scope="projection"), "mixlora_form"),
    (dict(expert_compute="sparse"), "expert_compute"),
])
def test_bad_config_names_the_key(kw, key):
    with pytest.raises(AdapterConfigError, match=repr(key)):
        AdapterConfig(**kw)
    with pytest.raises(AdapterConfigError, match=repr(key)):
        validate_adapter_config(kw, TINY)


def test_model_dependent_and_unknown_keys():
    with pytest.raises(AdapterConfigError, match="'rank'"):
        build_model(TINY, AdapterConfig(rank=65))  # tiny: d = 64
    with pytest.raises(AdapterConfigError, match="num_expert"):
        validate_adapter_config({"num_expert": 4}, TINY)


def test_normalisation():
    assert AdapterConfig(method="lora", num_experts=8, top_k=2).num_experts == 1
    assert AdapterConfig(targets="attn").targets == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert AdapterConfig(targets=("down_proj", "ffn", "q_proj")).targets == (
        "q_proj", "gate_proj", "up_proj", "down_proj")
    assert len(AdapterConfig(targets="all").targets) == 7
    c = AdapterConfig(method="remix", top_k=2, rank=8, alpha=16.0)
    assert c.omega_value() == 1.0 and c.replace(omega="rslora").omega_value() == 4.0
    # the paper's 2/(k r), whatever alpha: 2/16 with k=2, r=8 (8x smaller than alpha/(k r) at alpha 16)
    assert c.replace(omega="paper").omega_value() == 0.125
    assert c.replace(omega="paper", alpha=4.0, top_k=1, rank=4).omega_value() == 0.5
    assert AdapterConfig(method="uniform_random", top_k=4, rank=2, omega="paper").omega_value() == 0.25
    assert AdapterConfig(method="rslora", rank=4, alpha=8.0).lora_scale() == 4.0

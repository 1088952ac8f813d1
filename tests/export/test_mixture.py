"""Routed mixtures outside JAX: our model vs transformers loading the remote-code export (ReMix, MixLoRA in both
forms, HydraLoRA, dense softmax; block and per-projection routers; LLaMA and Qwen2), the experts each token
selects, the export's format, and what cannot be exported."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.export import modeling_remix_mixture as remote  # PyTorch (torch: a test extra)
from remix_jax.export.mixture import save_mixture
from remix_jax.routing import sampler
from remix_jax.routing.routers import route
from remix_jax.training.checkpointing import flatten_tree
from tests.export.helpers import TOKENS, adapted, our_logits, random_trainable, torch, torch_logits, transformers

FFN = ("gate_proj", "up_proj", "down_proj")
ALL = ("q_proj", "k_proj", "v_proj", "o_proj") + FFN
CASES = {  # name -> (model kind, adapter config)
    "remix-llama-all": ("llama", dict(method="remix", targets=ALL, num_experts=4, top_k=2, rank=4, alpha=8.0)),
    "remix-qwen2-projection": ("qwen2", dict(method="remix", targets=("v_proj", "gate_proj", "down_proj"),
                                             router_scope="projection", num_experts=5, top_k=3, rank=2, alpha=4.0,
                                             omega="rslora")),
    "mixlora-tied": ("tied", dict(method="mixlora", targets=FFN + ("o_proj",), num_experts=4, top_k=2, rank=4,
                                  alpha=8.0)),
    "mixlora-expert-ffn-qwen2": ("qwen2", dict(method="mixlora", mixlora_form="expert_ffn", targets=FFN,
                                               num_experts=6, top_k=2, rank=4, alpha=16.0, omega="rslora")),
    "hydralora-llama": ("llama", dict(method="hydralora", targets=("q_proj", "up_proj", "down_proj"),
                                      num_experts=3, rank=4, alpha=8.0)),
    "softmax-dense-qwen2": ("qwen2", dict(method="softmax_dense", targets=("k_proj", "gate_proj"), num_experts=3,
                                          rank=2, alpha=4.0)),
}
TOL = 2e-5


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tiny_base, tmp_path_factory):
    kind, kw = CASES[request.param]
    _, cfg, base = tiny_base(kind)
    acfg, model = adapted(cfg, **kw)
    trainable = random_trainable(model, seed=2)
    out = save_mixture(tmp_path_factory.mktemp(request.param) / "mixture", cfg, base, trainable, acfg)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, attn_implementation="eager")
    return dict(cfg=cfg, base=base, acfg=acfg, model=model, trainable=trainable, out=out, hf=hf.float().eval())


def test_transformers_computes_our_logits(exported):
    e = exported
    ours = our_logits(e["model"], e["base"], e["trainable"])
    no_router = {"adapter": e["trainable"]["adapter"], "router": jax.tree.map(np.zeros_like, e["trainable"]["router"])}
    # The routing matters: with all router logits equal, other experts (or weights) are used.
    assert np.abs(ours - our_logits(e["model"], e["base"], no_router)).max() > 0.05
    np.testing.assert_allclose(torch_logits(e["hf"]), ours, atol=TOL, rtol=0)


def _routing_sites(hf):
    """{(layer, site): module} of every router of the PyTorch model; site "mlp" is the block router."""
    sites = {}
    for i, layer in enumerate(hf.model.layers):
        if getattr(layer.mlp, "router", None) is not None:
            sites[(i, "mlp")] = layer.mlp
        for parent in (layer.self_attn, layer.mlp):
            for name in ALL:
                module = getattr(parent, name, None)
                if type(module).__name__ == "MixtureLinear" and module.router is not None:  # the remote copy
                    sites[(i, name)] = module
    return sites


def _our_router(trainable, layer: int, site: str) -> np.ndarray:
    r = trainable["router"]["layers"]
    w = r["mlp"]["weight"] if site == "mlp" else r["mlp" if site in FFN else "attn"][site]["weight"]
    return np.asarray(w[layer])  # [d_in, n]


def test_selected_experts_agree(exported):
    """Every router's input captured in the PyTorch forward pass, routed by the PyTorch module and by our
    routing rule (routing/routers.py): the same experts for every token, the same weights; and the experts
    our own forward pass selects (routing_stats load per block) are the ones transformers selects."""
    e = exported
    acfg, hf = e["acfg"], e["hf"]
    sites = _routing_sites(hf)
    assert sites
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, key=key: inputs.__setitem__(key, args[0].detach()))
             for key, m in sites.items()]
    torch_logits(hf)
    for h in hooks:
        h.remove()
    assert set(inputs) == set(sites)
    _, stats = e["model"].apply({"params": e["base"], **e["trainable"]}, jnp.asarray(TOKENS),
                                mutable=["routing_stats"])
    stats = stats["routing_stats"]["layers"]
    distinct = 0
    for (layer, site), module in sites.items():
        x = inputs[(layer, site)]
        with torch.no_grad():
            pi, selected = remote.route(module.router, x, remote.check_spec(hf.config.remix_mixture))
        pi, selected = pi.numpy(), selected.numpy()
        logits = jnp.einsum("...d,dn->...n", jnp.asarray(x.numpy()), jnp.asarray(_our_router(e["trainable"], layer,
                                                                                             site)))
        ours = route(acfg.method, logits, n=acfg.num_experts, k=acfg.top_k, omega=acfg.omega_value(), key=None)
        our_pi = np.zeros(pi.shape, np.float32)
        np.put_along_axis(our_pi, np.asarray(ours.experts), np.asarray(ours.weights), axis=-1)
        if acfg.selects_top_k:
            our_sel = np.zeros(pi.shape, bool)
            np.put_along_axis(our_sel, np.asarray(ours.experts), True, axis=-1)
            np.testing.assert_array_equal(selected, our_sel)
            codes = (selected * (1 << np.arange(acfg.num_experts))).sum(-1)
            distinct = max(distinct, len(np.unique(codes)))
        np.testing.assert_allclose(pi, our_pi, atol=5e-6, rtol=0)  # two float32 softmaxes (torch's, XLA's)
        # Our own forward pass (its own inputs): the fraction of tokens selecting each expert (dense routers:
        # the mean weight of each expert), per block.
        node = stats["mlp"] if site == "mlp" else stats["mlp" if site in FFN else "attn"][site]
        load = selected.reshape(-1, acfg.num_experts).mean(0) if acfg.selects_top_k else pi.reshape(
            -1, acfg.num_experts).mean(0)
        np.testing.assert_allclose(np.asarray(node["load"][layer]), load, atol=1e-5, rtol=0)
    if acfg.selects_top_k:
        assert distinct > 3  # tokens do go to different experts


def test_config_and_tensor_names(exported):
    e = exported
    acfg, cfg = e["acfg"], e["cfg"]
    raw = json.loads((e["out"] / "config.json").read_text())
    arch = "Qwen2" if cfg.model_type == "qwen2" else "Llama"
    assert raw["model_type"] == f"remix_mixture_{arch.lower()}"
    assert raw["architectures"] == [f"RemixMixture{arch}ForCausalLM"]
    assert raw["auto_map"] == {"AutoConfig": f"modeling_remix_mixture.RemixMixture{arch}Config",
                               "AutoModelForCausalLM": f"modeling_remix_mixture.RemixMixture{arch}ForCausalLM"}
    spec = raw["remix_mixture"]
    assert spec["method"] == acfg.method and spec["targets"] == list(acfg.targets)
    assert (spec["num_experts"], spec["top_k"], spec["rank"]) == (acfg.num_experts, acfg.top_k, acfg.rank)
    if acfg.method == "remix":  # omega = alpha/(k r) or alpha/sqrt(k r); the experts themselves are unscaled
        kr = acfg.top_k * acfg.rank
        assert spec["selected_weight"] == pytest.approx(acfg.alpha / (kr if acfg.omega == "lora" else kr ** 0.5))
        assert spec["expert_scale"] == 1.0
    else:
        assert spec["expert_scale"] == pytest.approx(acfg.alpha / (acfg.rank if acfg.omega == "lora"
                                                                   else acfg.rank ** 0.5))
    from safetensors import safe_open

    with safe_open(str(e["out"] / "model.safetensors"), "np") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    n, r, d = acfg.num_experts, acfg.rank, cfg.hidden_size
    d_in = {"q_proj": d, "k_proj": d, "v_proj": d, "o_proj": d, "gate_proj": d, "up_proj": d, "down_proj": 96}
    d_out = {"q_proj": d, "k_proj": 32, "v_proj": 32, "o_proj": d, "gate_proj": 96, "up_proj": 96, "down_proj": d}
    block = acfg.router_scope == "block" and any(t in FFN for t in acfg.targets)
    for i in range(cfg.num_layers):
        for name in acfg.targets:
            m = f"model.layers.{i}.{'mlp' if name in FFN else 'self_attn'}.{name}"
            assert shapes[f"{m}.lora_A"] == ((r, d_in[name]) if acfg.method == "hydralora" else (n, r, d_in[name]))
            assert shapes[f"{m}.lora_B"] == (n, d_out[name], r)
            assert shapes[f"{m}.weight"] == (d_out[name], d_in[name])
            own = not (block and name in FFN)
            assert (f"{m}.router.weight" in shapes) == own
            if own:
                assert shapes[f"{m}.router.weight"] == (n, d_in[name]) and dtypes[f"{m}.router.weight"] == "F32"
        assert (f"model.layers.{i}.mlp.router.weight" in shapes) == block
    base_names = {k for k in shapes if not any(s in k for s in ("lora_", "router"))}
    n_router = sum("router" in k for k in shapes)
    assert len(shapes) == len(base_names) + 2 * len(acfg.targets) * cfg.num_layers + n_router
    # The stacked factors, split per block and transposed per expert.
    name = acfg.targets[-1]
    ours = flatten_tree(e["trainable"]["adapter"])[f"layers/{'mlp' if name in FFN else 'attn'}/{name}/lora_b"]
    with safe_open(str(e["out"] / "model.safetensors"), "np") as f:
        got = f.get_tensor(f"model.layers.1.{'mlp' if name in FFN else 'self_attn'}.{name}.lora_B")
    np.testing.assert_array_equal(got, np.transpose(ours[1], (0, 2, 1)))


def test_needs_trust_remote_code_and_keeps_routers_in_float32(tiny_base, tmp_path):
    _, cfg, base = tiny_base("llama")
    acfg, model = adapted(cfg, method="remix", targets=FFN + ("q_proj",), num_experts=4, top_k=2, rank=2)
    out = save_mixture(tmp_path / "mix", cfg, base, random_trainable(model), acfg, dtype="bfloat16")
    with pytest.raises(ValueError, match="trust_remote_code"):
        transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.bfloat16)
    layer = hf.model.layers[0]
    assert layer.mlp.gate_proj.weight.dtype == torch.bfloat16
    assert layer.mlp.router.weight.dtype == torch.float32
    assert layer.self_attn.q_proj.router.weight.dtype == torch.float32


def test_top_k_ties_and_signed_zeros_as_ours():
    """The PyTorch top-k picks exactly what lax.top_k and our sort-free top-k pick: ties to the lower index, and
    +0.0 above -0.0 (the IEEE total order)."""
    rows = np.array([[1.0, 1.0, 1.0, 1.0, 1.0],
                     [0.0, -0.0, 0.0, -0.0, 0.0],
                     [-0.0, -0.0, 0.0, -1.0, 0.0],
                     [2.0, 3.0, 3.0, -np.inf, 3.0],
                     [-1e-30, 1e-30, -0.0, 0.0, 5.0],
                     [np.float32(0.1) + np.float32(0.2), np.float32(0.3), 0.3, 0.30000001, -2.0]], np.float32)
    rows = np.concatenate([rows, np.random.default_rng(0).normal(size=(64, 5)).round(1).astype(np.float32)])
    for k in range(1, 5):
        got = remote.top_k_mask(torch.tensor(rows), k).numpy()
        _, idx = jax.lax.top_k(jnp.asarray(rows), k)
        want = np.zeros(rows.shape, bool)
        np.put_along_axis(want, np.asarray(idx), True, axis=-1)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, np.asarray(sampler.top_k_mask(jnp.asarray(rows), k)))


@pytest.mark.parametrize("kw,message", [
    (dict(method="lora", targets=FFN), "--format=peft"),
    (dict(method="uniform_random", targets=FFN), "random at inference"),
    (dict(method="remix", targets=FFN, sample_at_inference=True), "samples the experts at inference"),
])
def test_unexportable_methods(tiny_base, tmp_path, kw, message):
    _, cfg, base = tiny_base("llama")
    acfg, model = adapted(cfg, rank=2, num_experts=4, top_k=2, **kw)
    with pytest.raises(ValueError, match=message):
        save_mixture(tmp_path / "mix", cfg, base, random_trainable(model), acfg)
    assert not (tmp_path / "mix").exists()

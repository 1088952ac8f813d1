"""Adapters on the tiny decoder: base equivalence at B = 0, rank-k*r identity, gradients, DoRA, MixLoRA."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.adapters.modules import AdaptedMLP, AdaptedProjection
from remix_jax.models.llama import Decoder, init_params
from remix_jax.models.model_config import named_config
from remix_jax.routing import collect_routing_stats
from remix_jax.routing.routers import RouterOutput, mixlora_route

TINY = named_config("tiny")
TOKENS = jax.random.randint(jax.random.key(1), (2, 8), 0, TINY.vocab_size)
SEGMENTS = jnp.array([[1] * 8, [1] * 5 + [0] * 3], jnp.int32)  # row 2 right-padded


@functools.cache
def base_params():
    return init_params(Decoder(TINY), jax.random.key(0))


@functools.cache
def base_logits():
    return Decoder(TINY).apply(base_params(), TOKENS, segment_ids=SEGMENTS)[0]


def with_random_b(adapter, key=2, std=0.3):
    """Replace every lora_b (zero at init) with random values so the adapters do something."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(adapter)
    keys = jax.random.split(jax.random.key(key), len(leaves))
    new = [std * jax.random.normal(kk, v.shape) if "lora_b" in jax.tree_util.keystr(p) else v
           for (p, v), kk in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, new)


@functools.cache
def _built(cfg: AdapterConfig):
    model = build_model(TINY, cfg)
    return model, init_adapter_variables(model, jax.random.key(3))


def setup(cfg: AdapterConfig, random_b=False):
    model, av = _built(cfg)
    av = dict(av)
    if random_b:
        av["adapter"] = with_random_b(av["adapter"])
    return model, av


@functools.cache
def _forward(model, deterministic):
    def f(params, av, key):
        (logits, _), stats = model.apply({**params, **av}, TOKENS, segment_ids=SEGMENTS,
                                         deterministic=deterministic, rngs={"routing": key},
                                         mutable=["routing_stats"])
        return logits, collect_routing_stats(stats)
    return jax.jit(f)


def run(model, av, deterministic=False, key=0):
    return _forward(model, deterministic)(base_params(), av, jax.random.key(key))


CONFIGS = [
    dict(method="lora"), dict(method="rslora", targets="all"), dict(method="dora", targets="all"),
    dict(method="remix"), dict(method="remix", targets="all", router_scope="projection"),
    dict(method="remix", expert_compute="gather"), dict(method="mixlora"),
    dict(method="mixlora", mixlora_form="expert_ffn"), dict(method="mixlora", targets=("q_proj", "up_proj")),
    dict(method="hydralora"), dict(method="softmax_dense"),
    dict(method="uniform_random", expert_compute="gather"),
]


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_zero_b_gives_base_logits_and_nonzero_b_does_not(kw):
    cfg = AdapterConfig(**kw)
    model, av = setup(cfg)
    assert set(av) == {"adapter", "router"}
    assert (av["router"] == {}) == (cfg.method in ("lora", "rslora", "dora", "uniform_random"))
    logits, stats = run(model, av)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(base_logits()), atol=2e-5, rtol=1e-5)
    if cfg.routed:
        L, B, T = TINY.num_layers, *TOKENS.shape
        shapes = {k: v.shape for k, v in stats.items()}
        assert shapes == {"log_prob": (L, B, T), "aux_loss": (L,), "ess_applied": (L,), "ess_softmax": (L,),
                          "entropy": (L,), "load": (L, cfg.num_experts), "distinct_subsets": (L,),
                          "logit_std": (L,)}
        assert np.all(np.asarray(stats["log_prob"])[:, 1, 5:] == 0.0)  # padding
    else:
        assert stats == {}
    changed, _ = run(model, {**av, "adapter": with_random_b(av["adapter"])})
    assert float(jnp.abs(changed - base_logits()).max()) > 1e-3


@pytest.mark.parametrize("k,omega", [(1, "lora"), (3, "lora"), (3, "paper")])
def test_remix_with_fixed_selection_equals_rank_kr_lora(k, omega):
    """Router P = 0 ties all logits, so top-k selects experts 0..k-1 for every token; the model must then
    equal a plain LoRA of rank k*r whose A/B concatenate those experts' factors (omega = alpha/(k*r); the
    paper's omega = 2/(k*r) is that LoRA with alpha 2)."""
    cfg = AdapterConfig(method="remix", top_k=k, rank=4, alpha=8.0, omega=omega)
    model, av = setup(cfg, random_b=True)
    av["router"] = jax.tree.map(jnp.zeros_like, av["router"])
    logits, _ = run(model, av, deterministic=True)
    lora_cfg = AdapterConfig(method="lora", rank=k * 4, alpha=8.0 if omega == "lora" else 2.0)
    lora_model = build_model(TINY, lora_cfg)

    def concat(node):  # a [L, n, d, r] -> [L, d, k*r]; b [L, n, r, f] -> [L, k*r, f]
        a, b = node["lora_a"][:, :k], node["lora_b"][:, :k]
        return {"lora_a": jnp.concatenate(list(jnp.moveaxis(a, 1, 0)), axis=-1),
                "lora_b": jnp.concatenate(list(jnp.moveaxis(b, 1, 0)), axis=-2)}

    mlp = av["adapter"]["layers"]["mlp"]
    lora_av = {"adapter": {"layers": {"mlp": {p: concat(mlp[p]) for p in mlp}}}, "router": {}}
    ref, _ = run(lora_model, lora_av, deterministic=True)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("compute", ["dense", "gather"])
def test_projection_with_per_token_selection_equals_concatenated_lora(compute):
    cfg = AdapterConfig(method="remix", top_k=2, rank=4, expert_compute=compute)
    proj = AdaptedProjection(features=24, kernel_axes=("embed", "mlp"), adapter=cfg, name="up_proj")
    x = jax.random.normal(jax.random.key(0), (3, 5, 16))
    experts = jax.vmap(lambda kk: jax.random.choice(kk, 8, (2,), replace=False))(
        jax.random.split(jax.random.key(1), 15)).reshape(3, 5, 2).astype(jnp.int32)
    omega = cfg.omega_value()
    routing = RouterOutput(experts, jnp.full((3, 5, 2), omega), jnp.ones((3, 5, 8)) / 8, jnp.zeros((3, 5)))
    v = nn.meta.unbox(proj.init(jax.random.key(2), x, routing=routing))
    v["adapter"]["lora_b"] = jax.random.normal(jax.random.key(3), v["adapter"]["lora_b"].shape)
    y = proj.apply(v, x, routing=routing)
    a, b, w = v["adapter"]["lora_a"], v["adapter"]["lora_b"], v["params"]["kernel"]
    a_sel = jnp.concatenate([a[experts[..., j]] for j in range(2)], axis=-1)  # [3, 5, d, k*r]
    b_sel = jnp.concatenate([b[experts[..., j]] for j in range(2)], axis=-2)  # [3, 5, k*r, f]
    ref = x @ w + omega * jnp.einsum("btd,btdr,btrf->btf", x, a_sel, b_sel)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-4, rtol=1e-4)


def test_remix_training_ess_is_k_and_inference_is_deterministic():
    cfg = AdapterConfig(method="remix", top_k=3)
    model, av = setup(cfg, random_b=True)
    for key in range(3):  # every step
        _, stats = run(model, av, key=key)
        np.testing.assert_allclose(np.asarray(stats["ess_applied"]), 3.0, rtol=1e-6)
        assert np.all(np.asarray(stats["log_prob"])[:, 0] < 0)
    inf_a, st = run(model, av, deterministic=True, key=0)
    inf_b, _ = run(model, av, deterministic=True, key=1)
    np.testing.assert_array_equal(np.asarray(inf_a), np.asarray(inf_b))
    np.testing.assert_array_equal(np.asarray(st["log_prob"]), 0.0)
    tr_a, _ = run(model, av, key=0)
    tr_b, _ = run(model, av, key=1)
    assert float(jnp.abs(tr_a - tr_b).max()) > 1e-4
    sampling = build_model(TINY, cfg.replace(sample_at_inference=True))
    s_a, _ = run(sampling, av, deterministic=True, key=0)
    s_b, _ = run(sampling, av, deterministic=True, key=1)
    assert float(jnp.abs(s_a - s_b).max()) > 1e-4


def _sft_loss(logits):
    labels = jnp.roll(TOKENS, -1, axis=1)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1))


@pytest.mark.parametrize("method", ["remix", "mixlora", "hydralora", "softmax_dense"])
def test_router_gradients(method):
    model, av = setup(AdapterConfig(method=method), random_b=True)

    def losses(adapter, router):
        logits, stats = run(model, {"adapter": adapter, "router": router})
        return _sft_loss(logits), jnp.sum(stats["log_prob"])

    g_sft = jax.grad(lambda a, r: losses(a, r)[0], argnums=(0, 1))(av["adapter"], av["router"])
    router_norm = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_sft[1]))
    adapter_norm = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_sft[0]))
    assert adapter_norm > 0
    if method == "remix":
        assert router_norm == 0.0  # no gradient from the SFT loss itself
        g_lp = jax.grad(lambda r: losses(av["adapter"], r)[1])(av["router"])
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_lp)) > 0  # the estimator's path
    else:
        assert router_norm > 0


def test_gather_and_dense_agree_with_gradients():
    outs = {}
    for compute in ("dense", "gather"):
        model, av = setup(AdapterConfig(method="mixlora", top_k=2, expert_compute=compute), random_b=True)
        f = lambda a, r, model=model: _sft_loss(run(model, {"adapter": a, "router": r})[0])
        outs[compute] = jax.value_and_grad(f, argnums=(0, 1))(av["adapter"], av["router"])
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=1e-4),
                 outs["dense"], outs["gather"])


def test_mixlora_expert_ffn_matches_per_expert_ffn_reference():
    cfg = AdapterConfig(method="mixlora", mixlora_form="expert_ffn", top_k=2, rank=4)
    mlp = AdaptedMLP(TINY, functools.partial(AdaptedProjection, adapter=cfg), adapter=cfg)
    x = jax.random.normal(jax.random.key(0), (2, 5, TINY.hidden_size))
    v = nn.meta.unbox(mlp.init({"params": jax.random.key(1)}, x))
    v["adapter"] = with_random_b(v["adapter"])
    y = mlp.apply(v, x)
    p, ad, s = v["params"], v["adapter"], cfg.lora_scale()
    out = mixlora_route(x @ v["router"]["weight"], 2)

    def proj(name, h, e):  # each token through expert e[b, t]'s LoRA: h [B, T, d_in] -> [B, T, d_out]
        a, b = ad[name]["lora_a"][e], ad[name]["lora_b"][e]  # [B, T, d_in, r], [B, T, r, d_out]
        return h @ p[name]["kernel"] + s * jnp.einsum("btd,btdr,btrf->btf", h, a, b)

    # Expert j of each token: the whole FFN with that expert's LoRAs, weighted by its renormalised weight.
    ref = 0.0
    for j in range(2):
        e = out.experts[..., j]
        h = jax.nn.silu(proj("gate_proj", x, e)) * proj("up_proj", x, e)
        ref = ref + out.weights[..., j, None] * proj("down_proj", h, e)
    np.testing.assert_allclose(np.asarray(y), ref, atol=1e-4, rtol=1e-4)


def test_mixlora_aux_loss_and_weights_in_model():
    model, av = setup(AdapterConfig(method="mixlora", load_balance_coef=0.5))
    _, stats = run(model, av)
    aux = np.asarray(stats["aux_loss"])
    # coef * n * sum_i f_i Pbar_i (exact values: tests/routing/test_routers_diagnostics.py).
    assert aux.shape == (TINY.num_layers,) and np.all(aux > 0) and np.all(np.isfinite(aux))
    np.testing.assert_allclose(np.asarray(stats["load"]).sum(-1), 2.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(stats["log_prob"]), 0.0)


def test_dora_matches_reference_formula():
    cfg = AdapterConfig(method="dora", rank=4, alpha=8.0)
    proj = AdaptedProjection(features=24, kernel_axes=("embed", "mlp"), adapter=cfg, name="gate_proj")
    x = jax.random.normal(jax.random.key(0), (3, 16))
    v = nn.meta.unbox(proj.init(jax.random.key(1), x))
    v["adapter"]["lora_b"] = jax.random.normal(jax.random.key(2), (4, 24))
    v["adapter"]["magnitude_delta"] = jax.random.normal(jax.random.key(3), (24,)) * 0.1
    y = proj.apply(v, x)
    w, a, b = (np.asarray(t, np.float64) for t in (v["params"]["kernel"], v["adapter"]["lora_a"],
                                                   v["adapter"]["lora_b"]))
    m = np.linalg.norm(w, axis=0) + np.asarray(v["adapter"]["magnitude_delta"])
    vmat = w + cfg.lora_scale() * a @ b
    ref = np.asarray(x, np.float64) @ (m * vmat / np.linalg.norm(vmat, axis=0))
    np.testing.assert_allclose(np.asarray(y), ref, atol=1e-4, rtol=1e-4)

"""Rematerialisation policies: same objective and gradients (the offloading ones too: on the CPU backend host and
device memory are one); save_proj_out keeps less than dots_no_batch."""

import jax
import jax.numpy as jnp
import numpy as np

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.models.llama import Decoder, init_params
from remix_jax.models.model_config import named_config
from remix_jax.training.objective import ObjectiveConfig, adapter_objective


def _config(remat: str, keep: float = 0.0, unroll: int = 1):
    return named_config("tiny", hidden_size=128, intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=32, vocab_size=256, remat=remat, offload_keep_fraction=keep, scan_unroll=unroll)


ACFG = AdapterConfig(method="remix", num_experts=8, top_k=2, rank=8)


def _batch(tokens):
    """A batch of full rows, one sequence each, from tokens [B, T]."""
    b, t = tokens.shape
    return {"tokens": tokens, "loss_mask": jnp.ones((b, t)), "segment_ids": jnp.ones((b, t), jnp.int32),
            "positions": jnp.broadcast_to(jnp.arange(t), (b, t))}


def _compiled_grad(model, base, trainable, batch, obj):
    """(objective value, gradient) of the compiled step and its temporary memory in bytes."""
    fn = jax.jit(jax.value_and_grad(
        lambda tr: adapter_objective(model.apply, tr, base, batch, jax.random.key(2), obj)[0]))
    compiled = fn.lower(trainable).compile()
    return compiled(trainable), compiled.memory_analysis().temp_size_in_bytes


def _inputs():
    """Base weights, trainable variables and a batch, made once: the policy changes no parameter."""
    cfg = _config("none")
    model = build_model(cfg, ACFG)
    base = init_params(Decoder(cfg), jax.random.key(0))["params"]
    variables = init_adapter_variables(model, jax.random.key(1))
    trainable = {k: variables.get(k, {}) for k in ("adapter", "router")}
    # Nonzero B so the adapter path carries gradient everywhere.
    trainable = jax.tree.map(lambda x: x + 0.01, trainable)
    return base, trainable, _batch(jax.random.randint(jax.random.key(3), (2, 128), 0, cfg.vocab_size))


def _objective_grad(remat: str, base, trainable, batch, keep: float = 0.0):
    return _compiled_grad(build_model(_config(remat, keep), ACFG), base, trainable, batch,
                          ObjectiveConfig(num_samples=4, sampling_router=True))


def test_policies_agree_and_save_proj_out_saves_memory():
    inputs = _inputs()
    (v_ref, g_ref), temp_none = _objective_grad("none", *inputs)
    temps = {}
    for remat in ("dots_no_batch", "save_proj_out", "save_proj_out_attention", "full", "offload_proj_out",
                  "offload_layer_input"):
        (v, g), temps[remat] = _objective_grad(remat, *inputs)
        np.testing.assert_allclose(v, v_ref, rtol=1e-4)  # remat reorders float32 sums
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5), g, g_ref)
    assert temps["save_proj_out"] < 0.9 * temps["dots_no_batch"], temps
    assert temps["full"] <= temps["save_proj_out"] < temp_none, (temps, temp_none)
    # Part of each layer's input kept on device (the first 3/8 of the positions here): the same gradients.
    (v, g), _ = _objective_grad("offload_layer_input", *inputs, keep=0.375)
    np.testing.assert_allclose(v, v_ref, rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5), g, g_ref)


def test_a_fully_unrolled_layer_loop_keeps_the_recompute_apart():
    """Unrolled, forward and backward pass are one straight-line program, where XLA's CSE would merge each block's
    recompute with its forward (undoing the policy): the recompute is then wrapped in optimisation barriers
    (prevent_cse); the rolled loop needs none. Same objective and gradients either way."""
    # MixLoRA: routed, and deterministic (the unrolled loop draws ReMix's samples from other keys than the rolled)
    acfg = AdapterConfig(method="mixlora", num_experts=8, top_k=2, rank=8)
    base = init_params(Decoder(_config("none")), jax.random.key(0))["params"]
    trainable = jax.tree.map(lambda x: x + 0.01, init_adapter_variables(build_model(_config("none"), acfg),
                                                                        jax.random.key(1)))
    batch = _batch(jax.random.randint(jax.random.key(3), (2, 128), 0, 256))
    obj = ObjectiveConfig()
    texts, results = {}, {}
    for unroll in (1, 2):
        model = build_model(_config("save_proj_out", unroll=unroll), acfg)
        fn = jax.jit(jax.value_and_grad(
            lambda tr, model=model: adapter_objective(model.apply, tr, base, batch, jax.random.key(2), obj)[0]))
        texts[unroll] = fn.lower(trainable).as_text()
        results[unroll] = fn(trainable)
    assert texts[1].count("optimization_barrier") == 0
    assert texts[2].count("optimization_barrier") >= 1  # (the blocks may share one lowered function)
    np.testing.assert_allclose(results[2][0], results[1][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5), results[2][1], results[1][1])


def test_kept_positions():
    from remix_jax.models.llama import kept_positions

    assert kept_positions(_config("offload_layer_input", 0.375), 128) == 48
    assert kept_positions(_config("offload_layer_input", 0.999), 128) == 128  # rounds to all: nothing moves
    assert kept_positions(_config("offload_layer_input"), 128) == 0


def test_offload_keep_fraction_is_checked():
    import pytest

    from remix_jax.models.model_config import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"offload_keep_fraction=1.0: expected a fraction in \[0, 1\)"):
        _config("offload_layer_input", 1.0)
    with pytest.raises(ModelLoadError, match="applies only to remat='offload_layer_input' \\(not 'full'\\)"):
        _config("full", 0.5)
    # a fully unrolled loop keeps every layer's input on the device (its checkpoints take it as an argument)
    with pytest.raises(ModelLoadError, match="offloads nothing with the layer loop fully unrolled"):
        _config("offload_layer_input", unroll=2)
    _config("offload_layer_input", unroll=1)


def _attention_forward_trace(monkeypatch, remat: str):
    """The gradient's jaxpr with cuDNN flash attention, traced on the CPU (its device checks patched out: tracing
    needs no GPU): how many times the attention forward appears (once per layer body in the forward scan; again in
    the backward scan when the backward recomputes it) and how many [L, B, T, H, hd] stacks the forward scan saves."""
    import jax._src.cudnn.fused_attention_stablehlo as cudnn_attention

    from remix_jax.models.attention import CUDNN_ATTENTION_FWD

    monkeypatch.setattr(cudnn_attention, "check_cudnn_version", lambda *a, **k: 91000)
    monkeypatch.setattr(cudnn_attention, "check_is_flash_attention", lambda *a, **k: None)
    monkeypatch.setattr(cudnn_attention, "check_compute_capability", lambda *a, **k: True)
    cfg = named_config("tiny", hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=32, vocab_size=256, remat=remat, attention_impl="cudnn", dtype="bfloat16")
    model = build_model(cfg, AdapterConfig(method="lora", rank=8))
    base = jax.eval_shape(lambda: init_params(Decoder(cfg), jax.random.key(0))["params"])
    trainable = {"adapter": jax.eval_shape(lambda: init_adapter_variables(model, jax.random.key(1)))["adapter"]}
    b, t = 2, 128
    batch = _batch(jnp.zeros((b, t), jnp.int32))
    obj = ObjectiveConfig(num_samples=1, sampling_router=False)
    jaxpr = jax.make_jaxpr(jax.grad(
        lambda tr, base: adapter_objective(model.apply, tr, base, batch, jax.random.key(2), obj)[0]))(trainable, base)
    forwards = str(jaxpr).count(CUDNN_ATTENTION_FWD)
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    stacks = sum(v.aval.shape == (2, b, t, 4, 32) for v in scans[0].outvars)
    return forwards, stacks


def test_cudnn_attention_forward_runs_once_under_save_proj_out_attention(monkeypatch):
    import jax._src.cudnn.fused_attention_stablehlo as cudnn_attention

    from remix_jax.models.attention import CUDNN_ATTENTION_FWD

    assert cudnn_attention._dot_product_attention_fwd_p_wrapper.name == CUDNN_ATTENTION_FWD  # jax's name for it
    # save_proj_out_attention saves the forward's output and softmax statistics: no second forward, one output
    # stack (not two: the output is saved once, not also as "attn_out").
    assert _attention_forward_trace(monkeypatch, "save_proj_out_attention") == (1, 1)
    # save_proj_out saves the attention output only where a backward pass reads it (an adapted o_proj; here the
    # adapters are on the FFN), and never the statistics: the backward pass runs the forward again.
    assert _attention_forward_trace(monkeypatch, "save_proj_out") == (2, 0)
    # full saves nothing: the backward pass runs the forward again, and no output stack is saved.
    assert _attention_forward_trace(monkeypatch, "full") == (2, 0)


def _lora_grad(method: str, remat: str, chunks: int, t: int = 96):
    cfg = named_config("tiny", hidden_size=64, intermediate_size=1024, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=16, vocab_size=128, remat=remat, mlp_chunks=chunks)
    model = build_model(cfg, AdapterConfig(method=method, rank=4))
    base = init_params(Decoder(cfg), jax.random.key(0))["params"]
    variables = init_adapter_variables(model, jax.random.key(1))
    trainable = {"adapter": jax.tree.map(lambda a: a + 0.01, variables["adapter"])}  # nonzero B
    batch = _batch(jax.random.randint(jax.random.key(3), (2, t), 0, cfg.vocab_size))
    obj = ObjectiveConfig(num_samples=1, sampling_router=False)
    return variables, *_compiled_grad(model, base, trainable, batch, obj)


def test_mlp_chunks_same_gradients_less_memory():
    for method in ("lora", "dora"):
        variables, (v_ref, g_ref), temp_ref = _lora_grad(method, "full", 1)
        # 96 positions in 4 chunks of 24, and in 5 (20, 20, 20, 20, 16): the last chunk may be shorter.
        # (DoRA's weight-sized temporaries weigh as much as these small activations: memory is checked on LoRA.)
        for chunks in (4, 5):
            chunked_vars, (v, g), temp = _lora_grad(method, "full", chunks)
            # The same parameters under the same names: chunking adds no level to the tree.
            assert jax.tree.structure(chunked_vars) == jax.tree.structure(variables)
            np.testing.assert_allclose(v, v_ref, rtol=1e-5)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6), g, g_ref)
            # One layer's backward holds its [B, T, 1024] FFN tensors for a chunk of positions at a time.
            assert method == "dora" or temp < 0.9 * temp_ref, (method, chunks, temp, temp_ref)


def test_mlp_chunks_is_checked():
    import pytest

    from remix_jax.adapters.adapter_config import AdapterConfigError
    from remix_jax.models.model_config import ModelLoadError

    with pytest.raises(ModelLoadError, match="mlp_chunks=0: expected an integer >= 1"):
        named_config("tiny", mlp_chunks=0)
    cfg = named_config("tiny", mlp_chunks=2)
    with pytest.raises(AdapterConfigError, match="model.mlp_chunks=2 applies to the unrouted adapters"):
        build_model(cfg, AdapterConfig(method="remix", num_experts=4, top_k=2, rank=4))

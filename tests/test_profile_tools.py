"""scripts/profile_ops.py (where a compiled step's device time goes) and scripts/bench_train.py's --set
overrides, on the CPU backend."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest

_SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def _load(name):
    if str(_SCRIPTS) not in sys.path:
        sys.path.insert(0, str(_SCRIPTS))  # bench_train imports profile_ops by name, as when run as a script
    spec = importlib.util.spec_from_file_location(name, _SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


po = _load("profile_ops")
bt = _load("bench_train")


def test_hlo_op_names_and_union():
    text = """
  %fusion.12 = bf16[8,16]{1,0} fusion(%p0, %p1), kind=kLoop, calls=%fc, metadata={op_type="mul" op_name="jit(f)/mul"}
  ROOT %dot.3 = f32[8,8]{1,0} dot(%a, %b), metadata={op_name="jit(f)/dot_general" source_file="x.py"}
  %copy.1 = f32[8]{0} copy(%c)
"""
    assert po.hlo_op_names(text) == {"fusion.12": "jit(f)/mul", "dot.3": "jit(f)/dot_general"}
    assert po._union_ns([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25
    assert po._union_ns([]) == 0
    assert po.category("jit(f)/layers/attn/dot_product_attention_fwd", "cudnn_x") == "attention"
    assert po.category("", "nvjet_sm90_tst_256x128") == "matmul"
    assert po.category("", "memcpy128") == "copy"
    assert po.category("jit(f)/exp", "loop_exp_fusion") == "elementwise/reduction"
    backward = "jit(step)/transpose(jvp(vmap(Decoder)))/while/body/closed_call/layers/attn"
    assert po.category(f"{backward}/reduce_sum", "ynn_fusion.6") == "elementwise/reduction"
    assert po.category(f"{backward}/btkgd,bskd->bkgts/transpose", "copy_bitcast_fusion.9") == "copy"
    assert po.category(f"{backward}/jit(silu)", "copy_bitcast_fusion.3") == "copy"


def test_profile_calls_attributes_kernels_to_jax_ops():
    f = jax.jit(lambda a, b: (a @ b, jnp.tanh(a).sum()))
    a = jnp.ones((64, 64))
    compiled = f.lower(a, a).compile()
    jax.block_until_ready(compiled(a, a))
    report = po.profile_calls(lambda: jax.block_until_ready(compiled(a, a)), compiled.as_text(), calls=3)
    assert report["calls"] == 3 and report["kernels_per_call"] > 0
    assert 0 < report["busy_fraction"] <= 1.0
    names = " ".join(r["op_name"] for r in report["top"])
    assert "dot_general" in names  # the matmul's kernel is tied back to the JAX operation
    assert abs(sum(r["share"] for r in report["top"]) - 1.0) < 1e-3  # every kernel listed (few here)
    text = po.format_report(report)
    assert "kernels/call" in text and "by category" in text


def test_bench_train_overrides():
    from remix_jax.run_config import default_config

    c = default_config()
    bt.apply_override(c, "train.loss_chunk_tokens", "4096")
    bt.apply_override(c, "model.scan_unroll", "2")
    bt.apply_override(c, "optimizer.adapter_lr", "3e-4")
    bt.apply_override(c, "model.remat", "full")
    assert (c.train.loss_chunk_tokens, c.model.scan_unroll, c.model.remat) == (4096, 2, "full")
    assert c.optimizer.adapter_lr == pytest.approx(3e-4)
    with pytest.raises(SystemExit, match="unknown config key 'train.nope'"):
        bt.apply_override(c, "train.nope", "1")
    with pytest.raises(SystemExit, match="unknown config key"):
        bt.apply_override(c, "nosection.x", "1")


def test_bench_train_startup_rows():
    """--startup: one row of seconds before the first step per configuration; the unrolled step's trace is the
    longer program (the tiny shape has 2 layers)."""
    import types

    a = types.SimpleNamespace(shape="tiny", dtype="float32", remat="save_proj_out", attention="xla", batch=8,
                              seq=16, init="host", startup_compile=False)
    rows = [bt.run_startup(types.SimpleNamespace(**vars(a), set=s), bt.parse_run("lora:r=4"))
            for s in ("", "model.scan_unroll=2")]
    for row in rows:
        assert row["startup"] and row["method"] == "lora" and "compile_s" not in row
        assert all(row[k] >= 0 for k in ("init_s", "trace_s", "lower_s"))
    assert rows[1]["jaxpr_eqns"] > rows[0]["jaxpr_eqns"]
    compiled = bt.run_startup(types.SimpleNamespace(**{**vars(a), "startup_compile": True}, set=""),
                              bt.parse_run("lora:r=4"))
    assert compiled["compile_s"] > 0


def test_bench_remix_ffn_forms():
    """scripts/bench_remix_ffn.py: its frozen FFN stack against a direct float64 reference, ReMix's FFN with zero
    B equal to it, with nonzero B different, and one CPU run of main."""
    import numpy as np

    from remix_jax.adapters.adapter_config import AdapterConfig

    bf = _load("bench_remix_ffn")
    cfg = AdapterConfig(num_experts=4, top_k=2, rank=2)
    mats = bf.stacked_mats(3, 16, 24, cfg, jnp.float32)
    x = jax.random.normal(jax.random.key(0), (5, 16), jnp.float32)
    base = np.asarray(bf.ffn_stack("base", cfg, jnp.float32)(x, mats), np.float64)

    ref = np.asarray(x, np.float64)
    for layer in range(3):
        w1 = np.asarray(mats["base_gate_up"][layer], np.float64)
        wd = np.asarray(mats["base_down"][layer], np.float64)
        h = ref / np.sqrt(np.mean(ref * ref, axis=-1, keepdims=True) + 1e-5)
        y = h @ w1.T
        g, u = y[:, :24], y[:, 24:]
        ref = ref + (g / (1 + np.exp(-g)) * u) @ wd.T
    np.testing.assert_allclose(base, ref, rtol=1e-4, atol=1e-4)

    zero_b = {**mats, "remix_b_gate_up": 0 * mats["remix_b_gate_up"], "remix_b_down": 0 * mats["remix_b_down"]}
    remix = bf.ffn_stack("remix", cfg, jnp.float32)
    np.testing.assert_allclose(np.asarray(remix(x, zero_b)), base, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(remix(x, mats)) - base).max() > 1e-3

    rows = bf.main(["--batch_sizes=1", "--layers=2", "--calls=1", "--repeats=1"])
    assert [r["form"] for r in rows] == ["base", "remix"] and all(r["us_per_layer"] > 0 for r in rows)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
def test_profile_reads_the_host_when_another_backends_plane_is_empty():
    """A process that made a TPU topology (ahead-of-time compilation, tests/parallel/test_tpu_compile.py) gets an
    empty /device:TPU plane in its traces; the kernels of a program that runs on the host are still found."""
    from remix_jax.parallel import topology

    topology.topology_devices(topology.parse_topology("v5e:2x2"))
    f = jax.jit(lambda a: jnp.tanh(a) @ a)
    a = jnp.ones((32, 32))
    compiled = f.lower(a).compile()
    report = po.profile_calls(lambda: jax.block_until_ready(compiled(a)), compiled.as_text(), calls=2)
    assert report["kernels_per_call"] > 0 and "dot_general" in " ".join(r["op_name"] for r in report["top"])

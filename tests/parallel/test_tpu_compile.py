"""The train step compiled ahead of time for a TPU topology on this host (python -m remix_jax.compile:
training.aot_compile on the devices of parallel.topology), with libtpu.

The tiny model's real train step (ReMix, M=2) is compiled for a v5e 2x2 slice on a (data 1, fsdp 2, tensor 2)
mesh: the parameters and optimizer state are sharded by the logical rules, attention "auto" picks the splash
kernel (three Mosaic custom calls: forward, dq, dkv) and no [.., T, T] array is left in the compiled program,
while the same step with XLA attention has them (the check can fail).
"""

import importlib.util
import pathlib
import re

import pytest

from remix_jax.parallel import topology
from remix_jax.training import aot_compile

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason=f"libtpu is not installed: {topology.INSTALL}")
T = 384  # no other dimension of the tiny model's step is 384: a [.., 384, 384] array is an attention matrix
# Two rows, one per fsdp shard: no check depends on the batch (the kernels, the [T, T] arrays, the parameters'
# shardings, the memory report's sum), and the TPU compiler's time grows with it (~10 s a step at 2 rows, ~17 s at 8).
BATCH = 2


def smoke_config(attention: str):
    spec = importlib.util.spec_from_file_location(
        "smoke_config", pathlib.Path(__file__).resolve().parents[2] / "configs" / "smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("remix")
    c.data.batch_size, c.data.max_length = BATCH, T
    c.train.num_samples = 2
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 2, 2
    c.model.attention_impl = attention
    c.model.dtype = c.model.param_dtype = "auto"
    return c


def square_arrays(hlo: str) -> set[str]:
    return set(re.findall(rf"\w+\[[\d,]*{T},{T}\]", hlo))


@pytest.fixture(scope="module")
def splash_report():
    return aot_compile.compile_for_topology(smoke_config("auto"), "v5e:2x2", hlo=True)


@needs_libtpu
@pytest.mark.slow
def test_splash_kernel_and_no_score_matrix(splash_report):
    r = splash_report
    assert r["attention"] == "splash" and r["dtype"] == "bfloat16" and r["chips"] == 4
    assert r["device_kind"] == "TPU v5 lite"
    hlo = r["hlo"]
    assert hlo.count('custom_call_target="tpu_custom_call"') == 3
    for kernel in ("splash_mha_fwd_segmented_residuals", "splash_mha_dq_segmented", "splash_mha_dkv_segmented"):
        assert kernel in hlo
    assert square_arrays(hlo) == set()


@needs_libtpu
@pytest.mark.slow
def test_xla_attention_has_the_score_matrix():
    r = aot_compile.compile_for_topology(smoke_config("xla"), "v5e:2x2", hlo=True)
    assert r["attention"] == "xla"
    assert "tpu_custom_call" not in r["hlo"]
    assert any(s.startswith("f32[") for s in square_arrays(r["hlo"]))  # the softmax's float32 scores


@needs_libtpu
@pytest.mark.slow
def test_memory_report_is_consistent(splash_report):
    m = splash_report["memory"]
    assert m["total"] == m["argument"] + m["output"] - m["alias"] + m["temp"]
    assert m["alias"] > 0  # the donated state is reused for the new state
    assert splash_report["hbm_capacity_bytes"] == 16 * 2**30 and splash_report["fits"]
    text = aot_compile.format_report(splash_report)
    assert "fits; compiled in" in text and "capacity 16.000 GiB" in text


@needs_libtpu
@pytest.mark.slow
def test_state_shardings_on_the_topology(splash_report):
    rows = {r["name"]: r for part in ("base", "trainable") for r in splash_report["shardings"][part]}
    assert rows["['layers']['attn']['q_proj']['kernel']"]["spec"] == "(None, 'fsdp', 'tensor')"
    assert rows["['layers']['mlp']['down_proj']['kernel']"]["spec"] == "(None, 'tensor', 'fsdp')"
    assert rows["['embed']['embedding']"]["spec"] == "('tensor', 'fsdp')"
    q = rows["['layers']['attn']['q_proj']['kernel']"]  # [2, 64, 64] bfloat16 over 2 x 2 chips
    assert q["bytes_per_chip"] == 2 * 64 * 64 * 2 // 4
    lora_a = rows["['adapter']['layers']['mlp']['gate_proj']['lora_a']"]
    assert lora_a["spec"] == "(None, None, 'fsdp', None)" and lora_a["dtype"] == "float32"
    # Adam's two moments follow each trainable array; only the step counters are replicated
    opt = splash_report["shardings"]["opt_state"]
    trainable = splash_report["shardings"]["trainable"]
    assert sum(r["bytes_per_chip"] for r in opt if r["dtype"] == "float32") == \
        2 * sum(r["bytes_per_chip"] for r in trainable)
    assert all(r["spec"] == "()" for r in opt if r["dtype"] == "int32")


@needs_libtpu
def test_multislice_mesh_puts_data_across_slices():
    from remix_jax.parallel import mesh as mesh_lib

    devices = topology.topology_devices(topology.parse_topology("v5e:2x2"), num_slices=2)
    mesh = mesh_lib.make_mesh({"data": 4, "fsdp": 2, "tensor": 1}, devices)
    slices = [[d.slice_index for d in row.flat] for row in mesh.devices]
    assert slices == [[0, 0], [0, 0], [1, 1], [1, 1]]  # each slice holds whole fsdp groups
    with pytest.raises(ValueError, match="multiple of the 2 slices"):
        mesh_lib.make_mesh({"data": 1, "fsdp": 8, "tensor": 1}, devices)


@needs_libtpu
def test_compiles_while_another_process_holds_the_libtpu_lock():
    """Two processes compiling for a topology at once (test workers, a topology sweep) do not fight over libtpu's
    one-process lock: this process holds it while a fresh one makes a topology. Where another process holds it
    already (any jax program on the machine that loaded libtpu), the fresh one makes its topology under that
    process's lock instead."""
    import fcntl
    import subprocess
    import sys

    lockfile = pathlib.Path("/tmp/libtpu_lockfile")
    existed = lockfile.exists()
    with open(lockfile, "a") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            ours = True
        except BlockingIOError:  # held by another process: the situation under test already
            ours = False
        try:
            code = ("from remix_jax.parallel import topology as t; "
                    "print(len(t.topology_devices(t.parse_topology('v5e:2x2'))))")
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                               env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
        finally:
            if ours:
                fcntl.lockf(f, fcntl.LOCK_UN)
    if not existed:
        lockfile.unlink(missing_ok=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == "4"


@pytest.mark.parametrize("name,libtpu_name,chips", [
    ("v5p-128", "v5:4x4x4", 64), ("v5p-32", "v5:2x2x4", 16), ("v5e-16", "v5e:4x4", 16),
    ("v5e-256", "v5e:16x16", 256), ("v6e-64", "v6e:8x8", 64), ("v4-8", "v4:2x2x1", 4),
    ("v5p:2x2x1", "v5:2x2x1", 4), ("v5e:2x2", "v5e:2x2", 4)])
def test_topology_names(name, libtpu_name, chips):
    t = topology.parse_topology(name)
    assert (t.topology_name, t.chips) == (libtpu_name, chips)


@pytest.mark.parametrize("name,bounds", [("v6e-1", (1, 1, 1)), ("v5e:1x2", (1, 2, 1)), ("v5e-16", (2, 2, 1)),
                                         ("v5p-128", (2, 2, 1)), ("v4-8", (2, 2, 1))])
def test_host_bounds_fit_small_grids(name, bounds):
    assert topology.parse_topology(name).host_bounds == bounds


@needs_libtpu
def test_single_chip_topology():
    # a 1x1 grid is not divisible by libtpu's default 2x2 chips per host: the bounds follow the grid
    assert len(topology.topology_devices(topology.parse_topology("v6e-1"))) == 1


@pytest.mark.parametrize("name,match", [("v5p-127", "TensorCores"), ("v5e-12", "unknown slice size"),
                                        ("v7x-8", "generations"), ("v5e:2x2x2", "2 positive dimensions")])
def test_bad_topology_names(name, match):
    with pytest.raises(ValueError, match=match):
        topology.parse_topology(name)


def test_compiler_out_of_memory_message():
    # libtpu 0.0.42's message for a step that needs more HBM than a chip has (tiny model, 2048 x 2048 tokens)
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (281.22G) "
           "exceeds available HBM (15.75G).")
    oom = aot_compile.out_of_memory(msg)
    assert oom["used_bytes"] == int(281.22 * 2**30) and oom["limit_bytes"] == int(15.75 * 2**30)
    assert oom["message"] == msg
    assert aot_compile.out_of_memory("INVALID_ARGUMENT: bad shape") is None


@needs_libtpu
@pytest.mark.slow
def test_a_step_that_does_not_fit_says_so():
    c = smoke_config("xla")
    c.data.batch_size, c.data.max_length = 2048, 2048  # ~280 GiB of attention temporaries per chip
    r = aot_compile.compile_for_topology(c, "v5e:2x2")
    assert r["fits"] is False and "memory" not in r
    assert r["compiler_oom"]["used_bytes"] > r["compiler_oom"]["limit_bytes"] > 15 * 2**30
    assert "DOES NOT FIT: the TPU compiler ran out of HBM" in aot_compile.format_report(r)


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("remat", ["offload_proj_out", "offload_layer_input"])
def test_offload_policy_puts_saved_activations_in_host_memory(remat):
    """remat "offload_proj_out" keeps what "save_proj_out" keeps in host memory, "offload_layer_input" what "full"
    keeps (each block's input): the TPU compiler gives those buffers the host memory space (S(5) in the compiled
    HLO's shapes; the step of the tiny smoke model under save_proj_out or full has none, the latter checked here).
    At the 1B shape offload_proj_out took the step's temporaries from 7.58 to 2.07 GiB per chip
    (docs/notes/benchmarks-log.md); the tiny model is too small for its temporaries to shrink."""
    c = smoke_config("auto")
    c.adapter.method, c.train.num_samples = "lora", 1
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    c.model.remat = remat
    hlo = aot_compile.compile_for_topology(c, "v6e-1", hlo=True)["hlo"]
    assert "S(5)" in hlo
    if remat == "offload_layer_input":  # the policy it offloads from keeps nothing in host memory
        c.model.remat = "full"
        assert "S(5)" not in aot_compile.compile_for_topology(c, "v6e-1", hlo=True)["hlo"]


@needs_libtpu
@pytest.mark.slow
def test_offload_keep_fraction_moves_only_the_rest():
    """model.offload_keep_fraction under offload_layer_input: the first quarter of each block input's positions stays
    in device memory, so the host-memory (S(5)) copy of the stacked inputs is [layers, batch, 3/4 of T, d]
    instead of [layers, batch, T, d]."""
    c = smoke_config("auto")
    c.adapter.method, c.train.num_samples = "lora", 1
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    c.model.remat, c.model.offload_keep_fraction = "offload_layer_input", 0.25
    hlo = aot_compile.compile_for_topology(c, "v6e-1", hlo=True)["hlo"]
    host = set(re.findall(r"\w+\[([\d,]*)\]\{[^}]*S\(5\)[^}]*\}", hlo))
    moved = T - T // 4
    assert host and all(f",{moved}," in f",{dims}," for dims in host), host
    assert not any(f",{T}," in f",{dims}," for dims in host), host

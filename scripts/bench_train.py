"""Training throughput of the real train step (remix_jax.training) on a named model shape with random weights.

One JSON line per configuration: input tokens/s, sample-tokens/s (tokens x M), step time, peak device memory
and MFU under two conventions:
  - "6N": 6 x non-embedding parameters per input token (x M samples), the usual full-finetuning count;
  - "frozen": forward 2N + activation gradients 2N for the frozen base, 6 per adapter parameter, plus
    attention (4 x layers x T x H x hd per token forward, twice that backward), per sample-token.
Both are divided by the number of devices times one device's measured bf16 matmul ceiling (--peak_tflops,
measured on the same GPU at start-up unless given).

    python scripts/bench_train.py --shape=llama3.2-1b --batch=8 --seq=1024 \
        --runs="lora:r=16 remix:n=8,k=2,r=8,M=4" --peer=peft

--runs is a space-separated list of METHOD[:key=value,...] with keys r, n, k, M, c (train.sample_chunk: routing
samples processed at once, 0 = all M), alpha, targets (ffn|all).
--set=KEY=VALUE,... overrides any config field (e.g. train.loss_chunk_tokens=8192,model.scan_unroll=2).
Compiler flags come from the environment (XLA_FLAGS=...); each row records them as "xla_flags".
--profile=N traces N more steps of each configuration and prints where the device time goes (a "profile"
JSON line and a table on stderr; scripts/profile_ops.py).
--startup measures only what comes before the first step, on any backend (the CPU included): "init_s" (the random
base weights and the adapters), "trace_s" and "lower_s" of the train step, and "compile_s" (XLA's part; left out
with --startup_compile=false), one JSON line per configuration and no device memory figures.
--peer=peft|mixlora|peft,mixlora runs scripts/bench_peers.py on the same shape in the same invocation, first (a
subprocess per peer, before this process takes the device, so each gets the whole device).

Memory: "peak_gib" is the device's peak over the whole process (what the peers report: torch's
max_memory_allocated), "step_gib" the compiled step's own memory (arguments + outputs - aliased + temporaries, XLA's
count), "compile_peak_gib" the peak once the step is compiled (from the state's layout, before the state is
placed, as the trainer does) and "init_peak_gib" once the state is placed, both before the first step. The random
weights are drawn on the host and then placed on the device (--init=host, the default), as a checkpoint's are
loaded; drawn on the device (--init=device) the initialiser's temporaries (gigabytes at the 1B shape) are held
before the first step; on an H100 at the 1B shape they stayed below the step's own memory. With host-drawn
weights the process peak equalled step_gib in every configuration measured except `offload_layer_input`, whose
peak (3.89 GiB on an H200) is above XLA's count of its step (3.38 GiB): it was reached while the step compiled, by
the GPU compiler's autotuning of the matrix products with the weights already placed (docs/performance.md), which
is why the step is now compiled before the state is placed; so compiled, the process peak equals step_gib in every
mode measured (H100, docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np


def parse_run(spec: str) -> dict:
    method, _, rest = spec.partition(":")
    run = {"method": method, "r": 16 if method in ("lora", "rslora", "dora") else 8, "n": 8, "k": 2, "M": 1,
           "alpha": 32.0 if method in ("lora", "rslora", "dora") else 16.0, "targets": "ffn"}
    for kv in filter(None, rest.split(",")):
        k, v = kv.split("=")
        run[k] = v if k == "targets" else (float(v) if k == "alpha" else int(v))
    if method == "remix" and run["M"] < 2:
        run["M"] = 4
    return run


def measure_matmul_tflops() -> float:
    n = 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    t = time.perf_counter()
    for _ in range(10):
        c = f(a, b)
    c.block_until_ready()
    return 2 * n**3 * 10 / (time.perf_counter() - t) / 1e12


def build_config(a, run: dict):
    from remix_jax.run_config import default_config

    c = default_config()
    c.model.path = f"random:{a.shape}"
    c.model.dtype = c.model.param_dtype = a.dtype
    c.model.remat = a.remat
    c.model.attention_impl = a.attention
    c.adapter.method = run["method"]
    c.adapter.rank = run["r"]
    c.adapter.alpha = run["alpha"]
    if run["method"] not in ("lora", "rslora", "dora"):
        c.adapter.num_experts, c.adapter.top_k = run["n"], run["k"]
    if run["targets"] == "all":
        c.adapter.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    c.train.num_samples = run["M"]
    c.train.sample_chunk = run.get("c", 0)
    c.train.num_steps = 1000
    c.data.synthetic = True
    c.data.batch_size = a.batch
    c.data.max_length = a.seq
    for item in filter(None, a.set.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set: {item!r} is not KEY=VALUE")
        apply_override(c, key.strip(), value.strip())
    return c


def apply_override(c, key: str, value: str) -> None:
    """c.<key> = value, parsed to the field's current type (bool/int/float/str); unknown keys are an error."""
    node, *path = key.split(".")
    parent = c
    for part in [node, *path][:-1]:
        if part not in parent:
            raise SystemExit(f"--set: unknown config key {key!r}")
        parent = parent[part]
    leaf = key.split(".")[-1]
    if leaf not in parent:
        raise SystemExit(f"--set: unknown config key {key!r}")
    old = parent[leaf]
    if isinstance(old, bool):
        parent[leaf] = value.lower() in ("1", "true", "yes")
    elif isinstance(old, (int, float)) and not isinstance(old, bool):
        parent[leaf] = type(old)(float(value)) if isinstance(old, float) else int(value)
    else:
        parent[leaf] = value


def flops_per_token(model_cfg, adapter_params: int, seq: int) -> tuple[float, float]:
    """(6N count, frozen-base count) per sample-token."""
    n = model_cfg.num_params(include_embeddings=False)
    attn = 4 * model_cfg.num_layers * seq * model_cfg.num_heads * model_cfg.head_dim / 2  # causal: half
    frozen = 4 * n + 6 * adapter_params + 3 * attn
    # The LM head (d x vocab) is frozen too and runs forward + input-gradient.
    frozen += 4 * model_cfg.hidden_size * model_cfg.vocab_size
    return 6 * n, frozen


def prepare(a, run: dict):
    """The model bundle (timed: "init_s"), the optimizer, mesh, state layout and shardings, the
    abstract batch and the train step function of one configuration."""
    from remix_jax.parallel import mesh as mesh_lib
    from remix_jax.training import loop
    from remix_jax.training import optimizer as opt_lib
    from remix_jax.training.train_state import abstract_batch, state_layout
    from remix_jax.training.train_step import make_train_step

    config = build_config(a, run)
    t0 = time.perf_counter()  # the random base weights and the adapters' initialisation (compile included)
    with jax.default_device(jax.devices("cpu")[0]) if a.init == "host" else contextlib.nullcontext():
        bundle = loop.build_model_bundle(config)
    init_s = time.perf_counter() - t0
    tx, schedules = opt_lib.make_optimizer(loop.optimizer_config(config))
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    layout, state_sh = state_layout(bundle, tx, mesh)
    bsh = mesh_lib.batch_sharding(mesh)
    abstract = abstract_batch(bsh, a.batch, a.seq)
    step = make_train_step(bundle.model.apply, tx, loop.objective_config(config), schedules)
    return types.SimpleNamespace(bundle=bundle, init_s=init_s, tx=tx, mesh=mesh, layout=layout,
                                 state_sh=state_sh, bsh=bsh, abstract=abstract, step=step)


def run_startup(a, run: dict) -> dict:
    """Seconds before the first step: initialisation, then the train step's tracing, lowering and compilation."""
    from remix_jax.training.train_step import trace_train_step

    p = prepare(a, run)
    t0 = time.perf_counter()
    traced = trace_train_step(p.step, p.layout, p.state_sh, p.bsh, p.abstract, jax.random.key(0))
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    row = {"impl": "remix_jax", "startup": True, "method": run["method"], "rank": run["r"],
           "num_samples": run["M"], "shape": a.shape, "batch": a.batch, "seq": a.seq, "remat": a.remat,
           "set": a.set, "backend": jax.default_backend(), "init_s": round(p.init_s, 2),
           "trace_s": round(t1 - t0, 2), "lower_s": round(t2 - t1, 2), "jaxpr_eqns": len(traced.jaxpr.eqns),
           "jax": jax.__version__}
    if a.startup_compile:
        lowered.compile()
        row["compile_s"] = round(time.perf_counter() - t2, 2)
    return row


def run_ours(a, run: dict, peak_tflops: float) -> dict:
    from remix_jax.training.train_state import shard_state
    from remix_jax.training.train_step import compile_train_step, compiled_memory

    p = prepare(a, run)
    bundle, tx, mesh, layout, state_sh, bsh, abstract, step = (
        p.bundle, p.tx, p.mesh, p.layout, p.state_sh, p.bsh, p.abstract, p.step)
    key = jax.random.key(0)
    t0 = time.perf_counter()  # compiled from the layout before the state is placed, as the trainer does
    compiled = compile_train_step(step, layout, state_sh, bsh, abstract, key, log=None)
    compile_s = time.perf_counter() - t0
    compile_peak = (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0)
    state, _ = shard_state(bundle, tx, mesh, copy_base=False, shardings=state_sh)
    jax.block_until_ready(state)
    init_peak = (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0)
    rng = np.random.default_rng(0)
    toks = rng.integers(0, bundle.model_cfg.vocab_size, (a.batch, a.seq), dtype=np.int32)
    batch = {"tokens": toks, "loss_mask": np.ones((a.batch, a.seq), np.float32),
             "segment_ids": np.ones((a.batch, a.seq), np.int32),
             "positions": np.broadcast_to(np.arange(a.seq, dtype=np.int32), (a.batch, a.seq)).copy()}
    batch = jax.device_put(batch, bsh)
    for _ in range(a.warmup):
        state, m = compiled(state, batch, key)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        state, m = compiled(state, batch, key)
    jax.block_until_ready(state)
    dt = (time.perf_counter() - t0) / a.steps
    profile = None
    if a.profile:
        from profile_ops import format_report, profile_calls

        box = {"state": state}

        def one_step():
            box["state"], _ = compiled(box["state"], batch, key)
            jax.block_until_ready(box["state"])

        profile = profile_calls(one_step, compiled.as_text(), calls=a.profile, top=40)
        print(f"--- profile {run} {a.shape}\n{format_report(profile)}", file=sys.stderr, flush=True)
    adapter_params = sum(x.size for x in jax.tree.leaves(bundle.trainable))
    f6, ffrozen = flops_per_token(bundle.model_cfg, adapter_params, a.seq)
    tokens = a.batch * a.seq
    sample_tokens = tokens * run["M"]
    stats = jax.local_devices()[0].memory_stats() or {}
    out = {
        "impl": "remix_jax", "method": run["method"], "shape": a.shape, "batch": a.batch, "seq": a.seq,
        "rank": run["r"], "targets": run["targets"],
        "num_experts": run["n"] if run["method"] not in ("lora", "rslora", "dora") else 1,
        "top_k": run["k"] if run["method"] not in ("lora", "rslora", "dora") else 1, "num_samples": run["M"],
        "sample_chunk": run.get("c", 0),
        "step_ms": round(dt * 1e3, 2), "tokens_per_s": round(tokens / dt, 1),
        "sample_tokens_per_s": round(sample_tokens / dt, 1),
        "peak_gib": round(stats.get("peak_bytes_in_use", 0) / 2**30, 2),
        "step_gib": round((compiled_memory(compiled) or {"total": 0})["total"] / 2**30, 2),
        "init_peak_gib": round(init_peak / 2**30, 2), "compile_peak_gib": round(compile_peak / 2**30, 2),
        "init": a.init,
        "trainable_params": int(adapter_params), "compile_s": round(compile_s, 1),
        "init_s": round(p.init_s, 1),
        "loss": float(m["loss"]),
        # per device: the step's FLOPs over (devices x the one-device ceiling)
        "mfu_6n": round(f6 * sample_tokens / dt / 1e12 / peak_tflops / jax.device_count(), 4),
        "mfu_frozen": round(ffrozen * sample_tokens / dt / 1e12 / peak_tflops / jax.device_count(), 4),
        "num_devices": jax.device_count(),
        "peak_tflops": round(peak_tflops, 1), "attention": a.attention, "remat": a.remat,
        "jax": jax.__version__, "device": jax.devices()[0].device_kind, "overrides": a.set,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # compiler flags change speed and memory: keep them with the row
    }
    if profile is not None:
        out["profile"] = profile
    return out


def run_peer(a, peer: str) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    # "unsloth_offload": Unsloth with its offloaded gradient checkpointing (its memory-lean mode).
    name, extra = ("unsloth", ["--unsloth_gc=unsloth"]) if peer == "unsloth_offload" else (peer, [])
    cmd = [sys.executable, os.path.join(here, "bench_peers.py"), f"--peer={name}", f"--shape={a.shape}",
           f"--batch={a.batch}", f"--seq={a.seq}", *extra]
    cmd += ["--rank=16"] if name in ("peft", "unsloth") else ["--rank=8", "--num_experts=8", "--top_k=2"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"impl": peer, "shape": a.shape, "error": p.stderr[-800:]}
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="tiny")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--runs", default="lora:r=16 remix:n=8,k=2,r=8,M=4")
    ap.add_argument("--peer", default="")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--remat", default="save_proj_out")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--peak_tflops", type=float, default=0.0)
    ap.add_argument("--set", default="", help="comma list of config overrides KEY=VALUE")
    ap.add_argument("--init", choices=("host", "device"), default="host",
                    help="where the random weights are drawn before being placed on the device (module docstring)")
    ap.add_argument("--profile", type=int, default=0, help="trace this many extra steps per configuration")
    ap.add_argument("--startup", action="store_true", help="time only what comes before the first step")
    ap.add_argument("--startup_compile", default="true", choices=("true", "false"),
                    help="with --startup: also compile the step")
    ap.add_argument("--isolate", action="store_true",
                    help="run each of our configurations in its own subprocess (clean peak memory)")
    a = ap.parse_args()
    # The peers run first, each in its own process, before this process initialises JAX's backend: once it
    # has, XLA holds most of the GPU's memory (preallocation) and a peer started after it would run out.
    # (--isolate's children get no --peer.)
    for peer in filter(None, a.peer.split(",")):
        print(json.dumps(run_peer(a, peer)), flush=True)
    if a.isolate and len(a.runs.split()) > 1:
        for spec in a.runs.split():
            argv = [x for x in sys.argv[1:] if not x.startswith(("--runs", "--peer", "--isolate"))]
            subprocess.run([sys.executable, __file__, *argv, f"--runs={spec}", "--isolate"])
        return
    a.startup_compile = a.startup_compile == "true"
    if a.startup:
        for spec in a.runs.split():
            print(json.dumps(run_startup(a, parse_run(spec))), flush=True)
        return
    peak = a.peak_tflops or (measure_matmul_tflops() if jax.default_backend() == "gpu" else 1.0)
    for spec in a.runs.split():
        try:
            print(json.dumps(run_ours(a, parse_run(spec), peak)), flush=True)
        except Exception as e:  # one line per configuration, even on failure (e.g. out of memory)
            print(json.dumps({"impl": "remix_jax", "run": spec, "shape": a.shape,
                              "error": repr(e)[:800]}), flush=True)


if __name__ == "__main__":
    main()

"""The real train step compiled ahead of time for a TPU pod slice, on any host, and its per-chip HBM: what
``python -m remix_jax.compile`` reports.

The TPU compiler of ``libtpu`` runs on the host's CPU for the devices of a topology (``parallel.topology``), as
MaxText's ``train_compile.py`` does. The step is the one ``python -m remix_jax.main`` runs
(``training.train_step.make_train_step`` / ``compile_train_step`` with the config's mesh, optimizer, objective and
batch), built from abstract parameters: ``jax.eval_shape`` of the initialisation, so no weight is materialised;
for a checkpoint path only its config is read. ``model.dtype`` / ``param_dtype`` "auto" become bfloat16 and
``attention_impl`` "auto" the splash kernel, as on a TPU.

``compile_for_topology`` returns the report (a dict): the parameters' and optimizer state's shardings, the per-chip
HBM of the compiled step (arguments, outputs, temporaries, aliased = donated state reused as output, total =
arguments + outputs - aliased + temporaries), the chip's HBM capacity (``parallel.topology.TPU_GENERATIONS``) and
whether the step fits, or the TPU compiler's own out-of-HBM numbers; ``format_report`` is its printed form.
With ``num_slices`` N > 1 the slices are joined by the data-center network: data parallelism across slices, fsdp
and tensor inside each (``parallel.mesh.make_multislice_mesh``); ``config.mesh`` then describes the whole job (data
is a multiple of N).

jax is imported when a function runs, not with this module: the program chooses jax's platform first (the compile
command sets JAX_PLATFORMS=cpu; the TPU devices come from the topology).
"""

from __future__ import annotations

import copy
import math
import re
import time

from remix_jax.parallel.topology import parse_topology, topology_devices

GIB = 2 ** 30


# ------------------------------------------------------------------------------------------ abstract state


def read_model_config(model_section):
    """The ModelConfig of ``model.path`` (random:SHAPE, a Hugging Face directory or a .gguf file) without its
    weights, with the section's dtype / remat / attention / unroll settings."""
    from remix_jax.models.loading import model_format
    from remix_jax.models.model_config import named_config
    from remix_jax.training.loop import model_overrides

    overrides = model_overrides(model_section)
    path = model_section.path
    if path.startswith("random:"):
        return named_config(path[len("random:"):], **overrides)
    if model_format(path) == "gguf":
        from remix_jax.models import gguf_io

        return gguf_io.gguf_config(gguf_io._open_reader(path), path, **overrides)
    import pathlib

    from remix_jax.models import hf_io

    return hf_io._read_config(pathlib.Path(path), **overrides)


def abstract_train_state(config, mesh):
    """(step function, abstract TrainState, its shardings, abstract batch, batch sharding, abstract rng, model
    config) of ``config``'s run on ``mesh``, every array a ShapeDtypeStruct (nothing is allocated)."""
    import jax

    from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
    from remix_jax.models import llama
    from remix_jax.parallel import mesh as mesh_lib
    from remix_jax.training import loop
    from remix_jax.training import optimizer as opt_lib
    from remix_jax.training.train_state import abstract_batch, state_layout
    from remix_jax.training.train_step import make_train_step

    model_cfg = read_model_config(config.model)
    adapter_cfg = AdapterConfig.from_dict(dict(config.adapter))
    model = build_model(model_cfg, adapter_cfg)
    key = jax.random.key(0)
    base = jax.eval_shape(lambda: llama.init_params(llama.Decoder(model_cfg), key))["params"]
    trainable = jax.eval_shape(lambda: init_adapter_variables(model, key))
    trainable = {k: trainable.get(k, {}) for k in loop.TRAINABLE}
    bundle = loop.ModelBundle(model, model_cfg, adapter_cfg, base, trainable, llama.logical_axes(model))
    tx, schedules = opt_lib.make_optimizer(loop.optimizer_config(config))
    state, shardings = state_layout(bundle, tx, mesh)
    rep = mesh_lib.replicated(mesh)
    bsh = mesh_lib.batch_sharding(mesh)
    batch = abstract_batch(bsh, config.data.batch_size, config.data.max_length)
    step = make_train_step(model.apply, tx, loop.objective_config(config), schedules,
                           grad_accum_steps=config.train.grad_accum_steps)
    rng = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: key).dtype, sharding=rep)
    return step, state, shardings, batch, bsh, rng, model_cfg


# ------------------------------------------------------------------------------------------ compile


def prepare_config(config):
    """A copy of ``config`` for a TPU: without its eval section, model dtypes "auto" -> bfloat16."""
    from remix_jax.run_config import split_config

    config, _ = split_config(copy.deepcopy(config))
    with config.unlocked():
        for k in ("dtype", "param_dtype"):
            if config.model[k] == "auto":
                config.model[k] = "bfloat16"
    return config


def compile_for_topology(config, topology: str, num_slices: int = 1, hlo: bool = False) -> dict:
    """Compile ``config``'s train step for ``num_slices`` slices of ``topology``; returns the report (a dict:
    topology, mesh, model, batch, memory in bytes per chip, capacity, fits, compile_s, shardings; "hlo" the
    compiled HLO text when asked). Raises ConfigError for a config that does not validate on that many chips."""
    from remix_jax.parallel import mesh as mesh_lib
    from remix_jax.run_config import validate_config
    from remix_jax.training.train_step import compile_train_step, compiled_memory

    target = parse_topology(topology)
    if num_slices < 1:
        raise ValueError(f"--num_slices={num_slices}: must be >= 1")
    config = prepare_config(config)
    devices = topology_devices(target, num_slices)
    check = copy.deepcopy(config)
    with check.unlocked():
        check.data.synthetic = True  # no data is read: only its shapes matter
    validate_config(check, num_devices=len(devices))
    mesh = mesh_lib.make_mesh(dict(config.mesh), devices)
    step, state, shardings, batch, bsh, rng, model_cfg = abstract_train_state(config, mesh)
    report = {"topology": topology, "num_slices": num_slices, "libtpu_topology": target.topology_name,
              "device_kind": devices[0].device_kind, "chips": len(devices), "mesh": dict(mesh.shape),
              "model": config.model.path, "method": config.adapter.method, "dtype": model_cfg.dtype,
              "param_dtype": model_cfg.param_dtype, "remat": model_cfg.remat,
              "attention": _attention_impl(model_cfg, config.data.max_length, mesh),
              "num_samples": int(config.train.num_samples), "sample_chunk": int(config.train.sample_chunk),
              "batch_size": int(config.data.batch_size), "max_length": int(config.data.max_length),
              "grad_accum_steps": int(config.train.grad_accum_steps),
              "hbm_capacity_bytes": int(target.gen.hbm_gib * GIB), "hbm_source": target.gen.source,
              "shardings": sharding_summary(state, shardings)}
    t0 = time.perf_counter()
    try:
        compiled = compile_train_step(step, state, shardings, bsh, batch, rng, log=None)
    except Exception as e:
        oom = out_of_memory(str(e))
        if oom is None:
            raise
        report.update(compile_s=time.perf_counter() - t0, fits=False, compiler_oom=oom)
        return report
    report["compile_s"] = time.perf_counter() - t0
    mem = compiled_memory(compiled)
    report["memory"] = mem
    report["fits"] = mem["total"] <= report["hbm_capacity_bytes"]
    if hlo:
        report["hlo"] = compiled.as_text()
    return report


def _attention_impl(model_cfg, seq_len: int, mesh) -> str:
    from remix_jax.models.attention import resolve_attention_impl
    from remix_jax.parallel.logical import activation_sharding

    with activation_sharding(mesh):
        return resolve_attention_impl(model_cfg, cached=False, seq_len=seq_len)


def out_of_memory(message: str) -> dict | None:
    """{"used_bytes", "limit_bytes", "message"} from the TPU compiler's out-of-HBM error, else None; used_bytes is
    what the compiler says the step needs (libtpu 0.0.42: its temporaries), limit_bytes the HBM it offers."""
    if "RESOURCE_EXHAUSTED" not in message and "ran out of memory" not in message.lower():
        return None
    unit = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
    m = (re.search(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)", message)
         or re.search(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm", message))
    first = message.strip().splitlines()[0][:400]
    if not m:
        return {"used_bytes": None, "limit_bytes": None, "message": first}
    return {"used_bytes": int(float(m.group(1)) * unit[m.group(2)]),
            "limit_bytes": int(float(m.group(3)) * unit[m.group(4)]), "message": first}


def sharding_summary(state, shardings) -> dict[str, list[dict]]:
    """Per part of the state (base, trainable, opt_state): one row per array of the base and the trainable
    parameters (name, shape, dtype, spec, bytes per chip) and one per distinct (spec, dtype) of the optimizer state
    with the number of arrays, their global bytes and bytes per chip."""
    import jax
    import numpy as np

    out: dict[str, list[dict]] = {}
    for part in ("base", "trainable", "opt_state"):
        leaves = jax.tree_util.tree_flatten_with_path(getattr(state, part))[0]
        shs = jax.tree.leaves(getattr(shardings, part))
        rows: dict[tuple, dict] = {}
        for (path, x), sh in zip(leaves, shs, strict=True):
            item = np.dtype(x.dtype).itemsize
            per_chip = math.prod(sh.shard_shape(x.shape)) * item
            spec = str(tuple(sh.spec))
            each = part != "opt_state"
            key = (jax.tree_util.keystr(path), spec) if each else (spec, str(x.dtype))
            row = rows.setdefault(key, {"name": key[0] if each else "", "spec": spec,
                                        "dtype": str(x.dtype), "shape": list(x.shape) if each else None,
                                        "arrays": 0, "bytes": 0, "bytes_per_chip": 0})
            row["arrays"] += 1
            row["bytes"] += math.prod(x.shape) * item
            row["bytes_per_chip"] += per_chip
        out[part] = list(rows.values())
    return out


# ------------------------------------------------------------------------------------------ report


def _gib(n) -> str:
    return f"{n / GIB:8.3f} GiB"


def format_report(r: dict) -> str:
    """``compile_for_topology``'s report as ``python -m remix_jax.compile`` prints it."""
    lines = [f"== {r['topology']} x {r['num_slices']} slice(s): {r['chips']} chips ({r['device_kind']}, "
             f"{r['libtpu_topology']}), mesh {r['mesh']}",
             f"model {r['model']} ({r['dtype']} compute, {r['param_dtype']} params, remat {r['remat']}, attention "
             f"{r['attention']}), method {r['method']} M={r['num_samples']}, global batch {r['batch_size']} x "
             f"{r['max_length']} tokens, grad_accum {r['grad_accum_steps']}"]
    for part, rows in r["shardings"].items():
        total = sum(x["bytes_per_chip"] for x in rows)
        lines.append(f"-- {part}: {sum(x['arrays'] for x in rows)} arrays, {total / 2**20:.1f} MiB per chip")
        for x in rows:
            what = f"{x['name']} {x['shape']}" if x["shape"] is not None else f"{x['arrays']} arrays"
            lines.append(f"   {what:<60} {x['dtype']:<8} {x['spec']:<28} {x['bytes_per_chip'] / 2**20:9.2f} MiB/chip")
    cap = r["hbm_capacity_bytes"]
    if "memory" in r:
        m = r["memory"]
        lines.append("-- HBM per chip: " + ", ".join(f"{k} {_gib(m[k]).strip()}" for k in
                                                     ("argument", "output", "temp", "alias", "total")))
        lines.append(f"   capacity {_gib(cap).strip()} ({r['hbm_source']})")
        verdict = "fits" if r["fits"] else (f"DOES NOT FIT: needs {_gib(m['total']).strip()} per chip, "
                                            f"{_gib(m['total'] - cap).strip()} over the chip's {_gib(cap).strip()}")
    else:
        o = r["compiler_oom"]
        used = (f"{_gib(o['used_bytes']).strip()} needed, {_gib(o['limit_bytes']).strip()} usable"
                if o["used_bytes"] else "see its message")
        verdict = (f"DOES NOT FIT: the TPU compiler ran out of HBM ({used} per chip; capacity "
                   f"{_gib(cap).strip()}): {o['message']}")
    lines.append(f"-- {verdict}; compiled in {r['compile_s']:.1f} s")
    return "\n".join(lines)

"""The training loop: build everything from the config, resume, run the compiled step, log, save, export.

``train(config, workdir)`` is what ``python -m remix_jax.main`` calls. Pieces a caller may replace:
``eval_fn(step, state) -> {name: float}`` called every ``train.eval_every`` steps and at the end (or
``make_eval_fn(bundle) -> eval_fn | None``, called once the model is built and before the first step,
while ``bundle.base`` and ``bundle.trainable`` still hold the initial weights); ``bundle`` and ``loader``
overrides.

Host syncs happen only at log / checkpoint / eval steps: step metrics stay on device until then, and
non-finite losses are detected at those points. A non-finite loss or gradient norm raises
``TrainingDivergedError`` without saving, so the newest checkpoint is always the last good one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from remix_jax.config import validate_config
from remix_jax.parallel import logical as logical_lib
from remix_jax.parallel import mesh as mesh_lib
from remix_jax.training import checkpointing
from remix_jax.training import metrics as metrics_lib
from remix_jax.training import optimizer as opt_lib
from remix_jax.training.objective import ObjectiveConfig
from remix_jax.training.train_state import TrainState
from remix_jax.training.train_step import compile_train_step, make_train_step

log = logging.getLogger(__name__)

TRAINABLE = ("adapter", "router")


class TrainingDivergedError(RuntimeError):
    """A non-finite loss or gradient; the message names the step and the last good checkpoint."""


@dataclasses.dataclass
class ModelBundle:
    """What the loop needs from the model side."""

    model: nn.Module  # the adapted Decoder
    model_cfg: Any  # ModelConfig
    adapter_cfg: Any  # AdapterConfig
    base: Any  # frozen "params"
    trainable: dict  # {"adapter": ..., "router": ...}
    logical_specs: dict  # collection -> pytree of logical PartitionSpecs
    tokenizer: Any = None


def load_base_model(model_section) -> tuple[Any, Any, Any]:
    """(ModelConfig, base params, tokenizer or None) for ``model.path`` (HF dir, .gguf, or random:SHAPE)."""
    from remix_jax.models import llama
    from remix_jax.models.config import named_config

    overrides = dict(dtype=model_section.dtype, param_dtype=model_section.param_dtype,
                     remat=model_section.remat, attention_impl=model_section.attention_impl,
                     scan_unroll=int(model_section.get("scan_unroll", 1)))
    path = model_section.path
    if path.startswith("random:"):
        cfg = named_config(path[len("random:"):], **overrides)
        params = llama.init_params(llama.Decoder(cfg), jax.random.key(model_section.init_seed))["params"]
        return cfg, params, None
    from remix_jax.models.loading import load_model, load_tokenizer

    cfg, params = load_model(path, **overrides)
    return cfg, params, load_tokenizer(path)


def build_model_bundle(config) -> ModelBundle:
    """Base model + adapters as the config says (remix_jax.adapters.build_model)."""
    from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
    from remix_jax.models import llama

    model_cfg, base, tokenizer = load_base_model(config.model)
    adapter_cfg = AdapterConfig.from_dict(dict(config.adapter))
    model = build_model(model_cfg, adapter_cfg)
    variables = init_adapter_variables(model, jax.random.fold_in(jax.random.key(config.seed), 1))
    trainable = {k: variables.get(k, {}) for k in TRAINABLE}
    return ModelBundle(model, model_cfg, adapter_cfg, base, trainable, llama.logical_axes(model), tokenizer)


def build_loader(config, bundle: ModelBundle):
    """The per-process training iterator (synthetic task or the data package's loader)."""
    d = config.data
    pc, pi = jax.process_count(), jax.process_index()
    if d.get("synthetic", False):
        from remix_jax.training.synthetic import SyntheticLoader

        return SyntheticLoader(d.batch_size // pc, d.max_length, bundle.model_cfg.vocab_size, seed=d.seed,
                               process_index=pi, process_count=pc)
    from remix_jax.data import build_train_loader

    if bundle.tokenizer is None:
        raise ValueError("config.data: real data needs a tokenizer, but model.path is a random model; "
                         "set data.synthetic=True or point model.path at a checkpoint")
    return build_train_loader(d, bundle.tokenizer, process_index=pi, process_count=pc,
                              global_batch_size=d.batch_size)


def objective_config(config) -> ObjectiveConfig:
    return ObjectiveConfig(num_samples=int(config.train.num_samples), baseline=config.train.baseline,
                           credit=config.train.get("credit", "sequence"),
                           sampling_router=config.adapter.method == "remix", aux_loss_weight=1.0,
                           sample_chunk=int(config.train.get("sample_chunk", 0)),
                           loss_chunk_tokens=int(config.train.get("loss_chunk_tokens", 8192)))


def optimizer_config(config) -> opt_lib.OptimizerConfig:
    o = config.optimizer
    return opt_lib.OptimizerConfig(
        adapter_lr=o.adapter_lr, router_lr=o.router_lr, warmup_steps=o.warmup_steps,
        total_steps=config.train.num_steps, end_lr_fraction=o.end_lr_fraction, weight_decay=o.weight_decay,
        b1=o.b1, b2=o.b2, eps=o.eps, grad_clip_norm=o.grad_clip_norm)


def _placed_copy(tree, shardings):
    """A fresh on-device copy (the step donates its state; the caller's arrays must survive)."""
    return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(tree)


def shard_state(bundle: ModelBundle, tx, mesh, copy_base: bool = True) -> tuple[TrainState, Any]:
    """The initial TrainState placed on ``mesh``, and its sharding pytree.

    copy_base=False moves the base without a copy where possible (the bundle's base may then be donated
    by the first step); adapters and routers are always copied.
    """
    specs = bundle.logical_specs
    base_sh = logical_lib.tree_shardings(bundle.base, specs.get("params"), mesh)
    tr_sh = {k: logical_lib.tree_shardings(v, specs.get(k), mesh) for k, v in bundle.trainable.items()}
    base = _placed_copy(bundle.base, base_sh) if copy_base else jax.device_put(bundle.base, base_sh)
    trainable = _placed_copy(bundle.trainable, tr_sh)
    rep = mesh_lib.replicated(mesh)
    # The optimizer state follows its parameters; counters are replicated.
    opt_state = jax.jit(tx.init)(trainable)
    opt_sh = logical_lib.shardings_like_params(opt_state, tr_sh, rep)
    opt_state = jax.device_put(opt_state, opt_sh)
    state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), rep), base=base, trainable=trainable,
                       opt_state=opt_state)
    shardings = TrainState(step=rep, base=base_sh, trainable=tr_sh, opt_state=opt_sh)
    return state, shardings


def _gather_to_host(tree):
    """Numpy copies of (possibly multi-host sharded) arrays."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def global_batch(local: dict, sharding) -> dict:
    """Per-process numpy batch -> global jax arrays sharded over (data, fsdp)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def adapter_description(config, bundle: ModelBundle) -> dict:
    """JSON description written next to the exported adapters."""
    import json

    from remix_jax.models.config import config_to_json

    return {"adapter": dataclasses.asdict(bundle.adapter_cfg) if dataclasses.is_dataclass(bundle.adapter_cfg)
            else dict(bundle.adapter_cfg),
            "model_path": config.model.path, "model_config": json.loads(config_to_json(bundle.model_cfg)),
            "train": {"num_samples": config.train.num_samples, "baseline": config.train.baseline,
                      "num_steps": config.train.num_steps, "seed": config.seed}}


def train(config, workdir: str, *, eval_fn: Callable[[int, TrainState], dict] | None = None,
          make_eval_fn: Callable[[ModelBundle], Callable[[int, TrainState], dict] | None] | None = None,
          bundle: ModelBundle | None = None, loader=None, mesh=None, stop_after: int | None = None,
          log_fn: Callable[[str], None] = print, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Run (or resume) training in ``workdir``. Returns {"step", "metrics" (last logged row), "export"}.

    Resuming starts from the newest intact checkpoint (damaged ones are moved aside: see
    ``checkpointing``) and drops the metrics rows the interrupted run logged after it (``metrics``).
    stop_after: end after this many steps of this invocation (as if the process were killed), without
    the final save/export; used to test resumption. clock: the time source of the step rates (tests).
    """
    mesh_lib.maybe_initialize_distributed()
    if "eval" in config:  # the evaluation section belongs to the caller's eval_fn (remix_jax.main)
        from remix_jax.main import split_config

        config, _ = split_config(config)
    validate_config(config, num_devices=len(jax.devices()) if mesh is None else mesh.size)
    os.makedirs(workdir, exist_ok=True)
    t_cfg = config.train
    mesh = mesh or mesh_lib.make_mesh(dict(config.mesh))
    own_bundle = bundle is None  # a caller's bundle must survive the donated steps: copy its base
    bundle = bundle or build_model_bundle(config)
    loader = loader or build_loader(config, bundle)
    if make_eval_fn is not None:
        if eval_fn is not None:
            raise ValueError("train: pass eval_fn or make_eval_fn, not both")
        eval_fn = make_eval_fn(bundle)
    tx, schedules = opt_lib.make_optimizer(optimizer_config(config))
    state, state_sh = shard_state(bundle, tx, mesh, copy_base=not own_bundle)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t_cfg.max_checkpoints)
    restored = ckpt.restore_newest_intact(state, log_fn=log_fn)
    if restored is not None:
        state, data_state, meta = restored
        loader.set_state(data_state)
        for key, want in (("seed", config.seed), ("method", config.adapter.method)):
            if meta.get(key) != want:
                raise ValueError(f"{ckpt.directory}: checkpoint was written with {key}={meta.get(key)!r}, "
                                 f"the config has {key}={want!r}; use a fresh workdir")
        log_fn(f"resumed from step {int(state.step)} in {ckpt.directory}")
    start = int(jax.device_get(state.step))
    total = int(t_cfg.num_steps)

    bsh = mesh_lib.batch_sharding(mesh)
    gbs, seq = config.data.batch_size, config.data.max_length
    abstract_batch = {k: jax.ShapeDtypeStruct((gbs, seq), dt, sharding=bsh) for k, dt in
                      (("tokens", jnp.int32), ("loss_mask", jnp.float32), ("segment_ids", jnp.int32),
                       ("positions", jnp.int32))}
    step_fn = make_train_step(bundle.model.apply, tx, objective_config(config), schedules,
                              grad_accum_steps=t_cfg.grad_accum_steps)
    # Made inside jit: device_put cannot place a key array on devices of other processes.
    rng = jax.jit(lambda: jax.random.key(config.seed), out_shardings=mesh_lib.replicated(mesh))()
    compiled = compile_train_step(step_fn, state, state_sh, bsh, abstract_batch, rng, log=log_fn)

    writer = metrics_lib.MetricWriter(workdir, resume_step=start)
    if writer.dropped:
        log_fn(f"{writer.path}: dropped {writer.dropped} rows logged after step {start} by the interrupted run")
    timer = metrics_lib.StepTimer(clock)  # evaluation and checkpoint saving run paused: not step time
    progress = metrics_lib.Progress(total, start, enabled=t_cfg.progress, timer=timer)
    meta = {"seed": config.seed, "method": config.adapter.method,
            "rng_key_data": np.asarray(jax.random.key_data(jax.random.key(config.seed))).tolist()}
    pending: list[tuple[int, dict]] = []
    last_row: dict = {}
    last_saved = ckpt.latest_step()
    tokens_since, t_last = 0.0, timer.elapsed()
    step = start
    try:
        while step < total:
            if stop_after is not None and step - start >= stop_after:
                ckpt.wait()
                return {"step": step, "metrics": last_row, "export": None}
            batch = global_batch(next(loader), bsh)
            state, m = compiled(state, batch, rng)
            step += 1
            pending.append((step, m))
            is_ckpt = t_cfg.checkpoint_every and step % t_cfg.checkpoint_every == 0
            is_eval = t_cfg.eval_every and eval_fn is not None and step % t_cfg.eval_every == 0
            if step % t_cfg.log_every == 0 or is_ckpt or is_eval or step == total:
                fetched = [(s, metrics_lib.to_python(jax.device_get(mm))) for s, mm in pending]
                pending = []
                for s, row in fetched:
                    tokens_since += row["tokens"]
                    if not (math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])):
                        raise TrainingDivergedError(
                            f"non-finite training loss at step {s} (loss={row['loss']}, grad_norm="
                            f"{row['grad_norm']}); stopped without saving. The last good checkpoint is "
                            f"step {last_saved} in {ckpt.directory}"
                            if last_saved is not None else
                            f"non-finite training loss at step {s} (loss={row['loss']}, grad_norm="
                            f"{row['grad_norm']}); stopped, no checkpoint had been saved")
                now = timer.elapsed()
                dt = max(now - t_last, 1e-9)
                row = dict(fetched[-1][1])
                row["tokens_per_s"] = tokens_since / dt
                row["steps_per_s"] = len(fetched) / dt
                tokens_since, t_last = 0.0, now
                if is_eval:
                    with timer.paused():
                        row.update({f"eval/{k}": float(v) for k, v in eval_fn(step, state).items()})
                writer.write(step, row)
                last_row = {"step": step, **row}
                progress.update(step, {"loss": row["loss"], "tok/s": row["tokens_per_s"]})
                if is_ckpt:
                    with timer.paused():
                        ckpt.save(state, loader.get_state(), meta)
                    last_saved = step
        if last_saved != total:
            ckpt.save(state, loader.get_state(), meta)
        ckpt.wait()
        export = None
        if eval_fn is not None and not (t_cfg.eval_every and total % t_cfg.eval_every == 0):
            final = {f"eval/{k}": float(v) for k, v in eval_fn(total, state).items()}
            writer.write(total, final)
            last_row.update(final)
        if t_cfg.export:
            trainable = _gather_to_host(state.trainable)  # collective: every process takes part
            if jax.process_index() == 0:
                export = checkpointing.export_adapters(os.path.join(workdir, "export"), trainable,
                                                       adapter_description(config, bundle))
        return {"step": step, "metrics": last_row, "export": export, "state": state}
    finally:
        progress.close()
        writer.close()
        ckpt.close()

"""The training loop: build everything from the config, resume, run the compiled step, log, save, export.

``train(config, workdir)`` is what ``python -m remix_jax.main`` calls (through ``training.run``), in named steps:
``setup``, ``compile_step``, ``place_state``, ``resume``, ``StepLoop.run`` (the steps and their logging, evaluation
and checkpoint hooks), ``StepLoop.finish`` (last save, final evaluation, export). Pieces a caller may replace:
``eval_fn(step, state) -> {name: float}`` called every ``train.eval_every`` steps and at the end (or
``make_eval_fn(bundle) -> eval_fn | None``, called once the initial state is built and before the first step,
with ``bundle.base`` and ``bundle.trainable`` the state's initial weights, placed as the state holds them);
``bundle`` and ``loader`` overrides.

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
import numpy as np

from remix_jax import cpu_memory, rundir
from remix_jax.parallel import mesh as mesh_lib
from remix_jax.run_config import ConfigError, init_from_problems, split_config, validate_config
from remix_jax.training import checkpointing, initial_adapter
from remix_jax.training import metrics as metrics_lib
from remix_jax.training import optimizer as opt_lib
from remix_jax.training.objective import ObjectiveConfig
from remix_jax.training.train_state import TrainState, abstract_batch, shard_state, state_layout
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


def model_overrides(model_section) -> dict:
    """The ModelConfig fields the ``model`` section sets over the checkpoint's own (dtypes, remat, attention, layer
    loop); keys a recorded older config lacks take their defaults."""
    return dict(dtype=model_section.dtype, param_dtype=model_section.param_dtype, remat=model_section.remat,
                attention_impl=model_section.attention_impl, scan_unroll=int(model_section.get("scan_unroll", 1)),
                offload_keep_fraction=float(model_section.get("offload_keep_fraction", 0.0)),
                mlp_chunks=int(model_section.get("mlp_chunks", 1)))


def load_base_model(model_section) -> tuple[Any, Any, Any]:
    """(ModelConfig, base params, tokenizer or None) for ``model.path`` (HF dir, .gguf, or random:SHAPE)."""
    from remix_jax.models import llama
    from remix_jax.models.model_config import named_config

    overrides = model_overrides(model_section)
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
    t = config.train
    return ObjectiveConfig(num_samples=int(t.num_samples), baseline=t.baseline, credit=t.get("credit", "sequence"),
                           sampling_router=config.adapter.method == "remix", aux_loss_weight=1.0,
                           sample_chunk=int(t.get("sample_chunk", 0)), loss_chunk_tokens=int(t.loss_chunk_tokens),
                           loss_skip_chunks=int(t.get("loss_skip_chunks", 8)))


def optimizer_config(config) -> opt_lib.OptimizerConfig:
    o = config.optimizer
    return opt_lib.OptimizerConfig(
        adapter_lr=o.adapter_lr, router_lr=o.router_lr, warmup_steps=o.warmup_steps,
        total_steps=config.train.num_steps, end_lr_fraction=o.end_lr_fraction, weight_decay=o.weight_decay,
        b1=o.b1, b2=o.b2, eps=o.eps, grad_clip_norm=o.grad_clip_norm)


def _gather_to_host(tree):
    """Numpy copies of (possibly multi-host sharded) arrays."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def global_batch(local: dict, sharding) -> dict:
    """Per-process numpy batch -> global jax arrays sharded over (data, fsdp)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def adapter_description(config, bundle: ModelBundle, init_record: dict | None = None) -> dict:
    """JSON description written next to the exported adapters (with the fingerprint of the PEFT directory the
    adapter started from, under "init_from", when ``adapter.init_from`` was set)."""
    import json

    from remix_jax.models.model_config import config_to_json

    out = {"adapter": dataclasses.asdict(bundle.adapter_cfg) if dataclasses.is_dataclass(bundle.adapter_cfg)
           else dict(bundle.adapter_cfg),
           "model_path": config.model.path, "model_config": json.loads(config_to_json(bundle.model_cfg)),
           "train": {"num_samples": config.train.num_samples, "baseline": config.train.baseline,
                     "num_steps": config.train.num_steps, "seed": config.seed}}
    if init_record is not None:
        out[initial_adapter.KEY] = init_record
    return out


@dataclasses.dataclass
class TrainSetup:
    """Everything ``setup`` builds from the config; ``state`` is replaced by each step (the step donates it)."""

    config: Any  # the training config (without its eval section)
    mesh: Any
    bundle: ModelBundle
    loader: Any  # the per-process batch iterator (get_state / set_state for checkpoints)
    eval_fn: Callable[[int, TrainState], dict] | None
    tx: Any  # the optax optimizer
    schedules: Any  # its learning-rate schedules (logged by the step)
    state: TrainState  # its layout (ShapeDtypeStructs) until ``place_state``
    shardings: TrainState  # the sharding of every leaf of ``state``
    workdir: str
    init_record: dict | None = None  # fingerprint of adapter.init_from (read at step 0, or from the checkpoint)
    make_eval_fn: Callable | None = None  # called by ``place_state``
    copy_base: bool = True  # place a copy of the bundle's base (a caller's bundle must survive the donated steps)
    ckpt: checkpointing.Checkpointer | None = None  # made by ``place_state``


def setup(config, workdir: str, *, eval_fn=None, make_eval_fn=None, bundle: ModelBundle | None = None,
          loader=None, mesh=None, log_fn: Callable[[str], None] = print, place: bool = True) -> TrainSetup:
    """Validate the config and build the mesh, model, data, optimizer and the initial state's layout, then
    (``place_state``) the sharded initial state, the evaluation hook and the checkpointer of ``workdir`` (see
    ``train`` for the arguments); with ``place=False`` the caller calls ``place_state``. A run without a checkpoint
    starts from ``adapter.init_from`` when it is set (checked before the model loads; ``initial_adapter``)."""
    mesh_lib.maybe_initialize_distributed()
    if "eval" in config:  # the evaluation section belongs to the caller's eval_fn (training.run)
        config, _ = split_config(config)
    validate_config(config, num_devices=len(jax.devices()) if mesh is None else mesh.size)
    # A checkpoint wins over adapter.init_from: a resumed run does not read the PEFT directory.
    init_from = "" if rundir.checkpoint_steps(workdir) else config.adapter.get("init_from", "")
    if init_from and (problems := init_from_problems(config)):
        raise ConfigError.from_problems(problems)
    os.makedirs(workdir, exist_ok=True)
    mesh = mesh or mesh_lib.make_mesh(dict(config.mesh))
    own_bundle = bundle is None  # a caller's bundle must survive the donated steps: copy its base
    bundle = bundle or build_model_bundle(config)
    init_record = None
    if init_from:  # before make_eval_fn: the step-0 evaluation scores the imported adapter
        bundle, init_record = initial_adapter.initialise(bundle, init_from, log_fn)
    loader = loader or build_loader(config, bundle)
    if make_eval_fn is not None and eval_fn is not None:
        raise ValueError("train: pass eval_fn or make_eval_fn, not both")
    tx, schedules = opt_lib.make_optimizer(optimizer_config(config))
    layout, state_sh = state_layout(bundle, tx, mesh)
    s = TrainSetup(config, mesh, bundle, loader, eval_fn, tx, schedules, layout, state_sh, workdir, init_record,
                   make_eval_fn=make_eval_fn, copy_base=not own_bundle)
    if place:
        place_state(s)
    return s


def place_state(s: TrainSetup) -> None:
    """Place the initial state of ``s`` on its mesh (``s.state`` was its layout), build the evaluation hook from
    it (``make_eval_fn``: placed as the state holds them, step-0 and later evaluations share compiled programs),
    then the checkpointer."""
    s.state, _ = shard_state(s.bundle, s.tx, s.mesh, copy_base=s.copy_base, shardings=s.shardings)
    if s.make_eval_fn is not None:
        s.eval_fn = s.make_eval_fn(dataclasses.replace(s.bundle, base=s.state.base, trainable=s.state.trainable))
        s.make_eval_fn = None
    # after the evaluator: a run its evaluator refuses leaves no checkpoints folder
    s.ckpt = checkpointing.Checkpointer(os.path.join(s.workdir, "checkpoints"),
                                        max_to_keep=s.config.train.max_checkpoints)


def resume(s: TrainSetup, log_fn: Callable[[str], None] = print) -> int:
    """Restore the newest intact checkpoint into ``s`` (state and data position), if any; the step to start at.
    A checkpoint of another seed or method is refused."""
    restored = s.ckpt.restore_newest_intact(s.state, log_fn=log_fn)
    if restored is not None:
        s.state, data_state, meta = restored
        s.loader.set_state(data_state)
        for key, want in (("seed", s.config.seed), ("method", s.config.adapter.method)):
            if meta.get(key) != want:
                raise ValueError(f"{s.ckpt.directory}: checkpoint was written with {key}={meta.get(key)!r}, "
                                 f"the config has {key}={want!r}; use a fresh workdir")
        s.init_record = meta.get(initial_adapter.KEY)  # what the run started from, carried by its checkpoints
        log_fn(f"resumed from step {int(s.state.step)} in {s.ckpt.directory}")
    return int(jax.device_get(s.state.step))


def compile_step(s: TrainSetup, log_fn: Callable[[str], None] = print) -> tuple[Callable, Any, Any]:
    """(the compiled train step (state, batch, rng) -> (state, metrics), the replicated rng key, the batch
    sharding)."""
    config = s.config
    bsh = mesh_lib.batch_sharding(s.mesh)
    abstract = abstract_batch(bsh, config.data.batch_size, config.data.max_length)
    step_fn = make_train_step(s.bundle.model.apply, s.tx, objective_config(config), s.schedules,
                              grad_accum_steps=config.train.grad_accum_steps)
    # Made inside jit: device_put cannot place a key array on devices of other processes.
    rng = jax.jit(lambda: jax.random.key(config.seed), out_shardings=mesh_lib.replicated(s.mesh))()
    compiled = compile_train_step(step_fn, s.state, s.shardings, bsh, abstract, rng, log=log_fn)
    return compiled, rng, bsh


class StepLoop:
    """The step loop and its hooks. Step metrics stay on device until a log, checkpoint or evaluation step (or the
    last), where they are fetched together, checked finite, written with the step rates to metrics.jsonl, and
    then the evaluation and the checkpoint run (both outside the timed step time)."""

    def __init__(self, s: TrainSetup, workdir: str, start: int, batch_sharding, clock: Callable[[], float],
                 log_fn: Callable[[str], None]):
        self.s, self.batch_sharding = s, batch_sharding
        self.step, self.total = start, int(s.config.train.num_steps)
        self.writer = metrics_lib.MetricWriter(workdir, resume_step=start)
        if self.writer.dropped:
            log_fn(f"{self.writer.path}: dropped {self.writer.dropped} rows logged after step {start} by the "
                   "interrupted run")
        self.timer = metrics_lib.StepTimer(clock)  # evaluation and checkpoint saving run paused: not step time
        self.progress = metrics_lib.Progress(self.total, start, enabled=s.config.train.progress, timer=self.timer)
        seed = s.config.seed
        self.meta = {"seed": seed, "method": s.config.adapter.method,
                     "rng_key_data": np.asarray(jax.random.key_data(jax.random.key(seed))).tolist()}
        if s.init_record is not None:
            self.meta[initial_adapter.KEY] = s.init_record
        self.pending: list[tuple[int, dict]] = []  # (step, metrics still on device)
        self.last_row: dict = {}
        self.last_saved = s.ckpt.latest_step()
        self.tokens_since, self.t_last = 0.0, self.timer.elapsed()

    def run(self, compiled, rng, stop_after: int | None = None) -> bool:
        """Run steps up to train.num_steps (True), or stop after ``stop_after`` steps of this call (False)."""
        s, t = self.s, self.s.config.train
        start = self.step
        while self.step < self.total:
            if stop_after is not None and self.step - start >= stop_after:
                return False
            batch = global_batch(next(s.loader), self.batch_sharding)
            s.state, m = compiled(s.state, batch, rng)
            self.step += 1
            self.pending.append((self.step, m))
            is_ckpt = t.checkpoint_every and self.step % t.checkpoint_every == 0
            is_eval = t.eval_every and s.eval_fn is not None and self.step % t.eval_every == 0
            if self.step % t.log_every == 0 or is_ckpt or is_eval or self.step == self.total:
                self.log(evaluate=is_eval, save=is_ckpt)
        return True

    def fetch(self) -> list[tuple[int, dict]]:
        """The pending steps' metrics on the host; raises TrainingDivergedError at a non-finite loss."""
        fetched = [(step, metrics_lib.to_python(jax.device_get(m))) for step, m in self.pending]
        self.pending = []
        for step, row in fetched:
            self.tokens_since += row["tokens"]
            if not (math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])):
                raise TrainingDivergedError(self._diverged(step, row))
        return fetched

    def _diverged(self, step: int, row: dict) -> str:
        head = (f"non-finite training loss at step {step} (loss={row['loss']}, grad_norm={row['grad_norm']}); "
                "stopped")
        if self.last_saved is None:
            return f"{head}, no checkpoint had been saved"
        return f"{head} without saving. The last good checkpoint is step {self.last_saved} in {self.s.ckpt.directory}"

    def log(self, evaluate: bool = False, save: bool = False) -> None:
        """The logging hook: the newest step's row with the rates since the last log (and the evaluation's
        scalars, prefixed "eval/") to metrics.jsonl and the progress bar; then the checkpoint when ``save``."""
        s = self.s
        fetched = self.fetch()
        now = self.timer.elapsed()
        dt = max(now - self.t_last, 1e-9)
        row = dict(fetched[-1][1])
        row["tokens_per_s"] = self.tokens_since / dt
        row["steps_per_s"] = len(fetched) / dt
        self.tokens_since, self.t_last = 0.0, now
        if evaluate:
            with self.timer.paused():
                row.update({f"eval/{k}": float(v) for k, v in s.eval_fn(self.step, s.state).items()})
        self.writer.write(self.step, row)
        self.last_row = {"step": self.step, **row}
        self.progress.update(self.step, {"loss": row["loss"], "tok/s": row["tokens_per_s"]})
        if save:
            with self.timer.paused():
                s.ckpt.save(s.state, s.loader.get_state(), self.meta)
            self.last_saved = self.step

    def finish(self, workdir: str) -> dict:
        """The end of training: the last checkpoint, the final evaluation (unless the last step had one) and the
        export of the adapters. Returns train's summary."""
        s, t = self.s, self.s.config.train
        if self.last_saved != self.total:
            s.ckpt.save(s.state, s.loader.get_state(), self.meta)
        s.ckpt.wait()
        export = None
        if s.eval_fn is not None and not (t.eval_every and self.total % t.eval_every == 0):
            final = {f"eval/{k}": float(v) for k, v in s.eval_fn(self.total, s.state).items()}
            self.writer.write(self.total, final)
            self.last_row.update(final)
        if t.export:
            trainable = _gather_to_host(s.state.trainable)  # collective: every process takes part
            if jax.process_index() == 0:
                export = checkpointing.export_adapters(os.path.join(workdir, "export"), trainable,
                                                       adapter_description(s.config, s.bundle, s.init_record))
        return {"step": self.step, "metrics": self.last_row, "export": export, "state": s.state}

    def close(self) -> None:
        self.progress.close()
        self.writer.close()


def train(config, workdir: str, *, eval_fn: Callable[[int, TrainState], dict] | None = None,
          make_eval_fn: Callable[[ModelBundle], Callable[[int, TrainState], dict] | None] | None = None,
          after_model: Callable[[ModelBundle], None] | None = None,
          bundle: ModelBundle | None = None, loader=None, mesh=None, stop_after: int | None = None,
          log_fn: Callable[[str], None] = print, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Run (or resume) training in ``workdir``. Returns {"step", "metrics" (last logged row), "export"}.

    In order: ``setup`` (validate, build the model, data and the state's layout), ``compile_step`` (from the
    layout, before the weights are on the device: the GPU compiler's autotuning holds scratch memory while it
    compiles, and with the weights placed the two would add up to the process peak), ``place_state``, ``resume``
    (the newest intact checkpoint: damaged ones are moved aside, see ``checkpointing``, and the metrics rows the
    interrupted run logged after it are dropped, see ``metrics``), the step loop (``StepLoop.run`` with its
    logging, evaluation and checkpoint hooks) and ``StepLoop.finish`` (last save, final evaluation, export).
    after_model(bundle): a caller's records and checks of the built model (its parameter counts, the evaluation's
    tokenizer), before the step compiles; stop_after: end after this many steps (as if killed), no final
    save/export; clock: the step rates' time source.
    """
    s = setup(config, workdir, eval_fn=eval_fn, make_eval_fn=make_eval_fn, bundle=bundle, loader=loader, mesh=mesh,
              log_fn=log_fn, place=False)
    if after_model is not None:
        after_model(s.bundle)
    compiled, rng, batch_sharding = compile_step(s, log_fn)
    place_state(s)
    start = resume(s, log_fn)
    steps = StepLoop(s, workdir, start, batch_sharding, clock, log_fn)
    cpu_memory.keep_freed_memory()  # on the CPU, under REMIX_CPU_MALLOC=1 from the entry point: steps reuse buffers
    try:
        if not steps.run(compiled, rng, stop_after):
            s.ckpt.wait()
            return {"step": steps.step, "metrics": steps.last_row, "export": None}
        return steps.finish(workdir)
    finally:
        steps.close()
        s.ckpt.close()

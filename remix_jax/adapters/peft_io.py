"""PEFT adapter directories, both ways, for LoRA, rsLoRA and DoRA.

A PEFT LoRA directory holds ``adapter_config.json`` (peft's LoraConfig) and ``adapter_model.safetensors`` with,
for every adapted projection of every block (module names as in transformers, prefixed "base_model.model."):
    {module}.lora_A.weight           [r, d_in]   = our lora_a[i].T   (ours [L, d_in, r])
    {module}.lora_B.weight           [d_out, r]  = our lora_b[i].T   (ours [L, r, d_out])
    {module}.lora_magnitude_vector   [d_out]     DoRA only: m = ||W||_c + magnitude_delta[i]
peft adds scaling * lora_B(lora_A(x)) with scaling = lora_alpha / r, or lora_alpha / sqrt(r) when use_rslora;
for DoRA it computes (m / ||W + scaling B A||_row) * (x W^T + scaling x A^T B^T) (+ bias), the norm taken per
output over the inputs and not differentiated. Ours (adapters/lora.py) is the same product with m stored as its
offset from the frozen column norms, so the magnitude converts exactly given the base it was trained on.

Both ways live here, below training: ``python -m remix_jax.export --format=peft`` writes a run's adapter
(``save_peft_adapter``), and a run's ``adapter.init_from`` reads one as its adapter at step 0
(``read_peft_config`` before the model loads, ``load_peft_adapter`` once it has).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from remix_jax.adapters import layout
from remix_jax.adapters.adapter_config import ALL_PROJECTIONS, SINGLE_METHODS, AdapterConfig, AdapterConfigError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."

# LoraConfig fields that change the computation in ways this codebase does not have: each must be unset.
_UNSUPPORTED_FIELDS = {
    "rank_pattern": "per-module ranks", "alpha_pattern": "per-module alphas",
    "modules_to_save": "fully trained modules",
    "layer_replication": "replicated layers", "trainable_token_indices": "trained token embeddings",
    "target_parameters": "adapted nn.Parameters", "exclude_modules": "excluded modules", "lora_bias": "LoRA biases",
    "fan_in_fan_out": "Conv1D-style [in, out] weights", "use_qalora": "QALoRA", "use_bdlora": "BD-LoRA",
    "alora_invocation_tokens": "activated LoRA",
}


class PeftFormatError(ValueError):
    """A PEFT adapter directory that cannot be read into (or written from) a run; names the file and field."""


def uses_rslora(cfg: AdapterConfig) -> bool:
    """Whether ``cfg``'s LoRA scale is alpha/sqrt(r) (peft's use_rslora) rather than alpha/r."""
    rs = cfg.method == "rslora" or (cfg.method == "dora" and cfg.omega == "rslora")
    want = cfg.alpha / math.sqrt(cfg.rank) if rs else cfg.alpha / cfg.rank
    if not math.isclose(want, cfg.lora_scale(), rel_tol=1e-12):
        raise PeftFormatError(f"adapter method {cfg.method!r}: scale {cfg.lora_scale()} is neither alpha/r nor "
                              f"alpha/sqrt(r); no PEFT LoraConfig expresses it")
    return rs


def _check_single(cfg: AdapterConfig) -> None:
    if cfg.method not in SINGLE_METHODS:
        raise PeftFormatError(f"adapter method {cfg.method!r} is a mixture: the PEFT LoRA format holds one adapter "
                              f"per projection ({', '.join(SINGLE_METHODS)}); export mixtures with "
                              "--format=hf-mixture")


def peft_config(cfg: AdapterConfig, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """peft's LoraConfig (as written to adapter_config.json) equivalent to ``cfg``."""
    _check_single(cfg)
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": cfg.rank, "lora_alpha": cfg.alpha, "use_rslora": uses_rslora(cfg), "use_dora": cfg.method == "dora",
        "target_modules": list(cfg.targets), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }


def column_norms(kernels: np.ndarray) -> np.ndarray:
    """||W||_c of stacked kernels [L, d_in, d_out] -> [L, d_out] float32, as the DoRA layer computes them."""
    import jax
    import jax.numpy as jnp

    from remix_jax.adapters.lora import column_norms as norms

    return np.asarray(jax.jit(jax.vmap(norms))(jnp.asarray(kernels)))


def peft_tensors(adapter: Mapping[str, Any], cfg: AdapterConfig, num_layers: int,
                 base: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The tensors of adapter_model.safetensors (float32) from our "adapter" tree.

    base: the frozen params the adapter was trained on (needed for DoRA's magnitude, ||W||_c + magnitude_delta).
    """
    _check_single(cfg)
    out = {}
    for name in cfg.targets:
        node = layout.site(adapter, name)
        a, b = np.asarray(node["lora_a"], np.float32), np.asarray(node["lora_b"], np.float32)
        mag = None
        if cfg.method == "dora":
            if base is None:
                raise PeftFormatError("DoRA export needs the base model: its magnitude is ||W||_c + magnitude_delta")
            mag = column_norms(layout.base_kernel(base, name)) + np.asarray(node["magnitude_delta"], np.float32)
        for i in range(num_layers):
            key = PREFIX + layout.hf_module(i, name)
            out[f"{key}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
            out[f"{key}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
            if mag is not None:
                out[f"{key}.lora_magnitude_vector"] = np.ascontiguousarray(mag[i])
    return out


def save_peft_adapter(out_dir: str | os.PathLike, adapter: Mapping[str, Any], cfg: AdapterConfig, num_layers: int,
                      base: Mapping[str, Any] | None = None,
                      base_model_name_or_path: str | None = None) -> pathlib.Path:
    """Write adapter_config.json + adapter_model.safetensors that ``peft.PeftModel.from_pretrained`` loads onto
    the base exported by ``remix_jax.models.hf_io.save_hf_checkpoint``."""
    from safetensors.numpy import save_file

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = peft_config(cfg, base_model_name_or_path)
    save_file(peft_tensors(adapter, cfg, num_layers, base), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------------------ import

def _targets_of(value: Any, num_layers: int, where: str) -> tuple[str, ...]:
    """Our projection names matched by peft's target_modules, as peft matches them: a list of module names or
    name suffixes ("q_proj", "model.layers.0.self_attn.q_proj"), "all-linear", or a regex matched against the full
    module name. Every block must be adapted alike."""
    if value == "all-linear":
        return ALL_PROJECTIONS
    modules = {name: [layout.hf_module(i, name) for i in range(num_layers)] for name in ALL_PROJECTIONS}
    if isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
        def hit(module, t):
            return module == t or module.endswith("." + t)

        unknown = [t for t in value if not any(hit(m, t) for ms in modules.values() for m in ms)]
        if unknown:
            raise PeftFormatError(f"{where}: field 'target_modules' names {unknown}, which match no adaptable "
                                  f"projection here (known: {', '.join(ALL_PROJECTIONS)})")
        matches = lambda module: any(hit(module, t) for t in value)  # noqa: E731
    elif isinstance(value, str):
        try:
            pattern = re.compile(value)
        except re.error as e:
            raise PeftFormatError(f"{where}: field 'target_modules' is not a valid regex ({e})") from e
        matches = lambda module: pattern.fullmatch(module) is not None  # noqa: E731
    else:
        raise PeftFormatError(f"{where}: field 'target_modules' must be a list of module names or a regex; "
                              f"got {value!r}")
    names = []
    for name, ms in modules.items():
        hits = {matches(m) for m in ms}
        if len(hits) > 1:
            raise PeftFormatError(f"{where}: field 'target_modules' adapts {name} in some blocks only; every block "
                                  "must be adapted alike")
        if hits == {True}:
            names.append(name)
    return tuple(names)


def check_peft_config(raw: Mapping[str, Any], cfg: AdapterConfig, num_layers: int, where: str) -> None:
    """Raise PeftFormatError naming ``where`` and the field unless ``raw`` (adapter_config.json) is a LoRA
    adapter computing exactly what ``cfg`` computes."""
    def bad(field, msg):
        raise PeftFormatError(f"{where}: field {field!r} {msg}")

    peft_type = raw.get("peft_type")
    if peft_type != "LORA":
        bad("peft_type", f"is {peft_type!r}; only 'LORA' adapters (LoRA, rsLoRA, DoRA) can be imported")
    if cfg.method not in SINGLE_METHODS:
        bad("peft_type", f"'LORA' is one adapter per projection, but the run's adapter.method is {cfg.method!r}; "
                         f"a PEFT adapter can initialise {', '.join(SINGLE_METHODS)}")
    for field, what in _UNSUPPORTED_FIELDS.items():
        if raw.get(field):
            bad(field, f"is set ({raw[field]!r}): {what} are not supported")
    if raw.get("bias", "none") != "none":
        bad("bias", f"is {raw['bias']!r}: trained biases are not supported (expected 'none')")
    layers = raw.get("layers_to_transform")
    if layers is not None and sorted([layers] if isinstance(layers, int) else layers) != list(range(num_layers)):
        bad("layers_to_transform", f"is {layers!r}: every one of the {num_layers} blocks must be adapted")
    if raw.get("r") != cfg.rank:
        bad("r", f"is {raw.get('r')!r}, the run's adapter.rank is {cfg.rank}")
    alpha = raw.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or not math.isclose(float(alpha), float(cfg.alpha), rel_tol=1e-9):
        bad("lora_alpha", f"is {alpha!r}, the run's adapter.alpha is {cfg.alpha}")
    if bool(raw.get("use_dora", False)) != (cfg.method == "dora"):
        bad("use_dora", f"is {raw.get('use_dora')!r}, the run's adapter.method is {cfg.method!r}")
    if bool(raw.get("use_rslora", False)) != uses_rslora(cfg):
        bad("use_rslora", f"is {raw.get('use_rslora')!r}, but the run's adapter (method {cfg.method!r}, omega "
                          f"{cfg.omega!r}) scales by {'alpha/sqrt(r)' if uses_rslora(cfg) else 'alpha/r'}")
    targets = _targets_of(raw.get("target_modules"), num_layers, where)
    if set(targets) != set(cfg.targets):
        bad("target_modules", f"adapts {list(targets)}, the run's adapter.targets are {list(cfg.targets)}")


def _read_config(path: pathlib.Path) -> dict[str, Any]:
    cfg_file = path / CONFIG_FILE
    if not path.is_dir():
        raise PeftFormatError(f"{path}: not a PEFT adapter directory")
    if not cfg_file.exists():
        raise PeftFormatError(f"{cfg_file}: missing (a PEFT adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise PeftFormatError(f"{cfg_file}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise PeftFormatError(f"{cfg_file}: expected a JSON object")
    return raw


def _weights_file(path: pathlib.Path) -> pathlib.Path:
    file = path / WEIGHTS_FILE
    if not file.is_file():
        other = " (adapter_model.bin, a pickle, is not read: save with safe_serialization=True)" if (
            path / "adapter_model.bin").exists() else ""
        raise PeftFormatError(f"{file}: missing{other}")
    return file


def read_peft_config(path: str | os.PathLike, cfg: AdapterConfig, num_layers: int) -> dict[str, Any]:
    """adapter_config.json of the PEFT LoRA directory ``path``, checked against the run's adapter config ``cfg``
    (``check_peft_config``: PeftFormatError naming the file and the field); adapter_model.safetensors must exist
    but is not read. Needs no model weights: a run checks its ``adapter.init_from`` with it before loading them."""
    path = pathlib.Path(path)
    raw = _read_config(path)
    check_peft_config(raw, cfg, num_layers, str(path / CONFIG_FILE))
    _weights_file(path)
    return raw


def init_from_problems(adapter: Mapping[str, Any], model_path: str) -> list[str]:
    """What stops ``adapter["init_from"]`` from initialising a run's adapter (config key ``adapter.init_from``),
    found without the model's weights: the folder, its adapter_config.json against the run's adapter config
    ``adapter`` (a mapping of AdapterConfig's fields) and the number of blocks of ``model_path`` (an HF directory
    or GGUF file read for its config, or random:SHAPE). [] when it fits (or the adapter config itself is invalid:
    that is reported with its own key)."""
    from remix_jax.models.loading import load_model_config
    from remix_jax.models.model_config import ModelLoadError, named_config

    path = str(adapter.get("init_from", ""))
    try:
        cfg = AdapterConfig.from_dict(adapter)
    except AdapterConfigError:
        return []
    if not path:
        return []
    if not os.path.isdir(path):
        return [f"adapter.init_from: {path!r} is not a folder (a PEFT adapter directory: {CONFIG_FILE}, "
                f"{WEIGHTS_FILE})"]
    try:
        model = (named_config(model_path[len("random:"):]) if model_path.startswith("random:")
                 else load_model_config(model_path))
    except ModelLoadError as e:
        return [f"model.path: {e}"]
    try:
        read_peft_config(path, cfg, model.num_layers)
    except PeftFormatError as e:
        return [f"adapter.init_from: {e}"]
    return []


def _read_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    file = _weights_file(path)
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so that bfloat16 adapters read)
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a damaged file
        raise PeftFormatError(f"{file}: cannot read ({e}); the file may be truncated") from e


def load_peft_adapter(path: str | os.PathLike, cfg: AdapterConfig, num_layers: int,
                      base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The trainable tree {"adapter": ..., "router": {}} of a run with adapter config ``cfg`` whose initial
    adapter is the PEFT LoRA directory ``path``: the config is validated field by field against ``cfg``
    (PeftFormatError naming adapter_config.json and the field), every tensor must be present with its shape
    (PeftFormatError naming adapter_model.safetensors and the tensor). base: the frozen params of the run
    (DoRA only: magnitude_delta = m - ||W||_c). Arrays are float32 numpy, stacked [L, ...]."""
    path = pathlib.Path(path)
    read_peft_config(path, cfg, num_layers)
    tensors = _read_tensors(path)
    where = str(path / WEIGHTS_FILE)
    if cfg.method == "dora" and base is None:
        raise PeftFormatError(f"{where}: a DoRA adapter needs the run's base model to convert its magnitude")
    adapter: dict = {}
    expected = set()
    for name in cfg.targets:
        kernel = None if base is None else layout.base_kernel(base, name)
        d_in, d_out = (None, None) if kernel is None else kernel.shape[1:]
        parts: dict[str, list[np.ndarray]] = {"lora_a": [], "lora_b": [], "magnitude": []}
        for i in range(num_layers):
            key = PREFIX + layout.hf_module(i, name)
            names = {"lora_a": f"{key}.lora_A.weight", "lora_b": f"{key}.lora_B.weight"}
            if cfg.method == "dora":
                names["magnitude"] = f"{key}.lora_magnitude_vector"
            for part, tname in names.items():
                expected.add(tname)
                if tname not in tensors:
                    raise PeftFormatError(f"{where}: tensor {tname} is missing")
                t = np.asarray(tensors[tname], np.float32)
                if not np.all(np.isfinite(t)):
                    raise PeftFormatError(f"{where}: tensor {tname} holds non-finite values")
                parts[part].append(t)
            a, b = parts["lora_a"][-1], parts["lora_b"][-1]
            want_a = (cfg.rank, d_in if d_in is not None else a.shape[-1])
            want_b = (d_out if d_out is not None else b.shape[0], cfg.rank)
            for tname, t, want in ((names["lora_a"], a, want_a), (names["lora_b"], b, want_b)):
                if t.shape != want:
                    raise PeftFormatError(f"{where}: tensor {tname} has shape {t.shape}, the run expects {want}")
            if cfg.method == "dora" and parts["magnitude"][-1].shape != (want_b[0],):
                raise PeftFormatError(f"{where}: tensor {names['magnitude']} has shape "
                                      f"{parts['magnitude'][-1].shape}, the run expects {(want_b[0],)}")
        node = {"lora_a": np.stack([a.T for a in parts["lora_a"]]),
                "lora_b": np.stack([b.T for b in parts["lora_b"]])}
        if cfg.method == "dora":
            node["magnitude_delta"] = (np.stack(parts["magnitude"]) - column_norms(kernel)).astype(np.float32)
        layout.set_site(adapter, name, node)
    extra = sorted(set(tensors) - expected)
    if extra:
        raise PeftFormatError(f"{where}: unexpected tensor(s) {extra[:3]}{' ...' if len(extra) > 3 else ''} "
                              f"(the run adapts {list(cfg.targets)} in {num_layers} blocks)")
    return {"adapter": adapter, "router": {}}

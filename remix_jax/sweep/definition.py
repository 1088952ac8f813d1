"""A sweep definition and its runs: ``load_sweep`` reads experiments/NAME.py's ``get_sweep()`` (the format is in
``remix_jax.sweep``'s docstring), ``expand`` turns its grid into ``Run``s with deterministic names and workdirs,
and ``fingerprint`` tells runs that train the same thing apart from runs that do not. ``KEYS`` names the config
keys the experiment files use, so a schema change is a one-line fix.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import pathlib
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_RUNNER = ("python", "-m", "remix_jax.main")


@dataclasses.dataclass(frozen=True)
class _Keys:
    """Override keys of the run config schema (remix_jax.run_config.default_config) used by sweeps."""

    seed: str = "seed"
    model_path: str = "model.path"
    method: str = "adapter.method"
    num_experts: str = "adapter.num_experts"
    top_k: str = "adapter.top_k"
    rank: str = "adapter.rank"
    alpha: str = "adapter.alpha"
    omega: str = "adapter.omega"
    targets: str = "adapter.targets"
    sample_at_inference: str = "adapter.sample_at_inference"
    num_samples: str = "train.num_samples"  # M
    sample_chunk: str = "train.sample_chunk"  # routing samples processed at once (0 = all M)
    baseline: str = "train.baseline"  # "rloo" | "none"
    num_steps: str = "train.num_steps"
    adapter_lr: str = "optimizer.adapter_lr"
    router_lr: str = "optimizer.router_lr"
    batch_size: str = "data.batch_size"  # global batch
    max_length: str = "data.max_length"
    eval_limit: str = "eval.limit"
    tfds_data_dir: str = "data.tfds_data_dir"
    gsm8k_manual_dir: str = "data.sources.gsm8k.manual_dir"
    gsm8k_eval: str = "eval.gsm8k.path"
    gsm8k_shots: str = "eval.gsm8k.shots_path"
    heldout_path: str = "eval.heldout.source.path"
    log_every: str = "train.log_every"


KEYS = _Keys()


class SweepError(ValueError):
    """An invalid sweep definition; the message names the file and the offending entry."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its name, workdir, config spec, overrides and report columns (params)."""

    name: str
    workdir: str
    config: str
    overrides: dict
    params: dict

    def command(self, runner: Sequence[str]) -> list[str]:
        """The argv that trains this run."""
        return [*runner, f"--config={self.config}", f"--workdir={self.workdir}",
                *(f"--config.{k}={format_value(v)}" for k, v in self.overrides.items())]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A loaded sweep definition (paths resolved)."""

    name: str
    path: str  # the sweep file
    out_dir: str  # results.csv / results.md / plots / commands.sh go here
    workdir_root: str
    config: str
    runner: tuple
    runs: tuple
    report: dict


def format_value(v: Any) -> str:
    """A value as ml_collections' --config.key flag parser reads it."""
    if isinstance(v, (list, tuple)):
        return repr(tuple(v))
    return str(v)


def _short_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "+".join(_short_value(x) for x in v)
    s = repr(v) if isinstance(v, float) else str(v)
    return re.sub(r"[^A-Za-z0-9.+-]", "_", s)


def _check_name(name: str, where: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise SweepError(f"{where}: variant name {name!r} must match [A-Za-z0-9][A-Za-z0-9._+-]*")


def _with_variant(config: str, variant_config: str | None) -> str:
    """``variant_config`` ":lora" replaces the variant of ``config``; a full spec replaces it."""
    if not variant_config:
        return config
    if variant_config.startswith(":"):
        return config.split(":", 1)[0] + variant_config
    return variant_config


def _axes(grid: Any, where: str) -> list[tuple[str, list[tuple[str, dict]]]]:
    """grid -> [(column, [(name_part, point), ...])], point = {"value"|"variant": ...}."""
    if not isinstance(grid, (list, tuple)):
        raise SweepError(f"{where}: 'grid' must be a list of axes, got {type(grid).__name__}")
    axes, n_variant_axes = [], 0
    keys_seen: set[str] = set()
    for i, axis in enumerate(grid):
        w = f"{where}: grid[{i}]"
        if isinstance(axis, Mapping):
            shorts = [k.rsplit(".", 1)[-1] for k in axis]
            for key, values in axis.items():
                if not isinstance(key, str) or not key:
                    raise SweepError(f"{w}: keys must be config keys like 'adapter.top_k', got {key!r}")
                if key in keys_seen:
                    raise SweepError(f"{w}: key {key!r} appears in two axes")
                keys_seen.add(key)
                if not isinstance(values, (list, tuple)) or not values:
                    raise SweepError(f"{w}: {key!r} needs a non-empty list of values, got {values!r}")
                short = key.rsplit(".", 1)[-1]
                label = short if shorts.count(short) == 1 else key
                axes.append((key, [(f"{label}={_short_value(v)}", {"key": key, "value": v}) for v in values]))
        elif isinstance(axis, (list, tuple)):
            if not axis:
                raise SweepError(f"{w}: empty list of variants")
            n_variant_axes += 1
            column = "variant" if n_variant_axes == 1 else f"variant_{n_variant_axes}"
            points = []
            for j, var in enumerate(axis):
                vw = f"{w}[{j}]"
                if not isinstance(var, Mapping) or "name" not in var:
                    raise SweepError(f"{vw}: a variant is a dict with a 'name' (and config/overrides/labels)")
                unknown = set(var) - {"name", "config", "overrides", "labels"}
                if unknown:
                    raise SweepError(f"{vw}: unknown variant field(s) {sorted(unknown)}; "
                                     "known: name, config, overrides, labels")
                _check_name(var["name"], vw)
                for field in ("overrides", "labels"):
                    if not isinstance(var.get(field, {}), Mapping):
                        raise SweepError(f"{vw}: '{field}' must be a dict")
                points.append((var["name"], {"variant": var}))
            names = [p[0] for p in points]
            if len(set(names)) != len(names):
                raise SweepError(f"{w}: duplicate variant names {names}")
            axes.append((column, points))
        else:
            raise SweepError(f"{w}: an axis is a dict {{key: [values]}} or a list of variants, "
                             f"got {type(axis).__name__}")
    return axes


def expand(definition: Mapping, workdir_root: str, where: str = "sweep") -> list[Run]:
    """The runs of a sweep definition (cartesian product of the grid axes and the seeds), in order."""
    known = {"config", "base_overrides", "grid", "seeds", "workdir_root", "runner", "report", "name"}
    unknown = set(definition) - known
    if unknown:
        raise SweepError(f"{where}: unknown field(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
    if not isinstance(definition.get("config"), str) or not definition["config"]:
        raise SweepError(f"{where}: 'config' must be a config file spec like 'configs/gsm8k.py:remix'")
    base = dict(definition.get("base_overrides") or {})
    seeds = list(definition.get("seeds", [0]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise SweepError(f"{where}: 'seeds' must be a non-empty list of distinct seeds, got {seeds!r}")
    axes = _axes(definition.get("grid", []), where)
    runs, names = [], set()
    for combo in itertools.product(*(points for _, points in axes)):
        config, overrides, params, parts = definition["config"], dict(base), {}, []
        for (column, _), (part, point) in zip(axes, combo, strict=True):
            parts.append(part)
            if "variant" in point:
                var = point["variant"]
                config = _with_variant(config, var.get("config"))
                overrides.update(var.get("overrides", {}))
                params[column] = var["name"]
                params.update(var.get("labels", {}))
            else:
                overrides[point["key"]] = point["value"]
                params[point["key"]] = point["value"]
        for seed in seeds:
            name = "__".join([*parts, f"seed={_short_value(seed)}"])
            if name in names:
                raise SweepError(f"{where}: two runs are both named {name!r}")
            names.add(name)
            runs.append(Run(name=name, workdir=os.path.join(workdir_root, name), config=config,
                            overrides={**overrides, KEYS.seed: seed}, params={**params, "seed": seed}))
    return runs


def load_sweep(path: str | os.PathLike, workdir_root: str | None = None, out_dir: str | None = None) -> Sweep:
    """Import ``path``, call its ``get_sweep()`` and expand it. Relative paths in the definition and the
    arguments are taken relative to the current directory."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # sweep files may import siblings (experiments/common.py)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a syntax or import error in the sweep file: name the file
        raise SweepError(f"{path}: could not be imported: {type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(str(path.resolve().parent))
    if not callable(getattr(module, "get_sweep", None)):
        raise SweepError(f"{path}: defines no get_sweep()")
    definition = module.get_sweep()
    if not isinstance(definition, Mapping):
        raise SweepError(f"{path}: get_sweep() must return a dict, got {type(definition).__name__}")
    out = pathlib.Path(out_dir) if out_dir else results_dir(path)
    root = workdir_root or definition.get("workdir_root") or str(out / "runs")
    runner = definition.get("runner") or DEFAULT_RUNNER
    if isinstance(runner, str):
        runner = shlex.split(runner)
    runs = expand(definition, str(root), where=str(path))
    return Sweep(name=definition.get("name", path.stem), path=str(path), out_dir=str(out),
                 workdir_root=str(root), config=definition["config"], runner=tuple(runner), runs=tuple(runs),
                 report=dict(definition.get("report") or {}))


def results_dir(sweep_file: str | os.PathLike) -> pathlib.Path:
    """Where a sweep's outputs go by default: results/NAME beside the sweep file NAME.py."""
    path = pathlib.Path(sweep_file)
    return path.parent / "results" / path.stem


def _load_config(spec: str):
    """The ConfigDict of ``path.py[:arg]`` (``get_config(arg)``), as the entry point's --config reads it."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_sweep_config_{pathlib.Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


@functools.cache
def _base_config_json(spec: str) -> str:
    return _load_config(spec).to_json_best_effort(sort_keys=True)


def fingerprint(run: Run) -> str:
    """A hash of the run's resolved config (its config file and variant with every override applied).
    Two runs with equal fingerprints train the same thing. Falls back to the spec and the overrides as
    written when the config cannot be resolved here (then only literally equal runs match)."""
    try:
        import ml_collections

        cfg = ml_collections.ConfigDict(json.loads(_base_config_json(run.config)))
        for key, value in run.overrides.items():
            *parents, leaf = key.split(".")
            node = cfg
            for p in parents:
                node = node[p]
            if leaf not in node:
                raise KeyError(key)
            node[leaf] = list(value) if isinstance(value, tuple) else value
        text = cfg.to_json_best_effort(sort_keys=True)
    except Exception:  # unresolvable here (a config needing files, a key the schema lacks): literal identity
        text = json.dumps([run.config, sorted((k, repr(v)) for k, v in run.overrides.items())])
    return hashlib.sha256(text.encode()).hexdigest()


def select(runs: Sequence[Run], only: str | None) -> list[Run]:
    if not only:
        return list(runs)
    pattern = re.compile(only)
    return [r for r in runs if pattern.search(r.name)]

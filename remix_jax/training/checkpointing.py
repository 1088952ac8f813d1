"""Checkpoints (orbax, asynchronous) and the final adapter export (safetensors + JSON).

A checkpoint at step s holds: the trainable adapters and routers, the optimizer state and the step
("state", sharded arrays), the data loader position ("data", JSON) and run metadata including the run's
routing key ("meta", JSON). The frozen base is never saved: it is reloaded from the model path.

Several processes write one checkpoint together: each its shards of the arrays, process 0 the JSON items.
Each process reads its own shard of the data, so "data" holds every process's loader position
("loader_per_process", gathered at save) besides process 0's ("loader").
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from remix_jax.training.train_state import TrainState, checkpointed_part, with_checkpointed_part


class Checkpointer:
    """Asynchronous orbax CheckpointManager under ``directory`` keeping the newest ``max_to_keep``."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: TrainState, data_state: Any, meta: dict) -> None:
        """Start saving at ``state.step`` (returns before the write finishes)."""
        step = int(jax.device_get(state.step))
        data = {"loader": data_state}
        if jax.process_count() > 1:
            data["loader_per_process"] = _gather_json(data_state)
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(checkpointed_part(state)),
            data=ocp.args.JsonSave(data),
            meta=ocp.args.JsonSave(meta)))

    def restore(self, state: TrainState, step: int | None = None) -> tuple[TrainState, Any, dict]:
        """(state with restored adapters/routers/opt state/step, loader state, meta) from ``step`` (newest).

        ``state`` supplies the structure and shardings (its arrays may be abstract ShapeDtypeStructs
        carrying shardings, or concrete arrays).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            checkpointed_part(state))
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        data = out["data"]
        per_process = data.get("loader_per_process")
        # Another process count: process 0's position, which the loader accepts or refuses (set_state).
        same_job = per_process is not None and len(per_process) == jax.process_count()
        loader = per_process[jax.process_index()] if same_job else data["loader"]
        return with_checkpointed_part(state, out["state"]), loader, out["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _gather_json(value: Any) -> list:
    """``value`` of every process, by process index (a collective: every process calls it)."""
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([raw.size], np.int32)).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:raw.size] = raw
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:n])) for row, n in zip(rows, sizes, strict=True)]


def flatten_tree(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """{"a/b/c": array} for a nested dict of arrays (the safetensors naming)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        out[prefix + name] = np.asarray(jax.device_get(leaf))
    return out


def export_adapters(out_dir: str, trainable: dict, description: dict) -> tuple[str, str]:
    """Write ``adapters.safetensors`` ("adapter/..." and "router/..." tensors) and ``adapter_config.json``.

    Returns the two paths. ``description`` is the JSON-serialisable adapter/router configuration.
    """
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for group in ("adapter", "router"):
        tensors.update(flatten_tree(trainable.get(group, {}), prefix=f"{group}/"))
    st_path = os.path.join(out_dir, "adapters.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, st_path,
              metadata={"format": "remix-jax-adapters"})
    cfg_path = os.path.join(out_dir, "adapter_config.json")
    with open(cfg_path, "w") as f:
        json.dump(description, f, indent=2, sort_keys=True, default=str)
    return st_path, cfg_path


def load_exported_adapters(out_dir: str) -> tuple[dict[str, np.ndarray], dict]:
    """(flat tensors, description) as written by ``export_adapters``."""
    from safetensors.numpy import load_file

    tensors = load_file(os.path.join(out_dir, "adapters.safetensors"))
    with open(os.path.join(out_dir, "adapter_config.json")) as f:
        return tensors, json.load(f)

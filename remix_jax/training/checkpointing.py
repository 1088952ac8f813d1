"""Checkpoints (orbax, asynchronous) and the final adapter export (safetensors + JSON).

A checkpoint at step s holds: the trainable adapters and routers, the optimizer state and the step
("state", sharded arrays), the data loader position ("data", JSON) and run metadata including the run's
routing key ("meta", JSON). The frozen base is never saved: it is reloaded from the model path.

Several processes write one checkpoint together: each its shards of the arrays, process 0 the JSON items.
Each process reads its own shard of the data, so "data" holds every process's loader position
("loader_per_process", gathered at save) besides process 0's ("loader").

Damaged checkpoints. ``Checkpointer.restore_newest_intact`` (what a resuming run calls) tries the checkpoints
newest first. One is damaged when an item folder or one of its JSON files (``data/metadata``,
``meta/metadata``, ``state/_METADATA``) is missing, empty or not valid JSON, or when TensorStore cannot read
its arrays (a truncated or missing data file: OUT_OF_RANGE, DATA_LOSS, NOT_FOUND, FAILED_PRECONDITION). A
damaged checkpoint is reported in one line (step, file, what is wrong; the full exception is logged at
DEBUG), moved to ``checkpoints/damaged/step_<N>-<its time>`` (orbax ignores that folder; nothing is
deleted) and the next older one is tried. With several processes, a checkpoint damaged on any of them is
skipped by all, and process 0 moves it. Any other failure (a checkpoint of another model or adapter
layout, an unreadable file system) is raised as is and moves nothing. When checkpoints existed but none is
intact, the run does not start again from step 0 on its own (that would silently redo the training and
drop its logged metrics): ``NoIntactCheckpointError`` says what was moved where and how to start over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from remix_jax.training.train_state import TrainState, checkpointed_part, with_checkpointed_part

log = logging.getLogger(__name__)

DAMAGED = "damaged"  # checkpoints/damaged/step_<N>-<time>: moved-aside checkpoints (not a step name)
_JSON_FILES = (("data/metadata", "loader state"), ("meta/metadata", "run metadata"),
               ("state/_METADATA", "array index"))
_TS_DAMAGE = re.compile(r"^(OUT_OF_RANGE|DATA_LOSS|NOT_FOUND|FAILED_PRECONDITION): (.*)")


class CheckpointDamagedError(RuntimeError):
    """A checkpoint that cannot be read because its files are damaged (``problem`` says which and how)."""

    def __init__(self, step: int, path: str, problem: str):
        super().__init__(f"checkpoint step {step} in {path} is damaged: {problem}")
        self.step, self.path, self.problem = step, path, problem


class NoIntactCheckpointError(RuntimeError):
    """Every checkpoint of a run is damaged (they were moved aside, none deleted)."""


def _check_files(step_dir: str) -> str | None:
    """What is wrong with a checkpoint's folders and JSON files, or None (arrays are checked by reading)."""
    for item in ("state", "data", "meta"):
        if not os.path.isdir(os.path.join(step_dir, item)):
            return f"{item}/: missing"
    for rel, what in _JSON_FILES:
        path = os.path.join(step_dir, rel)
        if not os.path.isfile(path):
            return f"{rel} ({what}): missing"
        with open(path, "rb") as f:
            raw = f.read()
        if not raw.strip():
            return f"{rel} ({what}): empty file"
        try:
            obj = json.loads(raw)
        except UnicodeDecodeError:
            return f"{rel} ({what}): not UTF-8 text ({len(raw)} bytes)"
        except json.JSONDecodeError as e:
            return f"{rel} ({what}): malformed JSON ({e.msg}: line {e.lineno} column {e.colno}, {len(raw)} bytes)"
        if not isinstance(obj, dict) or (rel == "data/metadata" and "loader" not in obj):
            return f"{rel} ({what}): not the expected JSON object"
    return None


def _bad_json_file(step_dir: str) -> str | None:
    """The first of the checkpoint's other JSON files (not array data) that does not parse, as 'rel: msg'."""
    for root, dirs, names in os.walk(step_dir):
        dirs[:] = [d for d in dirs if d != "d"]  # OCDBT data files are binary
        for name in sorted(names):
            if name.endswith(".ocdbt") or name.endswith(".txt"):
                continue
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as f:
                    json.loads(f.read())
            except ValueError as e:
                return f"{os.path.relpath(path, step_dir)}: malformed JSON ({getattr(e, 'msg', e)})"
    return None


def _files_of_size(folder: str, size: int) -> list[str]:
    return [os.path.join(r, n) for r, _, names in os.walk(folder) for n in names
            if os.path.getsize(os.path.join(r, n)) == size]


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _read_problem(exc: BaseException, step_dir: str) -> str | None:
    """A one-line description of a read error that means damaged files, or None for any other error."""
    for e in _chain(exc):
        if isinstance(e, FileNotFoundError):
            return f"{os.path.relpath(str(e.filename or e), step_dir)}: missing"
        if isinstance(e, json.JSONDecodeError):
            return _bad_json_file(step_dir) or f"malformed JSON ({e.msg})"
        first = str(e).split("\n", 1)[0]
        m = _TS_DAMAGE.match(first)
        if m:
            code, text = m.groups()
            text = re.sub(r"\s*\[tensorstore_spec.*$", "", text)
            key = re.search(r'(?:Error reading|Metadata at) "([^"/]+)', text)
            files = re.findall(r'local file "([^"]+)"', text)
            where, why = "state/", text
            if files:  # the innermost file named, and what went wrong with it
                where = os.path.relpath(files[-1], step_dir) + ("/" if files[-1].endswith("/") else "")
                why = text.rsplit(f'"{files[-1]}"', 1)[-1].lstrip(": ").strip() or text
            size = re.search(r"not valid for value of size (\d+)", text)
            if size and where.endswith("/"):  # a read past the end of one of the database's data files
                hits = _files_of_size(os.path.join(step_dir, where), int(size.group(1)))
                where = os.path.relpath(hits[0], step_dir) if len(hits) == 1 else where
            array = f" (array {key.group(1)})" if key else ""
            return f"{where}{array}: {code}: {why}"
    return None


@contextlib.contextmanager
def _quiet_asyncio():
    """orbax's failed read tasks each log a TensorStore spec dump (thousands of lines) through asyncio's
    logger; keep those out of the output (the failure itself is raised and reported)."""
    logger = logging.getLogger("asyncio")
    drop = logging.Filter("-")  # matches no logger name: drops every record
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _all_processes_any(flag: bool) -> bool:
    """True on every process when ``flag`` is True on any (so all processes skip the same checkpoints)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


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
        carrying shardings, or concrete arrays). Raises ``CheckpointDamagedError`` when the checkpoint's
        files are damaged; other errors (e.g. another adapter layout) as they come.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        step_dir = os.path.join(self.directory, str(step))
        problem = _check_files(step_dir)
        if problem:
            raise CheckpointDamagedError(step, step_dir, problem)
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            checkpointed_part(state))
        try:
            with _quiet_asyncio():
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore()))
        except Exception as e:
            problem = _read_problem(e, step_dir)
            if problem is None:
                raise
            raise CheckpointDamagedError(step, step_dir, problem) from e
        data = out["data"]
        per_process = data.get("loader_per_process")
        # Another process count: process 0's position, which the loader accepts or refuses (set_state).
        same_job = per_process is not None and len(per_process) == jax.process_count()
        loader = per_process[jax.process_index()] if same_job else data["loader"]
        return with_checkpointed_part(state, out["state"]), loader, out["meta"]

    def restore_newest_intact(self, state: TrainState, log_fn=print) -> tuple[TrainState, Any, dict] | None:
        """``restore`` from the newest checkpoint that is not damaged; damaged newer ones are reported in
        one line each and moved to ``checkpoints/damaged/``. None when the run has no checkpoint yet; raises
        ``NoIntactCheckpointError`` when it had some but none is intact (see the module docstring)."""
        moved = []
        for step in reversed(self.all_steps()):
            err = None
            try:
                out = self.restore(state, step)
            except CheckpointDamagedError as e:
                err = e
            if not _all_processes_any(err is not None):
                return out
            problem = err.problem if err else "damaged on another process"
            dest = self._move_aside(step)
            moved.append(f"step {step} -> {dest}")
            log.debug("checkpoint step %d: full error", step, exc_info=err)
            log_fn(f"checkpoint step {step} in {self.directory} is damaged ({problem}); moved it to {dest}")
        damaged_dir = os.path.join(self.directory, DAMAGED)
        if moved or (os.path.isdir(damaged_dir) and os.listdir(damaged_dir)):
            raise NoIntactCheckpointError(
                f"{self.directory}: no intact checkpoint to resume from (damaged ones are kept in {damaged_dir}"
                + (f": {', '.join(moved)}" if moved else "") + "). Not starting again from step 0 on its own: "
                f"to do so, move {damaged_dir} and the run's metrics.jsonl away, or use a new workdir")
        return None

    def _move_aside(self, step: int) -> str:
        """Rename the step folder to checkpoints/damaged/step_<N>-<its mtime> (process 0; all wait)."""
        src = os.path.join(self.directory, str(step))
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(os.stat(src).st_mtime)) if os.path.exists(src) \
            else "unknown"
        dest = os.path.join(self.directory, DAMAGED, f"step_{step}-{stamp}")
        if jax.process_index() == 0 and os.path.exists(src):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            n = 1
            while os.path.exists(dest):
                dest = os.path.join(self.directory, DAMAGED, f"step_{step}-{stamp}-{n}")
                n += 1
            os.rename(src, dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"remix_jax checkpoint {step} moved aside")
        self.manager.reload()
        return dest

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

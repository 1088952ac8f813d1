"""``adapter.init_from``: a PEFT LoRA adapter directory as the trainable adapter at step 0 of a new run.

Only a run that starts from scratch (no checkpoint in WORKDIR) reads it: a resumed run takes its adapter from its
checkpoint and does not open the directory, which may have changed or be gone by then. Before the model loads,
``run_config.init_from_problems`` checks the directory's adapter_config.json against the config; once the model is
built, ``initialise`` reads the tensors (``adapters.peft_io.load_peft_adapter``: every tensor with its shape, DoRA
magnitudes converted against the run's base) in place of the fresh initialisation.

What the run started from is recorded as the data package records a prepared copy's inputs
(``data.fingerprint``: path, size, times and sha256 of both files, and a digest): in every checkpoint's metadata
(so a resumed run keeps it without reading the files) and in export/adapter_config.json.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp

from remix_jax.adapters.peft_io import CONFIG_FILE, WEIGHTS_FILE, PeftFormatError, load_peft_adapter
from remix_jax.data import fingerprint

KEY = "init_from"  # in checkpoint metadata and in export/adapter_config.json


def record(path: str) -> dict:
    """The fingerprint of the PEFT directory ``path``: {"version", "digest", "settings": {"init_from": absolute
    path}, "files": {"adapter_config.json": file_record, "adapter_model.safetensors": file_record}}."""
    files = {name: fingerprint.file_record(os.path.join(path, name)) for name in (CONFIG_FILE, WEIGHTS_FILE)}
    return fingerprint.make(files, {KEY: os.path.abspath(path)})


def initialise(bundle, path: str, log_fn=print):
    """(``bundle`` with its trainable tree read from the PEFT directory ``path``, the directory's fingerprint).

    Every tensor is checked (PeftFormatError naming adapter.init_from, the file and the tensor); the tree takes the
    dtypes of the fresh one it replaces. The fingerprint is taken before the tensors are read."""
    rec = record(path)
    try:
        loaded = load_peft_adapter(path, bundle.adapter_cfg, bundle.model_cfg.num_layers, bundle.base)
    except PeftFormatError as e:
        raise PeftFormatError(f"adapter.init_from: {e}") from e
    fresh = bundle.trainable
    if jax.tree.structure(loaded) != jax.tree.structure(fresh):
        raise ValueError(f"adapter.init_from: {path} gives the adapter tree {jax.tree.structure(loaded)}, the run "
                         f"builds {jax.tree.structure(fresh)}")

    def cast(f, x):
        if f.shape != x.shape:  # load_peft_adapter checked every tensor against the base: not expected
            raise ValueError(f"adapter.init_from: {path} gives a {x.shape} factor where the run has {f.shape}")
        return jnp.asarray(x, f.dtype)

    trainable = jax.tree.map(cast, fresh, loaded)
    sha = rec["files"][WEIGHTS_FILE]["sha256"]
    log_fn(f"adapter initialised from {path} ({WEIGHTS_FILE} sha256 {sha[:12]})")
    return dataclasses.replace(bundle, trainable=trainable), rec

"""Compile the real train step for a TPU pod slice ahead of time, on any host, and say whether it fits in HBM.

    python -m remix_jax.compile --config=configs/gsm8k.py:remix --topology=v5p-128 \\
        --config.model.path=random:llama3-8b [--num_slices=2] [--json_out=FILE] [--config.key=value ...]

It needs ``libtpu`` next to jax (``pip install libtpu==0.0.42.1`` for jax 0.10.2, the version jax's ``tpu`` extra
pins), not a TPU: the TPU compiler runs on the host's CPU for the topology's devices (``parallel.topology``). The
step is the one ``python -m remix_jax.main`` runs, built from abstract parameters (``training.aot_compile``, which
does the work); ``model.dtype`` / ``param_dtype`` "auto" become bfloat16 and ``attention_impl`` "auto" the splash
kernel, as on a TPU.

Printed: the parameters' and optimizer state's shardings, the per-chip HBM of the compiled step (arguments,
outputs, temporaries, aliased = donated state reused as output, total = arguments + outputs - aliased +
temporaries), the chip's HBM capacity, whether it fits, and the compile time. ``--json_out`` appends the whole
report as one JSON line. Exit status 0 when it fits, 1 when it does not (or the TPU compiler reports that it ran
out of HBM), 2 for a bad config.

Topologies: Cloud TPU names (``v5p-128``: 128 TensorCores = 64 chips; ``v5e-16``, ``v6e-64``: chips; ``v4-32``)
or the chip grid (``v5p:4x4x4``, ``v5e:4x4``, ``v6e:8x8``). ``--num_slices=N`` compiles for N such slices joined
by the data-center network: data parallelism across slices, fsdp and tensor inside each; ``config.mesh`` then
describes the whole job (data is a multiple of N).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_FLAGS: dict = {}


def _define_flags() -> None:
    _FLAGS["config"] = config_flags.DEFINE_config_file(
        "config", None, "Config file (configs/NAME.py[:VARIANT]).", lock_config=True)
    _FLAGS["topology"] = flags.DEFINE_string("topology", None, "v5p-128, v5e-16, v6e-64, v4-32 or v5p:4x4x4 ...")
    _FLAGS["num_slices"] = flags.DEFINE_integer("num_slices", 1, "slices joined over DCN (data parallel)")
    _FLAGS["json_out"] = flags.DEFINE_string("json_out", None, "append the report as one JSON line to this file")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from remix_jax.models.model_config import ModelLoadError
    from remix_jax.run_config import ConfigError
    from remix_jax.training.aot_compile import compile_for_topology, format_report

    config, topology = _FLAGS["config"].value, _FLAGS["topology"].value
    if config is None or not topology:
        raise app.UsageError("--config=configs/NAME.py[:VARIANT] and --topology=v5p-128 (or v5e-16, ...) are required")
    try:
        report = compile_for_topology(config, topology, _FLAGS["num_slices"].value)
    except (ConfigError, ModelLoadError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_report(report), flush=True)
    if _FLAGS["json_out"].value:
        with open(_FLAGS["json_out"].value, "a") as f:
            f.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # libtpu's static destructors can abort at interpreter exit on a host without a TPU, turning the exit status
    # into a crash's: leave without them, the report being written.
    os._exit(0 if report["fits"] else 1)


def _quiet_host() -> None:
    """Compile-only: jax's default backend is the host CPU (the TPU devices come from the topology)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
    _quiet_host()
    _define_flags()
    app.run(main)


"""Device mesh with axes (data, fsdp, tensor) built from the config, and multi-host start-up.

Axis sizes come from ``config.mesh``; one size may be -1 ("all remaining devices"). Devices of several TPU
slices (multi-slice) get a hybrid mesh: data parallel across slices, fsdp and tensor inside each. The mesh uses
``AxisType.Auto`` axes, which linen's logical sharding annotations require (``jax.make_mesh`` defaults to
Explicit axes in recent jax).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both data-parallel axes


def resolve_axis_sizes(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """(data, fsdp, tensor) sizes whose product is num_devices; a single -1 takes what is left."""
    unknown = [k for k in sizes if k not in MESH_AXES]
    if unknown:
        raise ValueError(f"config.mesh: unknown axes {unknown}; expected {MESH_AXES}")
    vals = [int(sizes.get(a, 1)) for a in MESH_AXES]
    given = dict(zip(MESH_AXES, list(vals), strict=True))
    if vals.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {given}")
    if any(v == 0 or v < -1 for v in vals):
        raise ValueError(f"config.mesh: axis sizes must be positive or -1, got {given}")
    known = math.prod(v for v in vals if v != -1)
    if -1 in vals:
        if num_devices % known:
            raise ValueError(f"config.mesh: {num_devices} devices are not divisible by the fixed axes "
                             f"({known})")
        vals[vals.index(-1)] = num_devices // known
    if math.prod(vals) != num_devices:
        raise ValueError(f"config.mesh: data*fsdp*tensor = {math.prod(vals)} but {num_devices} devices are "
                         f"available ({given}); use -1 for one axis to fill the rest")
    return tuple(vals)


def make_mesh(sizes: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
    """A Mesh over ``devices`` (default: all) with Auto axes (data, fsdp, tensor); devices of several TPU slices
    get ``make_multislice_mesh``."""
    devices = list(devices) if devices is not None else jax.devices()
    if num_slices(devices) > 1:
        return make_multislice_mesh(sizes, devices)
    shape = resolve_axis_sizes(sizes, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if devices == jax.devices():
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
    if devices[0].platform == "tpu":  # e.g. a topology compiled for ahead of time: place axes on the torus
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def num_slices(devices: Sequence) -> int:
    """The number of TPU slices that ``devices`` span (1 for devices without a ``slice_index``)."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def make_multislice_mesh(sizes: Mapping[str, int], devices: Sequence) -> Mesh:
    """A (data, fsdp, tensor) Mesh over the devices of several TPU slices: the slices are data-parallel replicas
    of each other (the only axis that crosses the slower data-center network, DCN, once per step for the
    gradient's all-reduce), fsdp and tensor stay inside a slice (ICI). ``sizes`` are the whole mesh's, as for
    ``make_mesh``; ``data`` must be a multiple of the number of slices."""
    n = num_slices(devices)
    data, fsdp, tensor = resolve_axis_sizes(sizes, len(devices))
    if data % n:
        raise ValueError(f"config.mesh: data={data} must be a multiple of the {n} slices (data parallelism is the "
                         f"only axis across slices; fsdp={fsdp} and tensor={tensor} stay inside a slice)")
    from jax.experimental import mesh_utils

    tpu_v5e = devices[0].device_kind in ("TPU v5 lite", "TPU v5e")  # as jax.make_mesh: split v5e's axes
    grid = mesh_utils.create_hybrid_device_mesh((data // n, fsdp, tensor), (n, 1, 1), devices,
                                                allow_split_physical_axes=tpu_v5e)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of [B, T] batch arrays: rows over (data, fsdp), sequence replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


_DISTRIBUTED_STARTED = False


def maybe_initialize_distributed(env: Mapping[str, str] | None = None, initialize=None) -> bool:
    """Call ``jax.distributed.initialize()`` when the environment describes a multi-process job.

    Recognised: JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID), or REMIX_DISTRIBUTED=1 to
    let jax auto-detect the cluster (TPU pod slices, SLURM, Open MPI). Returns True when the job is (now or
    already) distributed. Idempotent: entry points and ``training.loop.train`` may both call it, and jax
    allows a single initialisation per process. ``initialize`` replaces ``jax.distributed.initialize``
    (tests).
    """
    global _DISTRIBUTED_STARTED
    if _DISTRIBUTED_STARTED:
        return True
    env = os.environ if env is None else env
    initialize = initialize or jax.distributed.initialize
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kw = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"]}
        if env.get("JAX_NUM_PROCESSES"):
            kw["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if env.get("JAX_PROCESS_ID"):
            kw["process_id"] = int(env["JAX_PROCESS_ID"])
        initialize(**kw)
    elif env.get("REMIX_DISTRIBUTED", "") in ("1", "true", "True"):
        initialize()
    else:
        return False
    _DISTRIBUTED_STARTED = True
    return True

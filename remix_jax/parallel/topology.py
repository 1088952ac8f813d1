"""TPU topologies for compiling without a TPU: Cloud TPU slice names parsed into chip grids, each generation's
HBM per chip, and the compile-only jax devices of a topology (``jax.experimental.topologies``, from ``libtpu``).

Names: Cloud TPU names (``v5p-128``: 128 TensorCores = 64 chips; ``v5e-16``, ``v6e-64``: chips; ``v4-32``) or the
chip grid (``v5p:4x4x4``, ``v5e:4x4``, ``v6e:8x8``). ``topology_devices(target, num_slices)`` gives the devices of
``num_slices`` such slices joined by the data-center network (they carry a ``slice_index``;
``parallel.mesh.make_mesh`` builds the hybrid mesh over them). ``training.aot_compile`` compiles the train step
for them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

INSTALL = "pip install libtpu==0.0.42.1  # the libtpu of jax 0.10.2's tpu extra (jax[tpu]==0.10.2)"


@dataclasses.dataclass(frozen=True)
class Generation:
    """A TPU generation: how libtpu names its topologies and what one chip (one jax device) has."""

    libtpu_prefix: str  # topology_name prefix for jax.experimental.topologies
    chip_config: str  # "megacore": one jax device per chip's two TensorCores; "default": one TensorCore
    cores_per_chip: int  # in the Cloud TPU name (v5p-128 counts TensorCores, v5e-16 chips)
    hbm_gib: float  # HBM per chip
    source: str


# HBM per chip from the Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/<generation>).
TPU_GENERATIONS: dict[str, Generation] = {
    "v4": Generation("v4", "megacore", 2, 32.0, "cloud.google.com/tpu/docs/v4: 32 GiB HBM2 per chip"),
    "v5p": Generation("v5", "megacore", 2, 95.0, "cloud.google.com/tpu/docs/v5p: 95 GB HBM2e per chip"),
    "v5e": Generation("v5e", "default", 1, 16.0, "cloud.google.com/tpu/docs/v5e: 16 GB HBM2 per chip"),
    "v6e": Generation("v6e", "default", 1, 32.0, "cloud.google.com/tpu/docs/v6e: 32 GB HBM per chip"),
}
# Chip grids of the usual single-slice sizes (MaxText's accelerator_to_spec_map; Cloud TPU docs' topologies).
GRID_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
           512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


@dataclasses.dataclass(frozen=True)
class Target:
    """One slice: its name as given, its generation and its chip grid."""

    name: str  # as given
    generation: str  # key of TPU_GENERATIONS
    grid: str  # chip grid, e.g. "4x4x4"

    @property
    def gen(self) -> Generation:
        return TPU_GENERATIONS[self.generation]

    @property
    def chips(self) -> int:
        return math.prod(int(d) for d in self.grid.split("x"))

    @property
    def topology_name(self) -> str:
        return f"{self.gen.libtpu_prefix}:{self.grid}"

    @property
    def host_bounds(self) -> tuple[int, int, int]:
        """Chips per host along each axis: a 2x2 block (4 chips a host, as libtpu assumes by default), or the
        whole grid where it is smaller (a single-chip v5e-1 / v6e-1, a v5e:1x2)."""
        dims = [int(d) for d in self.grid.split("x")]
        return tuple(min(b, g) for b, g in zip((2, 2, 1), dims + [1] * (3 - len(dims)), strict=True))


def parse_topology(name: str) -> Target:
    """``v5p-128`` / ``v5e-16`` / ``v6e-64`` / ``v4-32`` (Cloud TPU names) or ``v5p:4x4x4`` (chip grid); a
    ValueError naming ``--topology`` (the flag of ``python -m remix_jax.compile``) otherwise."""
    known = ", ".join(sorted(TPU_GENERATIONS))
    m = re.fullmatch(r"(v\d+[a-z]?)([-:])([0-9x]+)", name.strip().lower())
    if not m or m.group(1) not in TPU_GENERATIONS:
        raise ValueError(f"--topology={name!r}: expected GENERATION-SIZE (v5p-128, v5e-16, v6e-64) or "
                         f"GENERATION:GRID (v5p:4x4x4, v5e:4x4); generations: {known}")
    gen_key, sep, rest = m.groups()
    gen = TPU_GENERATIONS[gen_key]
    grids = GRID_3D if gen.chip_config == "megacore" else GRID_2D
    if sep == ":":
        dims = rest.split("x")
        if not all(d.isdigit() and int(d) > 0 for d in dims) or len(dims) != (3 if grids is GRID_3D else 2):
            raise ValueError(f"--topology={name!r}: a {gen_key} grid has {3 if grids is GRID_3D else 2} "
                             "positive dimensions, e.g. " + next(iter(grids.values())))
        return Target(name, gen_key, rest)
    if not rest.isdigit() or int(rest) % gen.cores_per_chip:
        raise ValueError(f"--topology={name!r}: the size of a {gen_key} slice counts "
                         f"{'TensorCores (2 per chip)' if gen.cores_per_chip == 2 else 'chips'}")
    chips = int(rest) // gen.cores_per_chip
    if chips not in grids:
        sizes = ", ".join(f"{gen_key}-{c * gen.cores_per_chip}" for c in grids)
        raise ValueError(f"--topology={name!r}: unknown slice size; known: {sizes} (or give the grid, "
                         f"{gen_key}:AxB{'xC' if grids is GRID_3D else ''})")
    return Target(name, gen_key, grids[chips])


def topology_devices(target: Target, num_slices: int = 1) -> list:
    """The (compile-only) jax devices of ``num_slices`` slices of ``target``; ImportError naming the install."""
    # Compiling for a topology never touches a chip, so it needs no claim on libtpu's one-process lock
    # (/tmp/libtpu_lockfile): without this, a second process compiling at the same time (a test worker, a sweep of
    # topologies, a compile beside a training job on a TPU VM) fails with "Internal error when accessing libtpu
    # multi-process lockfile". Read by libtpu when it initialises, so it is set before the topology is made.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        desc = topologies.get_topology_desc(platform="tpu", topology_name=target.topology_name,
                                            chip_config_name=target.gen.chip_config,
                                            chips_per_host_bounds=target.host_bounds,
                                            num_slices=num_slices)
    except Exception as e:  # no libtpu: jax has no TPU compiler to ask
        if "tpu" in str(e).lower() and ("not" in str(e).lower() or "unknown" in str(e).lower()):
            raise ImportError(f"compiling for a TPU topology needs libtpu: {INSTALL} ({e})") from e
        raise
    return list(desc.devices)

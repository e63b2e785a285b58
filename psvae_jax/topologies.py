"""TPU slices by name, and the chip figures a roofline needs (no JAX: the AOT CLI parses with it
before the TPU compiler loads).

Names as Cloud TPU writes them: `v5e-16` and `v6e-8` count chips; `v4-32` and `v5p-8` count
TensorCores (two per chip, one JAX device per chip: "megacore"); or the explicit `v5e:4x4` /
`v4:2x2x4` form (chips per dimension). Single slices only. `parse(name)` returns a `Slice`, or
raises ValueError with one line listing the known names.

Chip figures (per chip; Cloud TPU system architecture pages, cloud.google.com/tpu/docs/<v>,
read 2026-12): peak dense bf16 FLOP/s, HBM capacity, HBM bandwidth.
  v4   275 TFLOP/s   32 GiB   1200 GB/s   (tpu/docs/v4)
  v5e  197 TFLOP/s   16 GiB    819 GB/s   (tpu/docs/v5e)
  v5p  459 TFLOP/s   95 GiB   2765 GB/s   (tpu/docs/v5p)
  v6e  918 TFLOP/s   32 GiB   1638 GB/s   (tpu/docs/v6e)
A program may use a little less HBM than the capacity: psvae_jax.aot reads the compiler's own
limit (v5e 15.75 GiB, v4 30.75, v5p 95.74, v6e 31.25 with libtpu 0.0.42) and judges fit by it.
"""

from __future__ import annotations

import dataclasses
import math
import re

GB, GIB = 1e9, 2.0**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation's per-chip figures (what a roofline reads)."""

  name: str  # "v5e"
  libtpu_name: str  # what get_topology_desc's topology_name starts with
  peak_bf16_flops: float  # dense bf16 FLOP/s per chip
  hbm_bytes: float  # HBM capacity per chip
  hbm_bandwidth: float  # bytes/s per chip
  cores_per_chip: int  # TensorCores per chip (the name counts these for v4 / v5p)
  dims: int  # torus dimensions (2: v5e, v6e; 3: v4, v5p); 0: a GPU host (devices in a row)
  source: str
  platform: str = "tpu"


CHIPS = {
    "v4": Chip("v4", "v4", 275e12, 32 * GIB, 1200 * GB, 2, 3, "cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("v5e", "v5e", 197e12, 16 * GIB, 819 * GB, 1, 2, "cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", "v5p", 459e12, 95 * GIB, 2765 * GB, 2, 3, "cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("v6e", "v6e", 918e12, 32 * GIB, 1638 * GB, 1, 2, "cloud.google.com/tpu/docs/v6e"),
    # An H100 SXM: dense bf16 989 TFLOP/s, 80 GB HBM3 (79.1 GiB visible), 3.35 TB/s (NVIDIA's H100
    # datasheet); compiled against psvae_jax/gpu_targets/h100_sxm.txtpb.
    "h100": Chip(
        "h100",
        "h100_sxm",
        989e12,
        84942979072,
        3352 * GB,
        1,
        0,
        "NVIDIA H100 datasheet",
        platform="cuda",
    ),
}

# Chips of a slice -> its shape, as Cloud TPU lays them out (v5e / v6e: 2D; v4 / v5p: 3D).
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8)}
_SHAPES_2D.update({128: (8, 16), 256: (16, 16)})
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4)}
_SHAPES_3D.update({128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8)})


@dataclasses.dataclass(frozen=True)
class Slice:
  """A single TPU slice: its chip, shape (chips per dimension) and the name it was given."""

  name: str
  chip: Chip
  shape: tuple[int, ...]

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)

  @property
  def topology_name(self) -> str:
    """get_topology_desc's topology_name, e.g. "v5e:4x4" or "v4:2x2x4"."""
    return f"{self.chip.libtpu_name}:{'x'.join(map(str, self.shape))}"

  @property
  def gpu_topology(self) -> str:
    """The CUDA plugin's topology option: partitions x hosts x devices per host (one host)."""
    return f"1x1x{self.num_chips}"

  @property
  def chips_per_host_bounds(self) -> tuple[int, int, int]:
    """Chips on one host per dimension (MaxText's and xpk's tables: 2x2x1 for multi-host slices
    of every generation here; a slice of one host holds all of its chips)."""
    shape3 = tuple(self.shape) + (1,) * (3 - len(self.shape))
    if self.num_chips <= 8 and self.chip.dims == 2:  # v5e / v6e: up to 8 chips on one host
      return shape3  # type: ignore[return-value]
    if self.num_chips <= 4:
      return shape3  # type: ignore[return-value]
    return (2, 2, 1)

  @property
  def chip_config_name(self) -> str:
    return "megacore" if self.chip.cores_per_chip == 2 else "default"

  @property
  def cloud_name(self) -> str:
    """The accelerator type as gcloud writes it (v5e-16, v4-32)."""
    return f"{self.chip.name}-{self.num_chips * self.chip.cores_per_chip}"


_GPU_COUNTS = (1, 2, 4, 8)


def known_names() -> list[str]:
  names = []
  for chip in CHIPS.values():
    if chip.platform != "tpu":
      names += [f"{chip.name}-{n}" for n in _GPU_COUNTS]
      continue
    table = _SHAPES_2D if chip.dims == 2 else _SHAPES_3D
    names += [f"{chip.name}-{n * chip.cores_per_chip}" for n in sorted(table)]
  return names


def parse(name: str) -> Slice:
  """`v5e-16`, `v4-32`, `v5p-8`, `v6e-8` or `v5e:4x4` -> Slice; ValueError (one line) else."""
  text = name.strip().lower().replace("v5litepod", "v5e")
  m = re.fullmatch(r"(v\d+[a-z]?|h100)-(\d+)", text)
  if m and m.group(1) in CHIPS and CHIPS[m.group(1)].platform != "tpu":
    if int(m.group(2)) in _GPU_COUNTS:  # one GPU host: h100-1 .. h100-8
      return Slice(text, CHIPS[m.group(1)], (int(m.group(2)),))
  elif m and m.group(1) in CHIPS:
    chip = CHIPS[m.group(1)]
    count = int(m.group(2))
    table = _SHAPES_2D if chip.dims == 2 else _SHAPES_3D
    if count % chip.cores_per_chip == 0 and count // chip.cores_per_chip in table:
      return Slice(text, chip, table[count // chip.cores_per_chip])
  m = re.fullmatch(r"(v\d+[a-z]?):(\d+(?:x\d+)+)", text)
  if m and m.group(1) in CHIPS:
    chip = CHIPS[m.group(1)]
    shape = tuple(int(d) for d in m.group(2).split("x"))
    if len(shape) == chip.dims and all(d > 0 for d in shape):
      return Slice(text, chip, shape)
  raise ValueError(
      f"--topology={name!r} is not a known single TPU slice; known: {', '.join(known_names())} "
      f"(or the CHIP:AxB[xC] form, e.g. v5e:4x4, v4:2x2x4; h100-N is one GPU host)"
  )

"""Compiling a program for a slice's devices and reading the result: per-chip HBM against what
the compiler offers, fit, XLA's FLOPs and bytes, the roofline; the compiler's out-of-memory
refusal parsed; the report table. JAX loads on first use (bench/aot_table.py reads results with
`out_of_memory` without it)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import tempfile
import time

from psvae_jax import cli
from psvae_jax import topologies
from psvae_jax.aot import hlo

GIB = 2.0**30


class BadInput(ValueError):
  """One line for the user; exit status 1."""


@dataclasses.dataclass
class Program:
  """One program to compile: a jitted function and its abstract (sharded) arguments."""

  name: str
  jitted: object  # jax.jit(...) (or runtime.no_grad_jit) result: has .lower(*args)
  args: tuple
  kwargs: dict = dataclasses.field(default_factory=dict)
  model_flops: float = 0.0  # analytic useful FLOPs of one call over all chips (0: unknown)
  batch: int = 0
  plan: dict = dataclasses.field(default_factory=dict)  # what the sharding rules say (GiB)


def usable_hbm_gib(devices) -> float | None:
  """The HBM per chip the compiler lets a program use (GiB), read off its refusal of a 1 TiB
  program (v5e 15.75, v4 30.75, v5p 95.74, v6e 31.25 with libtpu 0.0.42); None if it accepts it
  (a compiler that does not check memory: XLA:GPU without a GPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  one = jax.sharding.SingleDeviceSharding(devices[0])
  probe = jax.jit(lambda: jnp.zeros((2**40,), jnp.int8), out_shardings=one)
  try:
    probe.lower().compile()
  except Exception as e:  # pylint: disable=broad-except
    oom = out_of_memory(cli.one_line(e))
    return oom["available_gib"] if oom else None
  return None


# XLA:GPU without a GPU cannot autotune, and its Triton GEMM tiling then failed on T5-XXL's
# projections ("Couldn't find output tile sizes", dit.py:paper on h100-8): cuBLAS GEMMs instead.
GPU_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def compile_program(
    p: Program,
    chip: topologies.Chip,
    num_chips: int,
    hbm_gib: float,
    compiler_options=None,
    hlo_dir: str = "",
) -> dict:
  """Lowers and compiles one program; its row (per-chip HBM, fit, FLOPs, roofline). With
  `hlo_dir`, writes the compiled HLO there and adds the HBM bytes by model scope to the row."""
  t0 = time.time()
  lowered = p.jitted.lower(*p.args, **p.kwargs)
  t1 = time.time()
  compiled = lowered.compile(compiler_options or None)
  t2 = time.time()
  if hlo_dir:
    os.makedirs(hlo_dir, exist_ok=True)
    text = compiled.as_text()
    with open(os.path.join(hlo_dir, f"{p.name}.hlo.txt"), "w") as f:
      f.write(text)
    by_scope = hlo.bytes_by_scope(text)
    p.plan["hbm_bytes_by_scope"] = {k: v for k, v in list(by_scope.items())[:25]}
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  row = {"program": p.name, "batch": p.batch, "lower_s": t1 - t0, "compile_s": t2 - t1, **p.plan}
  keys = ("argument", "output", "temp", "generated_code", "alias")
  for key in keys:
    row[f"{key}_gib"] = float(getattr(mem, f"{key}_size_in_bytes", 0) or 0) / GIB
  # Donated arguments alias outputs: their bytes count once (XLA's alias_size_in_bytes).
  row["total_gib"] = (
      row["argument_gib"]
      + row["output_gib"]
      - row["alias_gib"]
      + row["temp_gib"]
      + row["generated_code_gib"]
  )
  row["hbm_gib"] = hbm_gib
  row["headroom_gib"] = row["hbm_gib"] - row["total_gib"]
  row["fits"] = row["headroom_gib"] >= 0
  flops = float(cost.get("flops", 0.0))
  nbytes = float(cost.get("bytes accessed", 0.0))
  row["flops_per_chip"], row["bytes_per_chip"] = flops, nbytes
  if not cost:  # XLA:GPU compiled without a GPU gives no cost analysis: the analytic FLOPs
    flops = p.model_flops / num_chips  # (when known) bound the step from below instead
    row["cost_analysis"] = "none (deviceless GPU compile)"
  t_flops, t_mem = flops / chip.peak_bf16_flops, nbytes / chip.hbm_bandwidth
  row["roofline_s"] = max(t_flops, t_mem)
  row["bound"] = ("compute" if t_flops >= t_mem else "memory") if row["roofline_s"] else "-"
  useful = p.model_flops / num_chips if p.model_flops else flops
  row["model_flops_source"] = "analytic" if p.model_flops else "xla"
  ok = cost and flops and row["roofline_s"]
  row["mfu_ceiling"] = (useful / chip.peak_bf16_flops) / row["roofline_s"] if ok else 0.0
  if not cost:
    row["bound"] = "flops only" if flops else "-"
  return row


_OOM = re.compile(
    r"RESOURCE_EXHAUSTED: .*?memory required for ([\w ]+?) \(([\d.]+)([KMGT])\) exceeds "
    r"available HBM \(([\d.]+)([KMGT])\)"
)


def out_of_memory(message: str) -> dict | None:
  """The TPU compiler refuses a program that cannot fit (RESOURCE_EXHAUSTED) instead of
  reporting its memory: what it needed (GiB) and what the chip offers it, or None."""
  m = _OOM.search(message)
  if not m:
    return None
  scale = {"K": 2.0**-20, "M": 2.0**-10, "G": 1.0, "T": 2.0**10}
  return {
      "oom": True,
      "oom_what": m.group(1),
      "required_gib": float(m.group(2)) * scale[m.group(3)],
      "available_gib": float(m.group(4)) * scale[m.group(5)],
      "error": message[:2000],
  }


def needs(r: dict) -> str:
  """What a row that does not fit needs, in words."""
  if r.get("oom"):
    return (
        f"{r['oom_what']} alone need {r['required_gib']:.1f} GiB per chip "
        f"(the compiler offers {r['available_gib']:.2f})"
    )
  if "total_gib" in r:
    return f"{r['total_gib']:.1f} GiB per chip"
  return r.get("error", "")


def format_table(rows: list[dict], title: str) -> str:
  head = (
      f"{'program':<8}{'batch':>6}{'args':>7}{'out':>7}{'temp':>7}{'code':>6}{'total':>8}"
      f"{'HBM':>6}  {'fits (headroom)':<18}{'compile':>8}{'TFLOP':>8}{'GB acc':>8}"
      f"{'roofline':>10}{'bound':>8}{'MFU ceil':>9}"
  )
  lines = [title, "per chip, GiB" + " " * 60 + "per chip, per call", head, "-" * len(head)]
  for r in rows:
    if r.get("oom"):
      lines.append(f"{r['program']:<8}{r['batch']:>6}  DOES NOT FIT: {needs(r)}")
      continue
    if "error" in r:
      lines.append(f"{r['program']:<8}{r.get('batch', 0):>6}  compile error: {r['error'][:300]}")
      continue
    fit = f"{'fits' if r['fits'] else 'DOES NOT FIT'} ({r['headroom_gib']:+.1f})"
    lines.append(
        f"{r['program']:<8}{r['batch']:>6}{r['argument_gib']:>7.2f}{r['output_gib']:>7.2f}"
        f"{r['temp_gib']:>7.2f}{r['generated_code_gib']:>6.2f}{r['total_gib']:>8.2f}"
        f"{r['hbm_gib']:>6.1f}  {fit:<18}{r['compile_s']:>7.0f}s"
        f"{r['flops_per_chip'] / 1e12:>8.2f}{r['bytes_per_chip'] / 1e9:>8.1f}"
        f"{r['roofline_s'] * 1e3:>8.1f}ms{r['bound']:>8}{r['mfu_ceiling'] * 100:>8.0f}%"
    )
  return "\n".join(lines)


@contextlib.contextmanager
def stderr_to(path: str):
  """Process-level stderr (file descriptor 2: libtpu's C++ logging too) into `path`."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(path, "w") as f:
    os.dup2(f.fileno(), 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def topology_devices(s: topologies.Slice):
  """The slice's compile-only devices (libtpu; no TPU needed). libtpu's start-up warnings on a
  machine without TPUs (host bounds, worker hostnames) are harmless here: they are kept from the
  screen and shown only if the topology cannot be made."""
  from jax.experimental import topologies as jax_topologies  # pylint: disable=g-import-not-at-top

  if s.chip.platform == "cuda":
    kwargs = dict(topology_name="", platform="cuda", target_config=gpu_target_config(s))
    kwargs["topology"] = s.gpu_topology
  else:
    kwargs = dict(
        topology_name=s.topology_name,
        platform="tpu",
        chip_config_name=s.chip_config_name,
        chips_per_host_bounds=s.chips_per_host_bounds,
        num_slices=1,
    )
  with tempfile.TemporaryDirectory() as tmp:
    log = os.path.join(tmp, "compiler.log")
    try:
      with stderr_to(log):
        desc = jax_topologies.get_topology_desc(**kwargs)
    except Exception as e:  # pylint: disable=broad-except
      with open(log) as f:
        sys.stderr.write(f.read())
      what = "the CUDA plugin" if s.chip.platform == "cuda" else "libtpu"
      raise BadInput(f"{what} could not make topology {s.cloud_name}: {cli.one_line(e)}")
  return list(desc.devices)


def gpu_target_config(s: topologies.Slice) -> str:
  """The GpuTargetConfigProto text XLA's GPU compiler compiles against without a GPU."""
  path = os.path.join(os.path.dirname(__file__), "gpu_targets", f"{s.chip.libtpu_name}.txtpb")
  with open(path) as f:
    return f.read()

"""Compiles a config's production programs for a TPU slice on any machine: HBM fit and a roofline.

  launch/aot.sh --config=configs/psvae.py:dinov2_b --topology=v5e-16
  launch/aot.sh --config=configs/dit.py:paper --topology=v5p-32 --json=runs/aot/paper.json
  launch/aot.sh --config=configs/dit.py:XL_text --topology=v5e-64 --search
  python -m psvae_jax.aot ...   # the same, in a venv with jax[tpu] (launch/aot.sh makes one)

The TPU compiler (libtpu) compiles ahead of time for a topology it is not running on ("deviceless"):
this module builds the programs a run compiles, exactly as it compiles them, over abstract sharded
inputs on the topology's devices, and compiles each:

  train   the train step as the loop jits it (loop.jit_train_step: the task's loss, the real
          optimizer, EMA, donation; the config's mesh, remat, dtype and global batch)
  eval    stages 1-2: the reconstruction eval batch (eval.batch_size); stage 3: none besides:
  sample  stage 3: the sampler's one-jit lax.scan (the config's objective, guidance, eval batch:
          eval.num_images prompts padded to the mesh, as DiTTask.evaluate samples them)
  decode  stage 3: the frozen PS-VAE's decoder on those latents

and prints one table: per-chip HBM (arguments, outputs, temporaries, generated code, total) against
the chip's, fits / does not fit with the headroom, compile seconds, XLA's FLOPs and bytes accessed
per chip, the roofline lower bound of the step time (max of FLOPs / peak bf16 FLOP/s and bytes /
HBM bandwidth: psvae_jax/topologies.py has the figures and their sources) and the MFU ceiling it
implies (the DiT's analytic model FLOPs where known, else XLA's own count). `--json=PATH` writes
the same rows. `--search` compiles the train step over a small grid (fsdp, remat, per-chip batch)
and prints the settings that fit, fastest roofline per example first, as --config flags.

Only shapes matter: paper-size configs need no weight files here (weights=random is implied). A
stage-3 config builds its frozen PS-VAE from `--config.autoencoder=DIR` when DIR holds a
config.json, else from `--autoencoder_config` (default configs/psvae.py:dinov2_b for the DiT
sizes, :tiny for the tiny ones); its text encoder from `--config.text_encoder=DIR`'s config.json,
else T5-v1.1-XXL's (the paper-size default).

Exit status: 0 when every program fits, 2 when one does not (named on stderr), 1 on bad input (one
line). Single slices only.
"""

from __future__ import annotations

import os
import sys

# Before JAX loads: compile-only, no TPU on this machine (libtpu asks the metadata server
# otherwise), no libtpu start-up chatter (host bounds, worker hostnames), and no XLA:CPU
# flags of psvae_jax's (psvae_jax/__init__.py) in a process that compiles for TPU.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: no chip to share
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "3")
os.environ.setdefault("TPU_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from configs import common  # noqa: E402
from psvae_jax import cli  # noqa: E402
from psvae_jax import topologies  # noqa: E402
from psvae_jax.aot import compiler  # noqa: E402  (JAX loads on first use)
from psvae_jax.aot.compiler import GIB, BadInput  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU slice: v5e-16, v6e-8 (chips), v4-32, v5p-8 (TensorCores), or v5e:4x4."
)
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
_SEARCH = flags.DEFINE_boolean(
    "search", False, "Compile the train step over a grid (fsdp, remat, batch); print what fits."
)
_PROGRAMS = flags.DEFINE_list(
    "programs", [], "Compile only these (train, eval, sample, decode); default: all of the stage's."
)
_AE_CONFIG = flags.DEFINE_string(
    "autoencoder_config",
    "",
    "Stage 3 without an autoencoder workdir: the PS-VAE config (path:variant) whose shapes to use "
    "(default configs/psvae.py:dinov2_b; :tiny for tiny DiTs).",
)
HLO_DIR = flags.DEFINE_string(
    "hlo_dir", None, "Write each compiled program's HLO here, and its HBM bytes by model scope."
)
flags.mark_flags_as_required(["config", "topology"])


def run(config, slice_: topologies.Slice, wanted=()) -> list[dict]:
  """Compiles the config's programs (or those `wanted`) for the slice; one row each."""
  import jax  # pylint: disable=g-import-not-at-top

  from psvae_jax.aot import programs  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_threefry_partitionable", True)  # as runtime.initialize sets it for runs
  devices = compiler.topology_devices(slice_)
  probed = compiler.usable_hbm_gib(devices) if slice_.chip.platform == "tpu" else None
  hbm_gib = probed or slice_.chip.hbm_bytes / GIB
  programs.prepare_config(config)
  built = programs.build_programs(config, devices, wanted, _AE_CONFIG.value)
  options = compiler.GPU_OPTIONS if slice_.chip.platform == "cuda" else None
  rows = []
  for p in built:
    t0 = time.time()
    try:
      row = compiler.compile_program(
          p, slice_.chip, len(devices), hbm_gib, options, HLO_DIR.value or ""
      )
    except Exception as e:  # pylint: disable=broad-except  (a compile error is a result here)
      if isinstance(e, BadInput):
        raise
      row = {"program": p.name, "batch": p.batch, "compile_s": time.time() - t0, **p.plan}
      row.update(compiler.out_of_memory(cli.one_line(e)) or {"error": cli.one_line(e)[:2000]})
      row.update(fits=False, hbm_gib=hbm_gib)
    row.update(topology=slice_.cloud_name, chips=len(devices), mesh=_mesh_text(config))
    rows.append(row)
    print(f"[aot] {p.name}: compiled in {row.get('compile_s', 0):.0f} s", file=sys.stderr)
  return rows


def search_grid(config, num_chips: int) -> list[dict]:
  """The settings `--search` tries, as {dotted config key: value}: fsdp over 1, 8 and all chips;
  for the DiT, block remat off / dots_saveable / full; the config's global batch and its half."""
  fsdps = sorted({1, num_chips} | ({8} if num_chips > 8 else set()))
  remats = [{}]
  if config.stage == "dit":
    remats = [
        {"model.remat": False},
        {"model.remat": True, "model.remat_policy": "dots_saveable"},
        {"model.remat": True, "model.remat_policy": "full"},
    ]
  b = int(config.batch_size)
  batches = [x for x in (b, b // 2) if x >= num_chips and x % num_chips == 0]
  grid = []
  for batch in batches:
    for fsdp in fsdps:
      for remat in remats:
        data = num_chips // fsdp
        grid.append({"mesh.data": data, "mesh.fsdp": fsdp, **remat, "batch_size": batch})
  return grid


def _set(config, key: str, value) -> None:
  *path, leaf = key.split(".")
  node = config
  for part in path:
    node = node[part]
  node[leaf] = value


def search(config, slice_: topologies.Slice) -> list[dict]:
  """Compiles the train step at each `search_grid` setting; rows with their `settings`."""
  import copy  # pylint: disable=g-import-not-at-top

  rows = []
  grid = search_grid(config, slice_.num_chips)
  for i, settings in enumerate(grid):
    trial = copy.deepcopy(config)
    with trial.unlocked():
      for key, value in settings.items():
        _set(trial, key, value)
    print(f"[aot] search {i + 1}/{len(grid)}: {_flags(settings)}", file=sys.stderr, flush=True)
    row = run(trial, slice_, ("train",))[0]
    row["settings"] = settings
    rows.append(row)
  return rows


def _flags(settings: dict) -> str:
  text = lambda v: str(v).lower() if isinstance(v, bool) else str(v)
  return " ".join(f"--config.{k}={text(v)}" for k, v in settings.items())


def format_search(rows: list[dict]) -> str:
  # Settings of different batch sizes compare by the roofline time per example.
  fit = sorted((r for r in rows if r.get("fits")), key=lambda r: r["roofline_s"] / r["batch"])
  lines = [f"{len(fit)} of {len(rows)} settings fit (fastest roofline per example first):"]
  for r in fit:
    lines.append(
        f"  {r['roofline_s'] * 1e3 / r['batch']:8.3f} ms/example ({r['roofline_s'] * 1e3:.1f} ms "
        f"per step)  {r['total_gib']:6.2f} GiB/chip  MFU ceiling {r['mfu_ceiling'] * 100:3.0f}%   "
        f"{_flags(r['settings'])}"
    )
  for r in rows:
    if not r.get("fits"):
      lines.append(f"  does not fit ({compiler.needs(r)[:120]}): {_flags(r['settings'])}")
  return "\n".join(lines)


def _mesh_text(config) -> str:
  return f"data={config.mesh.data} fsdp={config.mesh.fsdp}"


def main(argv):
  del argv
  try:
    slice_ = topologies.parse(_TOPOLOGY.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  config = _CONFIG.value
  if slice_.chip.platform == "tpu" and not _installed("libtpu"):
    sys.exit("error: no TPU compiler (libtpu) in this environment: run through launch/aot.sh")
  if slice_.chip.platform == "cuda" and not _installed("jax_plugins.xla_cuda12"):
    sys.exit("error: no CUDA compiler plugin in this environment: run through launch/aot.sh")
  cli.quiet_libraries()
  # "No CUDA driver" lines of the CUDA plugin and TensorFlow (imported by the train loop's
  # writers) at import, on a machine without GPUs: kept from the screen.
  with tempfile.TemporaryDirectory() as tmp:
    with compiler.stderr_to(os.path.join(tmp, "import.log")):
      # pylint: disable=g-import-not-at-top,unused-import,redefined-outer-name
      import jax  # noqa: F401
      from psvae_jax.aot import programs  # noqa: F401  (the train loop, the tasks, the models)
  try:
    if _SEARCH.value:
      rows = search(config, slice_)
    else:
      rows = run(config, slice_, tuple(_PROGRAMS.value))
  except BadInput as e:
    sys.exit(f"error: {e}")
  if _SEARCH.value:
    print(
        compiler.format_table(
            rows, f"search: train step of {_config_name()} on {slice_.cloud_name}"
        )
    )
    print(format_search(rows))
    if _JSON.value:
      with open(_JSON.value, "w") as f:
        json.dump({"config": _config_name(), "search": rows}, f, indent=1)
    sys.exit(0 if any(r.get("fits") for r in rows) else 2)
  title = (
      f"{_CONFIG.value.stage} {_config_name()} on {slice_.cloud_name} ({slice_.topology_name}, "
      f"{slice_.num_chips} chips, {rows[0]['hbm_gib']:.2f} GiB usable each), mesh "
      f"{_mesh_text(config)}, global batch {config.batch_size}, {config.dtype}"
  )
  trained = rows[0].get("trained_params")
  if trained:
    title += f"; {trained / 1e6:.1f}M trained parameters"
    if common.uses_fusion_generator(config) and trained > 1e8:
      title += " (the PS-VAE paper's generator: 653M)"
  print(compiler.format_table(rows, title))
  if _JSON.value:
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, "w") as f:
      json.dump({"title": title, "config": _config_name(), "rows": rows}, f, indent=1)
  bad = [r for r in rows if not r["fits"]]
  for r in bad:
    if r.get("oom") or "total_gib" in r:
      print(
          f"error: {r['program']} does not fit on {slice_.cloud_name}: {compiler.needs(r)} "
          f"(of {r['hbm_gib']:.2f} GiB; --search lists settings that fit)",
          file=sys.stderr,
      )
    else:
      print(f"error: {r['program']} did not compile: {r['error'][:500]}", file=sys.stderr)
  sys.exit(2 if bad else 0)


def _installed(module: str) -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top

  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # its parent package is missing
    return False


def _config_name() -> str:
  for arg in sys.argv:
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return ""


if __name__ == "__main__":
  cli.quiet_by_default()  # the table is the output; INFO lines with -v 1
  app.run(main, flags_parser=cli.flags_parser("aot"))

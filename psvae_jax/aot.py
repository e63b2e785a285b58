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

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from psvae_jax import cli  # noqa: E402
from psvae_jax import topologies  # noqa: E402

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

GIB = 2.0**30
T5_XXL = dict(  # google/t5-v1_1-xxl's config.json (the encoder's shapes)
    model_type="t5",
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
)


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


def sharding_plan_bytes(tree) -> int:
  """Bytes per chip of abstract sharded arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  leaves = jax.tree.leaves(tree)
  return sum(
      int(np.prod(a.sharding.shard_shape(a.shape), dtype=np.int64)) * a.dtype.itemsize
      for a in leaves
  )


def sharding_plan(tree) -> dict:
  """For (state, constants): bytes per chip under their shardings (bench/memory_plan.py's
  state + constants figure; the state alone too: jit drops constants a step does not read, e.g.
  the frozen PS-VAE of a step on latent-cache batches), their unsharded total, and the largest
  array left whole on every chip (a large one is a sharding rule to fix)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  total = per_chip = 0
  whole, whole_name = 0, ""
  for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]:
    nbytes = int(np.prod(a.shape, dtype=np.int64)) * a.dtype.itemsize
    shard = int(np.prod(a.sharding.shard_shape(a.shape), dtype=np.int64)) * a.dtype.itemsize
    total, per_chip = total + nbytes, per_chip + shard
    if shard == nbytes and nbytes > whole:
      whole, whole_name = nbytes, jax.tree_util.keystr(path)
  return {
      "state_gib": sharding_plan_bytes(tree[0]) / GIB,
      "state_consts_gib": per_chip / GIB,
      "state_consts_total_gib": total / GIB,
      "largest_whole_mib": whole / 2**20,
      "largest_whole": whole_name,
  }


# ---- the programs of a config ------------------------------------------------------------
def prepare_config(config) -> None:
  """Shapes only: random weights where a run would read files (no file is opened)."""
  if config.stage in ("svae", "psvae"):
    if not config.model.encoder.weights:
      config.model.encoder.weights = "random"
    if config.loss.lpips > 0:
      config.lpips.vgg = config.lpips.vgg or "random"
      config.lpips.heads = config.lpips.heads or "random"
    config.init_from = ""  # stage 2's model fields are its own (no stage-1 workdir read)


def _batch(shapes: dict, mesh) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from psvae_jax import parallel  # pylint: disable=g-import-not-at-top

  return {
      k: jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharding(mesh, len(shape)))
      for k, (shape, dtype) in shapes.items()
  }


def _stage3_pieces(config, mesh):
  """(autoencoder with abstract params and identity statistics, (text module, abstract params,
  None)) of a stage-3 config: shapes from config.json files when given, else the defaults."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from configs import psvae as psvae_configs  # pylint: disable=g-import-not-at-top
  from psvae_jax import autoencoders  # pylint: disable=g-import-not-at-top
  from psvae_jax import builders  # pylint: disable=g-import-not-at-top
  from psvae_jax import latent_stats  # pylint: disable=g-import-not-at-top
  from psvae_jax.weights import clip  # pylint: disable=g-import-not-at-top
  from psvae_jax.weights import t5  # pylint: disable=g-import-not-at-top

  ae_dir = config.autoencoder
  if ae_dir and os.path.isfile(os.path.join(ae_dir, "config.json")):
    ae_config = autoencoders.read_config(ae_dir)
  else:
    spec = _AE_CONFIG.value or (
        "configs/psvae.py:tiny" if config.model.size == "tiny" else "configs/psvae.py:dinov2_b"
    )
    path, _, variant = spec.partition(":")
    if os.path.basename(path) != "psvae.py":
      raise BadInput(f"--autoencoder_config={spec!r}: expected configs/psvae.py:VARIANT")
    try:
      ae_config = psvae_configs.get_config(variant or None)
    except ValueError as e:
      raise BadInput(f"--autoencoder_config: {e}") from None
    prepare_config(ae_config)
  model = builders.build_psvae(ae_config.model, dtype=jnp.dtype(ae_config.dtype))
  s = ae_config.data.image_size
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, s, s, 3)))["params"]
  c = ae_config.model.latent_channels
  zeros, ones = np.zeros(c, np.float32), np.ones(c, np.float32)
  stats = latent_stats.LatentStats(mu_mean=zeros, mu_std=ones, sample_mean=zeros, sample_std=ones)
  ae = autoencoders.Autoencoder(model, params, ae_config, stats)
  if config.model.cond_type != "text":
    return ae, (None, None, None)
  text_dir = config.text_encoder
  if text_dir and os.path.isfile(os.path.join(text_dir, "config.json")):
    hf = clip.read_json(text_dir)
  elif config.model.size == "tiny":
    raise BadInput(
        "a tiny text DiT: set --config.text_encoder=HF_DIR (its config.json is read for the "
        "shapes; no weights)"
    )
  else:
    hf = T5_XXL
  dtype, param_dtype = jnp.dtype(config.dtype), builders.text_param_dtype(config)
  if hf.get("model_type", "").startswith("t5"):
    module = t5.t5_module_from_hf_config(hf, dtype=dtype)
  else:
    module = clip.clip_text_module_from_hf_config(hf, dtype=dtype)
  ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  text_params = jax.eval_shape(module.init, jax.random.key(0), ids, ids)["params"]
  text_params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, param_dtype), text_params)
  return ae, (module, text_params, None)


def build_programs(config, devices, wanted=()) -> list[Program]:
  """The config's production programs over `devices` (abstract inputs; nothing allocated)."""
  import functools  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from psvae_jax import parallel  # pylint: disable=g-import-not-at-top
  from psvae_jax.models import dit as dit_lib  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import optim  # pylint: disable=g-import-not-at-top
  from psvae_jax.train.tasks import autoencoder as ae_task  # pylint: disable=g-import-not-at-top
  from psvae_jax.train.tasks import dit as dit_task  # pylint: disable=g-import-not-at-top

  try:
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)
    parallel.check_batch_divides_mesh(config.batch_size, mesh)
  except ValueError as e:
    raise BadInput(f"--config.mesh / --config.batch_size: {cli.one_line(e)}") from None
  if config.stage in ("svae", "psvae"):
    task = ae_task.AutoencoderTask(config)
  elif config.stage == "dit":
    ae, text = _stage3_pieces(config, mesh)
    config.autoencoder = config.autoencoder or "(shapes only)"
    task = dit_task.DiTTask(config, mesh, ae, text)
  else:
    raise BadInput(f"unknown stage {config.stage!r}")
  tx = optim.make_optimizer(
      config.optim,
      config.num_train_steps,
      functools.partial(optim.label_params, groups=task.param_groups),
  )
  init = functools.partial(loop.create_train_state, task=task, tx=tx)
  state = jax.eval_shape(init, jax.random.key(0))
  shardings = parallel.param_shardings(state, mesh, min_size=config.shard_min_size)
  consts = jax.eval_shape(task.constants)
  consts_sh = parallel.param_shardings(consts, mesh, min_size=config.shard_min_size)
  consts = parallel.with_shardings(consts, consts_sh)
  state = parallel.with_shardings(state, shardings)
  b = int(config.batch_size)
  programs = []
  f32 = jnp.float32
  if config.stage in ("svae", "psvae"):
    s = int(config.data.image_size)
    shapes = {"image": ((b, s, s, 3), f32)}
    enc = int(config.data.get("encoder_image_size", 0) or 0)
    if enc:
      shapes["image_enc"] = ((b, enc, enc, 3), f32)
    step = loop.jit_train_step(task, tx, config, shardings, mesh)
    plan = sharding_plan((state, consts))
    programs.append(
        Program("train", step, (state, _batch(shapes, mesh), consts), batch=b, plan=plan)
    )
    eb = _padded(int(config.eval.batch_size), mesh.size)
    x = _batch({"x": ((eb, s, s, 3), f32)}, mesh)["x"]
    programs.append(
        Program("eval", task._eval_batch, (state.ema_params, state.frozen, consts, x), batch=eb)
    )
  else:
    h, w, c = task.ae.latent_shape
    shapes = {"latent": ((b, h, w, c), f32)}
    cond = _condition_shapes(config, b)
    shapes.update(cond)
    step = loop.jit_train_step(task, tx, config, shardings, mesh)
    flops = 0.0
    if config.model.size != "tiny":
      kw = dit_lib.dit_config(config.model.size)
      depth = config.model.get("depth", 0) or kw["depth"]
      tokens = (h // config.model.patch_size) * (w // config.model.patch_size)
      fwd = dit_lib.analytic_flops(kw["width"], depth, tokens, config.model.patch_size, c)
      flops = 3.0 * fwd * b  # forward + backward (2x) per image
    plan = sharding_plan((state, consts))
    train_args = (state, _batch(shapes, mesh), consts)
    programs.append(Program("train", step, train_args, model_flops=flops, batch=b, plan=plan))
    n = _padded(int(config.eval.num_images), mesh.size)
    gen = task.gen
    sample_batch = _batch(_condition_shapes(config, n), mesh)
    z = _batch({"z": ((n, h, w, c), f32)}, mesh)["z"]
    scalar = lambda dtype=f32: jax.ShapeDtypeStruct((), dtype)
    args = (
        state.ema_params,
        consts,
        sample_batch,
        z,
        jax.ShapeDtypeStruct((gen.timesteps(1).shape[0],), jnp.int32),
        scalar(),
        scalar(),
        jax.eval_shape(lambda: jax.random.key(0)),
        scalar(jnp.int32),
        None,
        scalar(),
        jax.ShapeDtypeStruct((2,), f32),
        scalar(jnp.int32),
        scalar(),
        scalar(),
    )
    programs.append(Program("sample", gen.sample_latents, args, {"use_inpaint": False}, batch=n))
    programs.append(Program("decode", gen._decode_jit, (consts, z), batch=n))
  if wanted:
    unknown = set(wanted) - {p.name for p in programs}
    if unknown:
      raise BadInput(
          f"--programs: {sorted(unknown)} not among this stage's " f"{[p.name for p in programs]}"
      )
    programs = [p for p in programs if p.name in wanted]
  return programs


def _padded(n: int, multiple: int) -> int:
  return n + (-n) % multiple


def _condition_shapes(config, b: int) -> dict:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from configs import common  # pylint: disable=g-import-not-at-top

  shapes = {}
  if config.model.cond_type == "class":
    shapes["label"] = ((b,), jnp.int32)
  else:
    length = int(config.data.max_length)
    shapes["input_ids"] = ((b, length), jnp.int32)
    shapes["attention_mask"] = ((b, length), jnp.int32)
  if common.edits_by_instruction(config):
    raise BadInput("instruction-editing configs (model.source_condition) are not compiled here yet")
  return shapes


# ---- compiling and reporting -------------------------------------------------------------
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
    p: Program, chip: topologies.Chip, num_chips: int, hbm_gib: float, compiler_options=None
) -> dict:
  """Lowers and compiles one program; its row (per-chip HBM, fit, FLOPs, roofline)."""
  t0 = time.time()
  lowered = p.jitted.lower(*p.args, **p.kwargs)
  t1 = time.time()
  compiled = lowered.compile(compiler_options or None)
  t2 = time.time()
  if HLO_DIR.value:
    os.makedirs(HLO_DIR.value, exist_ok=True)
    text = compiled.as_text()
    with open(os.path.join(HLO_DIR.value, f"{p.name}.hlo.txt"), "w") as f:
      f.write(text)
    by_scope = hlo_bytes_by_scope(text)
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


def _needs(r: dict) -> str:
  """What a row that does not fit needs, in words."""
  if r.get("oom"):
    return (
        f"{r['oom_what']} alone need {r['required_gib']:.1f} GiB per chip "
        f"(the compiler offers {r['available_gib']:.2f})"
    )
  if "total_gib" in r:
    return f"{r['total_gib']:.1f} GiB per chip"
  return r.get("error", "")


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4}
_DTYPE_BYTES.update({"s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8})
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) (\w[\w-]*)\((.*)$")


def _bytes_of(type_text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(type_text):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _DTYPE_BYTES.get(dtype, 4)
  return total


def _scope(op_name: str, depth: int) -> str:
  """ "jit(train_step)/jvp(DiT)/blocks_3/mlp/fc1/dot_general" -> "DiT/blocks_3" (depth 2): the
  model and its top submodules, with JAX's transformation wrappers (jvp, transpose) dropped."""
  parts = []
  for part in op_name.split("/")[1:]:
    while "(" in part and part.endswith(")"):
      part = part[part.index("(") + 1 : -1]
    parts.append(part)
  return "/".join(parts[:depth]) or "(other)"


def hlo_bytes_by_scope(hlo_text: str, depth: int = 2) -> dict[str, float]:
  """Bytes each top-level op of the compiled program's entry computation reads and writes (its
  operands' and result's sizes, as XLA's cost analysis counts a fusion), summed by the model
  scope in its metadata: where a memory-bound step's HBM traffic goes."""
  sizes: dict[str, int] = {}
  out: dict[str, float] = {}
  in_entry = False
  for line in hlo_text.splitlines():
    if line.startswith("ENTRY "):
      in_entry = True
      continue
    if in_entry and line.startswith("}"):
      break
    if not in_entry:
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, type_text, opcode, rest = m.groups()
    sizes[name] = _bytes_of(type_text)
    if opcode in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"):
      continue
    args = rest.split("), ", 1)[0]
    operands = sum(sizes.get(a.strip().lstrip("%"), 0) for a in args.split(","))
    op_name = re.search(r'op_name="([^"]*)"', rest)
    key = _scope(op_name.group(1), depth) if op_name else f"({opcode})"
    out[key] = out.get(key, 0.0) + sizes[name] + operands
  return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def format_table(rows: list[dict], title: str) -> str:
  head = (
      f"{'program':<8}{'batch':>6}{'args':>7}{'out':>7}{'temp':>7}{'code':>6}{'total':>8}"
      f"{'HBM':>6}  {'fits (headroom)':<18}{'compile':>8}{'TFLOP':>8}{'GB acc':>8}"
      f"{'roofline':>10}{'bound':>8}{'MFU ceil':>9}"
  )
  lines = [title, "per chip, GiB" + " " * 60 + "per chip, per call", head, "-" * len(head)]
  for r in rows:
    if r.get("oom"):
      lines.append(f"{r['program']:<8}{r['batch']:>6}  DOES NOT FIT: {_needs(r)}")
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
def _stderr_to(path: str):
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
      with _stderr_to(log):
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


def run(config, slice_: topologies.Slice, wanted=()) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_threefry_partitionable", True)  # as runtime.initialize sets it for runs
  devices = topology_devices(slice_)
  probed = usable_hbm_gib(devices) if slice_.chip.platform == "tpu" else None
  hbm_gib = probed or slice_.chip.hbm_bytes / GIB
  prepare_config(config)
  programs = build_programs(config, devices, wanted)
  rows = []
  for p in programs:
    t0 = time.time()
    try:
      options = GPU_OPTIONS if slice_.chip.platform == "cuda" else None
      row = compile_program(p, slice_.chip, len(devices), hbm_gib, options)
    except Exception as e:  # pylint: disable=broad-except  (a compile error is a result here)
      if isinstance(e, BadInput):
        raise
      row = {"program": p.name, "batch": p.batch, "compile_s": time.time() - t0, **p.plan}
      row.update(out_of_memory(cli.one_line(e)) or {"error": cli.one_line(e)[:2000]})
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
      lines.append(f"  does not fit ({_needs(r)[:120]}): {_flags(r['settings'])}")
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
    with _stderr_to(os.path.join(tmp, "import.log")):
      # pylint: disable=g-import-not-at-top,unused-import,redefined-outer-name
      import jax  # noqa: F401
      from psvae_jax.train import loop  # noqa: F401
      from psvae_jax.train.tasks import dit  # noqa: F401
  try:
    if _SEARCH.value:
      rows = search(config, slice_)
    else:
      rows = run(config, slice_, tuple(_PROGRAMS.value))
  except BadInput as e:
    sys.exit(f"error: {e}")
  if _SEARCH.value:
    print(format_table(rows, f"search: train step of {_config_name()} on {slice_.cloud_name}"))
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
  print(format_table(rows, title))
  if _JSON.value:
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, "w") as f:
      json.dump({"title": title, "config": _config_name(), "rows": rows}, f, indent=1)
  bad = [r for r in rows if not r["fits"]]
  for r in bad:
    if r.get("oom") or "total_gib" in r:
      print(
          f"error: {r['program']} does not fit on {slice_.cloud_name}: {_needs(r)} "
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

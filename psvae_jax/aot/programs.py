"""The production programs of a config over a slice's devices, with abstract sharded inputs
(nothing allocated, no weight file read): the train step as the loop jits it, the eval batch, and
for stage 3 the sampler's scan and the decoder. psvae_jax.aot compiles them."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from configs import psvae as psvae_configs
from psvae_jax import frozen_psvae
from psvae_jax import builders
from psvae_jax import cli
from psvae_jax import latent_stats
from psvae_jax import parallel
from psvae_jax import workdir as workdir_lib
from psvae_jax.aot.compiler import GIB, BadInput, Program
from psvae_jax.diffusion import samplers
from psvae_jax.models import dit as dit_lib
from psvae_jax.train import loop
from psvae_jax.train.tasks import autoencoder as ae_task
from psvae_jax.train.tasks import dit as dit_task
from psvae_jax.weights import clip
from psvae_jax.weights import common as weights_common
from psvae_jax.weights import t5

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


def sharding_plan(state, consts) -> dict:
  """What the sharding rules put on each chip, in GiB: the state, the state and the constants
  (bench/memory_plan.py's figure; jit drops constants a step does not read, e.g. the frozen PS-VAE
  of a step on latent-cache batches), their unsharded total, and the largest array left whole on
  every chip (a large one is a sharding rule to fix); and the count of trained parameters."""
  both = parallel.footprint((state, consts))
  return {
      "trained_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
      "state_gib": parallel.footprint(state).per_device / GIB,
      "state_consts_gib": both.per_device / GIB,
      "state_consts_total_gib": both.total / GIB,
      "largest_whole_mib": both.largest_whole / 2**20,
      "largest_whole": both.largest_whole_path,
  }


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
  return {
      k: jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharding(mesh, len(shape)))
      for k, (shape, dtype) in shapes.items()
  }


def _stage3_pieces(config, ae_config_spec: str = ""):
  """(autoencoder with abstract params and identity statistics, (text module, abstract params,
  None)) of a stage-3 config: shapes from config.json files when given, else the defaults."""
  ae_dir = config.autoencoder
  if ae_dir and os.path.isfile(os.path.join(ae_dir, workdir_lib.CONFIG)):
    ae_config = workdir_lib.read_config(ae_dir)
  else:
    spec = ae_config_spec or (
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
  ae = frozen_psvae.Autoencoder(model, params, ae_config, stats)
  if config.model.cond_type != "text" or builders.is_fusion(config):
    return ae, (None, None, None)  # class labels, or the fusion generator's own blocks
  text_dir = config.text_encoder
  if text_dir and os.path.isfile(os.path.join(text_dir, "config.json")):
    hf = weights_common.read_json(text_dir)
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


def build_programs(config, devices, wanted=(), ae_config_spec: str = "") -> list[Program]:
  """The config's production programs over `devices` (abstract inputs; nothing allocated)."""
  try:
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)
    parallel.check_batch_divides_mesh(config.batch_size, mesh)
  except ValueError as e:
    raise BadInput(f"--config.mesh / --config.batch_size: {cli.one_line(e)}") from None
  if config.stage in ("svae", "psvae"):
    task = ae_task.AutoencoderTask(config)
  elif config.stage == "dit":
    ae, text = _stage3_pieces(config, ae_config_spec)
    config.autoencoder = config.autoencoder or "(shapes only)"
    task = dit_task.DiTTask(config, mesh, ae, text)
  else:
    raise BadInput(f"unknown stage {config.stage!r}")
  tx = loop.make_tx(task, config)
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
    plan = sharding_plan(state, consts)
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
    if config.model.size != "tiny" and not builders.is_fusion(config):
      kw = dit_lib.dit_config(config.model.size)
      depth = config.model.get("depth", 0) or kw["depth"]
      tokens = (h // config.model.patch_size) * (w // config.model.patch_size)
      fwd = dit_lib.analytic_flops(kw["width"], depth, tokens, config.model.patch_size, c)
      flops = 3.0 * fwd * b  # forward + backward (2x) per image
    plan = sharding_plan(state, consts)
    train_args = (state, _batch(shapes, mesh), consts)
    programs.append(Program("train", step, train_args, model_flops=flops, batch=b, plan=plan))
    n = _padded(int(config.eval.num_images), mesh.size)
    gen = task.gen
    sample_batch = _batch(_condition_shapes(config, n), mesh)
    z = _batch({"z": ((n, h, w, c), f32)}, mesh)["z"]
    abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
    settings = jax.tree.map(abstract, samplers.traced(gen.sample_settings()))
    start = jax.ShapeDtypeStruct((), jnp.int32)
    args = (state.ema_params, consts, sample_batch, z, settings, start, None)
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

"""bf16 compute (config.dtype, the paper-size default) against fp32, stage by stage, on tiny
configs.

Each stage's production loss (AutoencoderTask.loss, DiTTask.loss) is evaluated at the same params,
batch and rng in float32 and in bfloat16: the losses agree within bf16 tolerance, and the bf16
step's jaxpr really multiplies in bf16 (so an ignored dtype knob fails here).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import flatten_util

from configs import dit as dit_config
from configs import psvae as psvae_config
from configs import svae as svae_config
from psvae_jax import builders
from psvae_jax import parallel
from psvae_jax.train import tasks
from psvae_jax.train.tasks import autoencoder
from psvae_jax.train.tasks import dit as dit_task
from psvae_jax.weights import clip

RTOL = 2e-2


@jax.jit
def _perturb(params, scale=0.02):
  """Params plus noise, so zero-initialised heads (DiT, moments) do not hide the compute dtype."""
  flat, unravel = flatten_util.ravel_pytree(params)  # one RNG op: quick to compile
  return unravel(flat + scale * jax.random.normal(jax.random.key(7), flat.shape, flat.dtype))


def _run(fn, *args):
  """(fn(*args) jitted, (matmuls/convs in its jaxpr, how many of them produce bf16))."""
  traced = jax.jit(fn).trace(*args)
  lines = [
      l
      for l in str(traced.jaxpr).splitlines()
      if "dot_general[" in l or "conv_general_dilated[" in l
  ]
  return traced.lower().compile()(*args), (
      len(lines),
      sum("bf16[" in l.split("=")[0] for l in lines),
  )


def _check(losses_by_dtype, dots_by_dtype):
  (l32, m32), (l16, m16) = losses_by_dtype["float32"], losses_by_dtype["bfloat16"]
  assert np.isfinite(l32) and l32 > 0
  for k in m32:  # every reported term, the total included
    a, b = float(m32[k]), float(m16[k])
    assert abs(b - a) <= RTOL * abs(a) + 1e-6, (k, a, b)
  n32, bf32 = dots_by_dtype["float32"]
  n16, bf16 = dots_by_dtype["bfloat16"]
  assert n32 > 0 and bf32 == 0, dots_by_dtype
  assert bf16 >= n16 // 2, dots_by_dtype  # most of the work is bf16 (heads stay fp32)


def _small_ae(config):
  config.model.encoder.num_layers = 1
  config.model.pixel_decoder.num_layers = 1
  return config


@pytest.fixture(scope="module")
def ae_params():
  """One set of (perturbed) fp32 autoencoder params for both stages and both dtypes."""
  task = autoencoder.AutoencoderTask(_small_ae(svae_config.get_config("tiny")))
  return _perturb(jax.jit(task.init)(jax.random.key(0))[0])


@pytest.mark.parametrize("stage", ["svae", "psvae"])
def test_autoencoder_loss_bf16_matches_fp32(stage, ae_params):
  get = {"svae": svae_config, "psvae": psvae_config}[stage].get_config
  images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3), minval=-1.0, maxval=1.0)
  batch, rng = {"image": images}, jax.random.key(2)
  losses, dots = {}, {}
  for dtype in ("float32", "bfloat16"):
    config = _small_ae(get("tiny"))
    assert config.dtype == "float32"  # the tiny default; paper sizes default to bf16
    config.dtype = dtype
    task = autoencoder.AutoencoderTask(config)
    params, frozen = ae_params, task.make_frozen(ae_params)
    consts = task.constants()
    losses[dtype], dots[dtype] = _run(task.loss, params, frozen, consts, batch, rng)
  _check(losses, dots)


def test_paper_configs_default_to_bf16_compute():
  assert svae_config.get_config("dinov2_b").dtype == "bfloat16"
  assert psvae_config.get_config("dinov2_l").dtype == "bfloat16"
  for variant in ("XL_text", "B_class", "paper"):
    c = dit_config.get_config(variant)
    assert c.dtype == "bfloat16" and c.text_encoder_dtype == "bfloat16", variant


def test_dit_loss_bf16_matches_fp32_and_stores_frozen_text_in_bf16(trained_dit):
  mesh = parallel.make_mesh(-1, 1)
  text_dir = str(trained_dit / "text")
  tokenizer = clip.load_tokenizer(text_dir)
  params = None
  losses, dots = {}, {}
  for dtype in ("float32", "bfloat16"):
    config = dit_config.get_config("tiny")
    config.train_text_encoder = False  # a frozen text encoder: stored in text_encoder_dtype
    config.autoencoder, config.text_encoder = str(trained_dit / "psvae"), text_dir
    config.dtype = config.text_encoder_dtype = dtype
    task = dit_task.DiTTask(config, mesh, *tasks.dit_pieces(config, mesh))
    consts = task.constants()
    assert {str(x.dtype) for x in jax.tree.leaves(consts["text"])} == {dtype}  # frozen storage
    if params is None:
      params = _perturb(jax.jit(task.init)(jax.random.key(0))[0])
      ids, mask = clip.tokenize(tokenizer, ["a red circle on the left"] * 4, config.data.max_length)
      s = config.data.image_size
      batch = {
          "image": jax.random.uniform(jax.random.key(1), (4, s, s, 3), minval=-1.0),
          "input_ids": jnp.asarray(ids),
          "attention_mask": jnp.asarray(mask),
      }
    rng = jax.random.key(3)
    losses[dtype], dots[dtype] = _run(task.loss, params, {}, consts, batch, rng)
  _check(losses, dots)
  # A jointly trained text encoder keeps fp32 params whatever text_encoder_dtype says.
  config.train_text_encoder = True
  assert builders.text_param_dtype(config) == jnp.float32

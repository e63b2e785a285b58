"""Full-size stage 3 lowers for an 8-device mesh with FSDP-sharded params (AOT, nothing allocated).

DiT-XL (text) with a T5-XXL-sized encoder (4096 wide, 24 layers, 64 heads) and the paper's
PS-VAE (DINOv2-B, 16x16x96 latent): the production step, loop.train_step with DiTTask.loss
(T5 forward, DiT forward + backward, AdamW, EMA), is lowered on ShapeDtypeStructs. The
task is DiTTask itself, given abstract stand-ins for its frozen autoencoder and text encoder
(no checkpoint of these sizes is read or materialised).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from configs import dit as dit_config
from configs import psvae as psvae_config
from psvae_jax import frozen_psvae
from psvae_jax import builders
from psvae_jax import latent_stats
from psvae_jax import parallel
from psvae_jax.models import text_encoders
from psvae_jax.train import loop
from psvae_jax.train import optim
from psvae_jax.train.tasks import dit as dit_task


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _abstract_dit_task(config, mesh, text_width: int):
  """DiTTask(config, mesh, ...) over an abstract PS-VAE (dinov2_b) and T5-XXL-sized text encoder."""
  ae_config = psvae_config.get_config("dinov2_b")
  ae_model = builders.build_psvae(ae_config.model)
  s = ae_config.data.image_size
  ae_params = jax.eval_shape(
      ae_model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
  )["params"]
  c = ae_config.model.latent_channels
  zeros, ones = np.zeros(c, np.float32), np.ones(c, np.float32)
  stats = latent_stats.LatentStats(mu_mean=zeros, mu_std=ones, sample_mean=zeros, sample_std=ones)
  ae = frozen_psvae.Autoencoder(model=ae_model, params=ae_params, config=ae_config, stats=stats)
  t5 = text_encoders.T5Encoder(
      vocab_size=32128,
      d_model=text_width,
      d_kv=64,
      d_ff=10240,
      num_layers=24,
      num_heads=64,
      is_gated_act=True,
      dense_act_fn="gelu_new",
      dtype=jnp.bfloat16,
  )
  ids = jax.ShapeDtypeStruct((1, config.data.max_length), jnp.int32)
  t5_params = jax.eval_shape(t5.init, jax.random.key(0), ids, ids)["params"]
  config.autoencoder = config.text_encoder = "(abstract)"
  return dit_task.DiTTask(config, mesh, ae, (t5, t5_params, None))


def test_dit_xl_text_with_t5_xxl_lowers_sharded():
  mesh = parallel.make_mesh(1, 8)
  config = dit_config.get_config("XL_text")
  config.batch_size, config.data.max_length = 16, 120
  config.dtype, config.model.remat = "bfloat16", True
  task = _abstract_dit_task(config, mesh, text_width=4096)
  tx = optim.make_optimizer(
      config.optim,
      config.num_train_steps,
      functools.partial(optim.label_params, groups=task.param_groups),
  )
  state = jax.eval_shape(
      functools.partial(loop.create_train_state, task=task, tx=tx), jax.random.key(0)
  )
  consts = _abstract(task.constants())
  n_t5 = sum(x.size for x in jax.tree.leaves(consts["text"]))
  n_dit = sum(x.size for x in jax.tree.leaves(state.params["dit"]))
  assert n_t5 > 4.5e9 and n_dit > 6.5e8, (n_t5, n_dit)
  assert task.ae.latent_shape == (16, 16, 96)

  b, length = config.batch_size, config.data.max_length
  batch = {
      "latent": jax.ShapeDtypeStruct((b, 16, 16, 96), jnp.float32),  # latent-cache batches
      "input_ids": jax.ShapeDtypeStruct((b, length), jnp.int32),
      "attention_mask": jax.ShapeDtypeStruct((b, length), jnp.int32),
  }
  sh = lambda tree: parallel.param_shardings(tree, mesh, min_size=config.shard_min_size)
  state_sh, consts_sh = sh(state), sh(consts)
  batch_sh = {k: parallel.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
  step = functools.partial(loop.train_step, task=task, tx=tx, config=config)
  lowered = jax.jit(
      step, out_shardings=(state_sh, parallel.replicated(mesh)), donate_argnums=0
  ).lower(
      parallel.with_shardings(state, state_sh),
      parallel.with_shardings(batch, batch_sh),
      parallel.with_shardings(consts, consts_sh),
  )
  assert "sharding" in lowered.as_text()[:200_000]

  total = per_device = 0
  for tree, shards in ((state, state_sh), (consts, consts_sh)):
    for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shards)):
      total += a.size * a.dtype.itemsize
      per_device += int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
      if a.size >= 1e7:  # no large array whole on one device
        assert "fsdp" in tuple(s.spec), (a.shape, s.spec)
  assert per_device < total / 7.5, (per_device / 2**30, total / 2**30)

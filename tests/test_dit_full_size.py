"""Full-size stage 3 lowers for an 8-device mesh with FSDP-sharded params (AOT, nothing allocated).

DiT-XL (text) with a T5-XXL-sized encoder (4096 wide, 24 layers, 64 heads): the train step
(T5 forward, DiT forward + backward + AdamW) is lowered on ShapeDtypeStructs.
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import dit as dit_config
from psvae_jax import parallel
from psvae_jax.diffusion import objectives
from psvae_jax.diffusion import schedules
from psvae_jax.models import dit as dit_lib
from psvae_jax.models import text_encoders


def test_dit_xl_text_with_t5_xxl_lowers_sharded():
  mesh = parallel.make_mesh(1, 8)
  config = dit_config.get_config("XL_text")
  length, batch = 120, 16
  t5 = text_encoders.T5Encoder(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                               num_heads=64, is_gated_act=True, dense_act_fn="gelu_new",
                               dtype=jnp.bfloat16)
  dit = dit_lib.DiT(**dit_lib.dit_config("XL"), patch_size=1, cond_type="text",
                    dtype=jnp.bfloat16, remat=True)
  ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  t5_params = jax.eval_shape(t5.init, jax.random.key(0), ids, ids)["params"]
  z = jax.ShapeDtypeStruct((batch, 16, 16, 96), jnp.float32)
  dit_params = jax.eval_shape(
      dit.init, jax.random.key(0), z, jax.ShapeDtypeStruct((batch,), jnp.float32),
      context=jax.ShapeDtypeStruct((batch, length, 4096), jnp.float32),
      context_mask=jax.ShapeDtypeStruct((batch, length), bool),
      pooled=jax.ShapeDtypeStruct((batch, 4096), jnp.float32))["params"]
  n_t5 = sum(x.size for x in jax.tree.leaves(t5_params))
  n_dit = sum(x.size for x in jax.tree.leaves(dit_params))
  assert n_t5 > 4.5e9 and n_dit > 6.5e8, (n_t5, n_dit)

  tx = optax.adamw(1e-4)
  opt = jax.eval_shape(tx.init, dit_params)
  obj = objectives.EpsilonObjective(schedules.linear_schedule())
  min_size = config.shard_min_size

  def step(params, opt_state, text_params, batch_):
    hidden, pooled = t5.apply({"params": text_params}, batch_["ids"], batch_["mask"])
    def loss_fn(p):
      t = obj.sample_t(jax.random.key(0), (batch,))
      noise = jax.random.normal(jax.random.key(1), batch_["z"].shape)
      pred = dit.apply({"params": p}, obj.sample_x_t(batch_["z"], t, noise), t, context=hidden,
                       context_mask=batch_["mask"].astype(bool), pooled=pooled)
      return jnp.mean(jnp.square(pred - noise))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  sh = lambda tree: parallel.param_shardings(tree, mesh, min_size=min_size)
  p_sh, o_sh, t_sh = sh(dit_params), sh(opt), sh(t5_params)
  b = {"ids": ids, "mask": ids, "z": z}
  b_sh = {k: parallel.batch_sharding(mesh, v.ndim) for k, v in b.items()}
  lowered = jax.jit(step, out_shardings=(p_sh, o_sh, parallel.replicated(mesh))).lower(
      parallel.with_shardings(dit_params, p_sh), parallel.with_shardings(opt, o_sh), parallel.with_shardings(t5_params, t_sh),
      parallel.with_shardings(b, b_sh))
  assert "sharding" in lowered.as_text()[:200_000]

  total = per_device = 0
  for tree, shards in ((dit_params, p_sh), (opt, o_sh), (t5_params, t_sh)):
    for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shards)):
      total += a.size * a.dtype.itemsize
      per_device += int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
      if a.size >= 1e7:  # no large array whole on one device
        assert "fsdp" in tuple(s.spec), (a.shape, s.spec)
  assert per_device < total / 7.5, (per_device / 2**30, total / 2**30)

"""The CPU attention path, the erf GELU and the fused q/k/v GEMM against their references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psvae_jax.models import attention
from psvae_jax.models import layers

B, Q, K, H, D = 2, 7, 5, 6, 8


def _inputs(dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 5)
  q = jax.random.normal(keys[0], (B, Q, H, D), dtype)
  k = jax.random.normal(keys[1], (B, K, H, D), dtype)
  v = jax.random.normal(keys[2], (B, K, H, D), dtype)
  bias = jax.random.normal(keys[3], (1, H, Q, K), jnp.float32)
  mask = jax.random.bernoulli(keys[4], 0.7, (B, 1, 1, K)).at[:, ..., 0].set(True)
  return q, k, v, bias, mask


def _loss(fn):
  def loss(q, k, v, bias, mask):
    out = fn(q, k, v, bias=bias, mask=mask, scale=0.3)
    weights = jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape) / out.size
    return jnp.sum(out.astype(jnp.float32) * weights)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


@pytest.mark.parametrize("chunks", [1, 2, 3, 4])
def test_cpu_attention_matches_jax_values_and_gradients(chunks):
  args = _inputs()
  ref = lambda *a, **kw: jax.nn.dot_product_attention(*a, implementation="xla", **kw)
  ours = lambda *a, **kw: attention.cpu_attention(*a, chunks=chunks, **kw)
  (val_r, grads_r), (val_o, grads_o) = _loss(ref)(*args), _loss(ours)(*args)
  np.testing.assert_allclose(val_o, val_r, rtol=1e-5)
  for name, g_o, g_r in zip(("q", "k", "v", "bias"), grads_o, grads_r):
    assert g_o.shape == g_r.shape, name
    np.testing.assert_allclose(g_o, g_r, rtol=1e-4, atol=1e-5, err_msg=name)


def test_cpu_attention_bfloat16_and_a_fully_masked_row():
  q, k, v, _, _ = _inputs(jnp.bfloat16)
  mask = jnp.ones((B, 1, Q, K), bool).at[0, 0, 3].set(False)  # query 3 of item 0 sees nothing
  ref = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
  ours = attention.cpu_attention(q, k, v, mask=mask)
  assert ours.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      np.asarray(ours, np.float32), np.asarray(ref, np.float32), rtol=2e-2, atol=2e-2
  )
  uniform = jnp.mean(v[0].astype(jnp.float32), axis=0)  # (H, D): equal weight on every key
  np.testing.assert_allclose(np.asarray(ours[0, 3], np.float32), uniform, rtol=2e-2, atol=2e-2)


def test_dispatch_by_implementation():
  q, k, v, _, _ = _inputs()
  out = attention.dot_product_attention(q, k, v, implementation="cpu")
  np.testing.assert_allclose(out, jax.nn.dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="attention implementation 'flash'"):
    attention.dot_product_attention(q, k, v, implementation="flash")


def test_gelu_erf_matches_exact_gelu_and_its_derivative():
  x = jnp.linspace(-9.0, 9.0, 2001)
  np.testing.assert_allclose(layers.gelu(x), jax.nn.gelu(x, approximate=False), atol=2e-6)
  grad = jax.vmap(jax.grad(layers.gelu))(x)
  ref = jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=False)))(x)
  np.testing.assert_allclose(grad, ref, atol=2e-6)
  tanh = layers.gelu(x, approximate=True)
  np.testing.assert_allclose(tanh, jax.nn.gelu(x, approximate=True), atol=1e-7)


def test_fused_dense_equals_separate_dense_layers():
  x = jax.random.normal(jax.random.key(1), (2, 3, 16))

  class Fused(nn.Module):

    @nn.compact
    def __call__(self, x):
      p = [layers.DenseParams(16, f, name=n)() for n, f in (("a", 4), ("b", 8))]
      return layers.fused_dense(x, p)

  class Separate(nn.Module):

    @nn.compact
    def __call__(self, x):
      return [nn.Dense(f, name=n)(x) for n, f in (("a", 4), ("b", 8))]

  params = Separate().init(jax.random.key(2), x)
  fused_init = Fused().init(jax.random.key(2), x)
  assert jax.tree.map(jnp.shape, fused_init) == jax.tree.map(jnp.shape, params)
  np.testing.assert_array_equal(
      fused_init["params"]["a"]["kernel"], params["params"]["a"]["kernel"]
  )
  for got, want in zip(Fused().apply(params, x), Separate().apply(params, x)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_max_pool_2x2_matches_flax_values_and_gradients_on_odd_sizes():
  x = jax.random.normal(jax.random.key(3), (2, 7, 10, 3))
  ref = lambda t: nn.max_pool(t, (2, 2), strides=(2, 2), padding="VALID")
  np.testing.assert_array_equal(layers.max_pool_2x2(x), ref(x))
  w = jax.random.normal(jax.random.key(4), ref(x).shape)
  grad = jax.grad(lambda t: jnp.sum(layers.max_pool_2x2(t) * w))(x)
  np.testing.assert_array_equal(grad, jax.grad(lambda t: jnp.sum(ref(t) * w))(x))
  assert grad.shape == x.shape and not np.any(np.asarray(grad[:, 6])), "the floored row gets none"

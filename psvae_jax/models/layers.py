"""Small shared layers: fixed 2-D sin-cos position embeddings, a flattening Dense, fused
projections, an exact GELU with a cheap derivative."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class Dense(nn.Module):
  """``nn.Dense`` (same ``kernel``/``bias`` parameters, init and dtype promotion) computed as one
  2-D GEMM over the flattened leading dimensions.

  On XLA:CPU the gradient dots of ``nn.Dense`` on (B, N, K) tokens (a dot_general contracting
  the last axis) ran slower than the same work as (B·N, K) @ (K, F): DiT-S depth 12, batch 16,
  fwd+bwd 1198 -> 1065 ms median, identical loss. Parameters are interchangeable with nn.Dense.
  """

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
    y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(
          self.dtype
      )
    return y.reshape(*x.shape[:-1], self.features)


class DenseParams(nn.Module):
  """The ``kernel`` / ``bias`` of an ``nn.Dense`` (same names, shapes and init), returned, not
  applied: ``fused_dense`` concatenates several of them into one GEMM."""

  in_features: int
  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", self.kernel_init, (self.in_features, self.features), jnp.float32)
    return kernel, self.param("bias", self.bias_init, (self.features,), jnp.float32)


def fused_dense(x: jax.Array, params: list, dtype: Any = jnp.float32) -> list[jax.Array]:
  """Applies several Dense layers to the same input as one GEMM over their concatenated kernels.

  Args:
    x: ``(..., K)``.
    params: ``(kernel (K, F_i), bias (F_i,))`` pairs, e.g. from ``DenseParams``.
    dtype: compute dtype.

  Returns:
    The outputs ``(..., F_i)``, equal to applying each ``nn.Dense`` in turn. One (K, ΣF) GEMM
    instead of three (K, F) ones: the DINOv2 q/k/v forward on XLA:CPU ran at half the GFLOP/s of
    the MLP's, each re-reading the normalised input (``bench/psvae_vs_torch.py``).
  """
  kernel = jnp.concatenate([k for k, _ in params], axis=1).astype(dtype)
  bias = jnp.concatenate([b for _, b in params]).astype(dtype)
  y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(dtype), kernel) + bias
  y = y.reshape(*x.shape[:-1], -1)
  splits = np.cumsum([k.shape[1] for k, _ in params])[:-1]
  return jnp.split(y, splits, axis=-1)


@jax.custom_jvp
def _gelu_erf(x):
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(2**-0.5, x.dtype)))


@_gelu_erf.defjvp
def _gelu_erf_jvp(primals, tangents):
  (x,), (tx,) = primals, tangents
  cdf = 0.5 * (1.0 + jax.lax.erf(x * np.asarray(2**-0.5, x.dtype)))
  pdf = jnp.exp(-0.5 * x * x) * np.asarray((2 * np.pi) ** -0.5, x.dtype)
  return x * cdf, tx * (cdf + x * pdf)


def gelu(x: jax.Array, approximate: bool = False) -> jax.Array:
  """GELU. Exact: ``x·Φ(x)`` through ``erf``, as torch's ``nn.GELU()`` computes it, with the
  derivative ``Φ(x) + x·φ(x)`` given directly (autodiff of ``jax.nn.gelu``'s ``erfc`` form kept
  three intermediates per element for the backward: the DINOv2 MLP fwd+bwd ran ~10% slower on
  XLA:CPU). ``approximate``: the tanh form (``jax.nn.gelu(approximate=True)``)."""
  if approximate:
    return jax.nn.gelu(x, approximate=True)
  return _gelu_erf(x)


def _pool_2x2(x):
  # Element-wise maxima of the four strided views, not a reduction: XLA:CPU fused a reduce (or a
  # reduce-window) with the next convolution into one YNNPACK call that ran slower than the two.
  h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  v = [x[:, i:h:2, j:w:2] for i in (0, 1) for j in (0, 1)]
  return jnp.maximum(jnp.maximum(v[0], v[1]), jnp.maximum(v[2], v[3]))


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pool, stride 2, sizes floored (torch's ``MaxPool2d(2, 2)``); x: (B, H, W, C).

  The backward sends each output's cotangent to the window positions equal to its max (``nn.
  max_pool``'s reduce-window backward on XLA:CPU, a select-and-scatter after a variadic
  reduce-window, took 477 vs 132 ms at VGG's first pool, 8 x 256 x 256 x 64). Ties within a
  window each get the full cotangent, where torch picks one; after a ReLU, as in VGG, tied
  windows are zeros whose gradient the ReLU stops.
  """
  return _pool_2x2(x)


def _max_pool_fwd(x):
  y = _pool_2x2(x)
  return y, (x, y)


def _max_pool_bwd(res, dy):
  x, y = res
  b, h, w, c = x.shape
  h2, w2 = h // 2 * 2, w // 2 * 2

  def up(t):  # (B, h/2, w/2, C) -> (B, h2, w2, C)
    return jnp.broadcast_to(t[:, :, None, :, None], (b, h2 // 2, 2, w2 // 2, 2, c)).reshape(
        b, h2, w2, c
    )

  dx = jnp.where(x[:, :h2, :w2] == up(y), up(dy), 0).astype(x.dtype)
  return (jnp.pad(dx, ((0, 0), (0, h - h2), (0, w - w2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, dim)


def sincos_2d(h: int, w: int, dim: int) -> np.ndarray:
  """(h*w, dim) float32 embedding, MAE/DiT style (half the channels per axis)."""
  if dim % 4:
    raise ValueError(f"sin-cos 2-D embedding needs dim % 4 == 0, got {dim}.")
  gy, gx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  emb = np.concatenate([sincos_1d(dim // 2, gy), sincos_1d(dim // 2, gx)], axis=1)
  return emb.astype(np.float32)

"""Per-image reconstruction metrics (PSNR, SSIM) in jnp, batch-first NHWC.

Inputs are images in [-1, 1] of shape (B, H, W, C). Both metrics map them to
[0, 1] via (x + 1) / 2 and clip, i.e. use data_range 1. All functions are
jit-friendly (static shapes, no Python control flow on values).

``ssim`` reproduces ``skimage.metrics.structural_similarity(a, b,
channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)``: an 11-tap Gaussian window (truncate=3.5)
applied per channel like ``scipy.ndimage.gaussian_filter(mode='reflect')``,
K1=0.01, K2=0.03, a (win_size - 1) // 2 border cropped before the spatial
mean, then the mean over channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_MSE_FLOOR = 1e-10
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def to_unit_range(x: jax.Array) -> jax.Array:
  """[-1, 1] -> [0, 1] float32, clipped."""
  return jnp.clip((x.astype(jnp.float32) + 1.0) * 0.5, 0.0, 1.0)


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-image PSNR in dB on the [0, 1] scale.

  Args:
    x: (B, H, W, C) images in [-1, 1].
    y: (B, H, W, C) images in [-1, 1].

  Returns:
    (B,) 10 * log10(1 / mse), mse over all pixels and channels, floored at
    1e-10 (so identical images give 100 dB).
  """
  a, b = to_unit_range(x), to_unit_range(y)
  mse = jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim)))  # (B,)
  return -10.0 * jnp.log10(jnp.maximum(mse, _MSE_FLOOR))


def gaussian_kernel1d(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
  """scipy.ndimage's normalised 1-D Gaussian, radius int(truncate * sigma + 0.5)."""
  radius = int(truncate * sigma + 0.5)
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  w = np.exp(-0.5 * t * t / (sigma * sigma))
  return (w / w.sum()).astype(np.float32)


def _filter_axis(x: jax.Array, w: np.ndarray, axis: int) -> jax.Array:
  """Correlates x with the symmetric 1-D kernel w along axis, scipy 'reflect' borders.

  scipy's 'reflect' (d c b a | a b c d | d c b a) is numpy's 'symmetric' pad.
  """
  r = (len(w) - 1) // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r, r)
  xp = jnp.pad(x, pad, mode="symmetric")
  n = x.shape[axis]
  out = jnp.zeros_like(x)
  for i, wi in enumerate(w):  # Static unrolled loop over len(w) taps.
    out = out + float(wi) * jax.lax.slice_in_dim(xp, i, i + n, axis=axis)
  return out


def gaussian_filter2d(
    x: jax.Array, sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE
) -> jax.Array:
  """Separable Gaussian blur over H and W of x: (B, H, W, C), channels independent."""
  w = gaussian_kernel1d(sigma, truncate)
  return _filter_axis(_filter_axis(x, w, axis=1), w, axis=2)


def ssim(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-image SSIM matching skimage's Gaussian-weighted SSIM (Wang et al. 2004).

  Args:
    x: (B, H, W, C) images in [-1, 1]; H, W >= 11.
    y: (B, H, W, C) images in [-1, 1].

  Returns:
    (B,) mean SSIM (over the cropped spatial map, then over channels).
  """
  if x.shape != y.shape:
    raise ValueError(f"ssim inputs differ in shape: {x.shape} vs {y.shape}")
  win_size = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1
  if min(x.shape[1:3]) < win_size:
    raise ValueError(f"ssim needs H, W >= {win_size}; got {x.shape}")
  a, b = to_unit_range(x), to_unit_range(y)
  # The (co)variances are shift-invariant and the window sums to 1, so filter
  # images centred on their per-channel mean: this shrinks the float32
  # cancellation in E[a^2] - E[a]^2 (noticeable on flat regions, where the
  # variance is ~0 and only C2 = 9e-4 is left in the denominator).
  ma = jnp.mean(a, axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
  mb = jnp.mean(b, axis=(1, 2), keepdims=True)
  a0, b0 = a - ma, b - mb
  blur = gaussian_filter2d
  ux0, uy0 = blur(a0), blur(b0)
  vx = blur(a0 * a0) - ux0 * ux0
  vy = blur(b0 * b0) - uy0 * uy0
  vxy = blur(a0 * b0) - ux0 * uy0
  ux, uy = ux0 + ma, uy0 + mb
  c1 = (SSIM_K1 * 1.0) ** 2
  c2 = (SSIM_K2 * 1.0) ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / (
      (ux * ux + uy * uy + c1) * (vx + vy + c2)
  )  # (B, H, W, C)
  p = (win_size - 1) // 2
  s = s[:, p : s.shape[1] - p, p : s.shape[2] - p, :]
  return jnp.mean(s, axis=(1, 2, 3))  # Equal-size channels: mean of means.

"""Inception-v3 for FID (flax linen): the network of pytorch-fid / the TF FID reference.

This is pytorch-fid's ``InceptionV3(output_blocks=[3], resize_input=True,
normalize_input=True, use_fid_inception=True)``: torchvision's Inception-v3 trunk
with the blocks patched the way the 2015 TF graph computes them

* ``FIDInceptionA`` (Mixed_5b/5c/5d), ``FIDInceptionC`` (Mixed_6b..6e) and
  ``FIDInceptionE_1`` (Mixed_7b): the pool branch averages without counting the
  padding (``count_include_pad=False``);
* ``FIDInceptionE_2`` (Mixed_7c): the pool branch is a 3x3 *max* pool;
* Mixed_6a / Mixed_7a are torchvision's InceptionB / InceptionD,

ending in the global average pool ("pool3", 2048-d). Inputs are NHWC images in
the uint8 range [0, 255] (uint8 or float); they are scaled to [0, 1], resized
to 299x299 with torch's ``F.interpolate(mode="bilinear", align_corners=False)``
(no antialiasing, as pytorch-fid does), then mapped to [-1, 1].

Parameter names mirror the torch module names (``Mixed_5b/branch1x1/conv/kernel``,
``.../bn/{scale,bias,mean,var}``), so :mod:`psvae_jax.weights.inception` is a
re-layout. BatchNorm runs in inference mode; its running statistics are stored as
parameters so that ``module.apply({"params": params}, images)`` is all one needs.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FID_SIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3  # torchvision BasicConv2d's BatchNorm2d(eps=0.001)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) interpolation weights of torch's bilinear resize with align_corners=False.

  src = max((dst + 0.5) * in / out - 0.5, 0); lerp between floor(src) and the next
  pixel (clamped at the border) -- exactly ``torch.nn.functional.interpolate``'s
  ``area_pixel_compute_source_index`` without antialiasing.
  """
  # float32 like torch's CPU kernel (opmath float), so indices and weights agree to the ulp.
  scale = np.float32(in_size / out_size)
  dst = np.arange(out_size, dtype=np.float32)
  src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam = (src - i0.astype(np.float32)).astype(np.float64)
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.arange(out_size), i0), 1.0 - lam)
  np.add.at(m, (np.arange(out_size), i1), lam)
  return m.astype(np.float32)


def resize_bilinear(x: jax.Array, size: int = FID_SIZE) -> jax.Array:
  """(B, H, W, C) -> (B, size, size, C), torch bilinear (align_corners=False) semantics."""
  b, h, w, c = x.shape
  if (h, w) == (size, size):
    return x  # torch's resize to the same size is the identity
  ry = jnp.asarray(bilinear_matrix(h, size))
  rx = jnp.asarray(bilinear_matrix(w, size))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("ih,bhwc->biwc", ry, x, precision=hi)
  return jnp.einsum("jw,biwc->bijc", rx, x, precision=hi)


class FrozenBatchNorm(nn.Module):
  """Inference-mode BatchNorm with its running statistics as parameters."""

  eps: float = BN_EPS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = self.param("mean", nn.initializers.zeros, (c,))
    var = self.param("var", nn.initializers.ones, (c,))
    inv = scale * jax.lax.rsqrt(var + self.eps)
    return (x - mean) * inv.astype(x.dtype) + bias.astype(x.dtype)


class BasicConv2d(nn.Module):
  """Conv (no bias) + BatchNorm + ReLU, torchvision's BasicConv2d."""

  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(
        self.features,
        self.kernel,
        strides=self.strides,
        padding=((ph, ph), (pw, pw)),
        use_bias=False,
        dtype=self.dtype,
        name="conv",
    )(x)
    return nn.relu(FrozenBatchNorm(name="bn")(x))


def _avg3(x: jax.Array) -> jax.Array:
  """3x3 / stride 1 / pad 1 average, padding not counted (the FID blocks' pool branch)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max3s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
  pool_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)
    b1 = conv(64, (1, 1), name="branch1x1")(x)
    b5 = conv(48, (1, 1), name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)
    b3 = conv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max3s2(x)], axis=-1)


class FIDInceptionC(nn.Module):
  channels_7x7: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)
    c7 = self.channels_7x7
    b1 = conv(192, (1, 1), name="branch1x1")(x)
    b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)
    b3 = conv(192, (1, 1), name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max3s2(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """FIDInceptionE_1 (avg pool branch, pad not counted) or _2 (max pool branch)."""

  max_pool_branch: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)
    b1 = conv(320, (1, 1), name="branch1x1")(x)
    b3 = conv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate(
        [
            conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
        ],
        -1,
    )
    bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
        [
            conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
        ],
        -1,
    )
    if self.max_pool_branch:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg3(x)
    bp = conv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
  """pool3 features (B, 2048) of uint8-range images (B, H, W, 3).

  Attributes:
    resize_input: resize to 299x299 first (pytorch-fid's default; keep it on for FID).
    dtype: compute dtype of the convolutions (float32 for FID).
  """

  resize_input: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = images.astype(jnp.float32) / 255.0  # (B, H, W, 3) in [0, 1]
    if self.resize_input:
      x = resize_bilinear(x, FID_SIZE)  # (B, 299, 299, 3)
    x = (2.0 * x - 1.0).astype(self.dtype)
    conv = lambda *a, **k: BasicConv2d(*a, dtype=self.dtype, **k)
    x = conv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)  # (B, 149, 149, 32)
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max3s2(x)  # (B, 73, 73, 64)
    x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max3s2(x)  # (B, 35, 35, 192)
    for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = FIDInceptionA(pool, dtype=self.dtype, name=name)(x)
    x = InceptionB(dtype=self.dtype, name="Mixed_6a")(x)  # (B, 17, 17, 768)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = FIDInceptionC(c7, dtype=self.dtype, name=name)(x)
    x = InceptionD(dtype=self.dtype, name="Mixed_7a")(x)  # (B, 8, 8, 1280)
    x = FIDInceptionE(False, dtype=self.dtype, name="Mixed_7b")(x)
    x = FIDInceptionE(True, dtype=self.dtype, name="Mixed_7c")(x)  # (B, 8, 8, 2048)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # (B, 2048) pool3


def abstract_params(module: InceptionV3FID, size: int = 75) -> Any:
  """Parameter shapes (they do not depend on the input size)."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(module.init, jax.random.key(0), x)["params"]


__all__: Sequence[str] = (
    "InceptionV3FID",
    "resize_bilinear",
    "bilinear_matrix",
    "FID_SIZE",
    "FEATURE_DIM",
    "abstract_params",
)

"""LPIPS perceptual distance (VGG16 variant) as flax linen modules.

Re-implements the forward pass of the ``lpips`` package's
``LPIPS(net='vgg', lpips=True, spatial=False)`` (version 0.1) on NHWC inputs:

  scaling layer -> torchvision VGG16 ``features`` (5 taps) -> per-tap channel
  unit-normalisation -> squared difference -> 1x1 linear heads ``lin0..lin4``
  (no bias) -> spatial mean -> sum over taps.

Parameter names mirror torchvision's ``features.N`` indices
(``vgg/features_N/{kernel,bias}``) so the importer in
:mod:`psvae_jax.weights.lpips` is a pure re-layout.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from psvae_jax.models import layers

# torchvision vgg16 `features`: (index of the conv in the Sequential, out channels).
# Each conv is followed by a ReLU at index + 1; max-pools sit at 4, 9, 16, 23, 30.
VGG16_CONVS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((0, 64), (2, 64)),  # -> relu1_2 (features.3)
    ((5, 128), (7, 128)),  # pool 4  -> relu2_2 (features.8)
    ((10, 256), (12, 256), (14, 256)),  # pool 9  -> relu3_3 (features.15)
    ((17, 512), (19, 512), (21, 512)),  # pool 16 -> relu4_3 (features.22)
    ((24, 512), (26, 512), (28, 512)),  # pool 23 -> relu5_3 (features.29)
)
# Channels of the five LPIPS taps.
TAP_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
# lpips.pretrained_networks ScalingLayer constants (RGB).
SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)
_EPS = 1e-10


class VGG16Features(nn.Module):
  """torchvision VGG16 ``features[:30]`` returning the 5 LPIPS taps (NHWC).

  The final max-pool (``features.30``) is not applied: LPIPS never uses it.
  Spatial sizes: H, H/2, H/4, H/8, H/16 (floored, as torch's MaxPool2d(2, 2)).

  Attributes:
    dtype: compute dtype of the convolutions (parameters stay float32).
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    """Args: x: (B, H, W, 3). Returns [relu1_2, relu2_2, relu3_3, relu4_3, relu5_3]."""
    taps = []
    h = x.astype(self.dtype)
    for stage, convs in enumerate(VGG16_CONVS):
      if stage > 0:
        h = layers.max_pool_2x2(h)
      for idx, ch in convs:
        h = nn.Conv(
            ch,
            (3, 3),
            padding=((1, 1), (1, 1)),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=f"features_{idx}",
        )(h)
        h = nn.relu(h)
      taps.append(h)  # (B, H / 2**stage, W / 2**stage, C_stage)
    return taps


def normalize_channels(x: jax.Array) -> jax.Array:
  """lpips ``normalize_tensor``: x / (||x||_2 over channels + 1e-10); x: (..., C)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / (norm + _EPS)


class LPIPS(nn.Module):
  """LPIPS (VGG, linear-calibrated, v0.1) distance between two image batches.

  Inputs are NHWC images in [-1, 1]. The backbone runs in ``dtype``; the
  normalisation, heads and reductions run in float32 (they are cheap and the
  unit-normalisation is precision-sensitive).

  Attributes:
    dtype: compute dtype of the VGG backbone.
  """

  dtype: Any = jnp.float32

  def setup(self):
    self.vgg = VGG16Features(dtype=self.dtype)
    self.lins = [
        nn.Conv(
            1, (1, 1), use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32, name=f"lin{k}"
        )
        for k in range(len(TAP_CHANNELS))
    ]

  def scale(self, x: jax.Array) -> jax.Array:
    """ScalingLayer: (x - shift) / scale per RGB channel; x: (B, H, W, 3)."""
    shift = jnp.asarray(SHIFT, jnp.float32)
    scale = jnp.asarray(SCALE, jnp.float32)
    return (x.astype(jnp.float32) - shift) / scale

  def features(self, x: jax.Array) -> list[jax.Array]:
    """Scaled VGG taps of images x: (B, H, W, 3) in [-1, 1]."""
    return self.vgg(self.scale(x))

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """Returns LPIPS distances (B,) between x and y, both (B, H, W, 3) in [-1, 1]."""
    if x.shape != y.shape:
      raise ValueError(f"LPIPS inputs differ in shape: {x.shape} vs {y.shape}")
    # Two backbone passes, not one over the concatenated (2B) batch: the gradient w.r.t. x (the
    # stage-2 loss) then runs the backbone's backward over B images, not 2B (the target's half is
    # pruned by autodiff; with one pass it was computed and thrown away).
    total = jnp.zeros((x.shape[0],), jnp.float32)
    for lin, tx, ty in zip(self.lins, self.features(x), self.features(y)):
      diff = jnp.square(
          normalize_channels(tx.astype(jnp.float32)) - normalize_channels(ty.astype(jnp.float32))
      )
      # The head is linear without bias: the mean over (h, w) first, then the 1x1 conv.
      total = total + lin(jnp.mean(diff, axis=(1, 2), keepdims=True))[:, 0, 0, 0]  # (B,)
    return total


def lpips_distance(module: LPIPS, params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  """Convenience wrapper: ``module.apply(params, x, y)`` -> (B,) distances.

  Args:
    module: an :class:`LPIPS` module.
    params: its variables (``{"params": ...}``), e.g. from ``load_lpips``.
    x: (B, H, W, 3) images in [-1, 1].
    y: (B, H, W, 3) images in [-1, 1].
  """
  return module.apply(params, x, y)


def tap_shapes(image_size: int | Sequence[int]) -> list[tuple[int, int, int]]:
  """(h, w, C) of the five taps for an image of the given size (H or (H, W))."""
  h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
  out = []
  for stage, ch in enumerate(TAP_CHANNELS):
    out.append((h, w, ch))
    if stage < len(TAP_CHANNELS) - 1:
      h, w = h // 2, w // 2
  return out

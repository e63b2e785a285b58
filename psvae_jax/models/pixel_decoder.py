"""Pixel decoders D_p: latent (B, h, w, C) -> image (B, H, W, 3) in about [-1, 1].

`ConvDecoder` is the LDM-style decoder (ResNet blocks + nearest upsampling, 2^(L-1)x),
the PS-VAE paper's choice; `ViTDecoder` runs ViT blocks on the latent tokens and maps
each token linearly to a patch of pixels.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from psvae_jax.models import attention
from psvae_jax.models import vit
from psvae_jax.models.layers import sincos_2d


def upsample2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling as broadcast + reshape (no gather)."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


class ResBlock(nn.Module):
  """GroupNorm-SiLU-Conv x2 with a (1x1) skip when channels change."""

  channels: int
  groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):  # (B, H, W, Cin)
    h = nn.GroupNorm(num_groups=min(self.groups, x.shape[-1]), dtype=self.dtype)(x)
    h = nn.Conv(self.channels, (3, 3), dtype=self.dtype)(nn.silu(h))
    h = nn.GroupNorm(num_groups=min(self.groups, self.channels), dtype=self.dtype)(h)
    h = nn.Conv(self.channels, (3, 3), dtype=self.dtype)(nn.silu(h))
    if x.shape[-1] != self.channels:
      x = nn.Conv(self.channels, (1, 1), dtype=self.dtype, name="skip")(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head spatial self-attention (LDM mid block)."""

  groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):  # (B, H, W, C)
    b, hgt, wid, c = x.shape
    h = nn.GroupNorm(num_groups=min(self.groups, c), dtype=self.dtype)(x).reshape(
        b, hgt * wid, 1, c
    )
    q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(h) for n in ("q", "k", "v"))
    h = attention.dot_product_attention(q, k, v).reshape(b, hgt, wid, c)
    return x + nn.Dense(c, dtype=self.dtype, name="proj")(h)


class ConvDecoder(nn.Module):
  """LDM decoder: conv_in, mid (res, attn, res), per level res blocks + 2x upsample, out.

  Attributes:
    ch: base channel count; level i has ch * ch_mult[i] channels (the last level
      is the lowest resolution, as in LDM).
    ch_mult: channel multipliers; the decoder upsamples len(ch_mult) - 1 times.
    num_res_blocks: ResBlocks per level.
    mid_attention: whether the mid block has spatial attention.
  """

  ch: int = 128
  ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  mid_attention: bool = True
  groups: int = 32
  out_channels: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z):  # (B, h, w, C)
    chans = [self.ch * m for m in self.ch_mult]
    x = nn.Conv(chans[-1], (3, 3), dtype=self.dtype, name="conv_in")(z.astype(self.dtype))
    x = ResBlock(chans[-1], self.groups, self.dtype, name="mid_res1")(x)
    if self.mid_attention:
      x = AttnBlock(self.groups, self.dtype, name="mid_attn")(x)
    x = ResBlock(chans[-1], self.groups, self.dtype, name="mid_res2")(x)
    for level in reversed(range(len(chans))):
      for i in range(self.num_res_blocks):
        x = ResBlock(chans[level], self.groups, self.dtype, name=f"up{level}_res{i}")(x)
      if level > 0:
        x = upsample2x(x)
        x = nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype, name=f"up{level}_conv")(x)
    x = nn.GroupNorm(num_groups=min(self.groups, chans[0]), dtype=self.dtype, name="norm_out")(x)
    # The pixel head runs in float32 (a few channels out): pixels are not rounded to bf16.
    x = nn.Conv(self.out_channels, (3, 3), dtype=jnp.float32, name="conv_out")(nn.silu(x))
    return x  # (B, h * 2^(L-1), w * 2^(L-1), 3) float32


class ViTDecoder(nn.Module):
  """ViT blocks on latent tokens, then a linear map of each token to a p x p pixel patch."""

  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  patch_size: int = 16  # output pixels per latent token (side)
  mlp_ratio: float = 4.0
  refine_channels: int = 0  # >0: tokens -> p x p x this, then a full-res ResBlock + conv
  groups: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z):  # (B, h, w, C)
    b, h, w, _ = z.shape
    x = nn.Dense(self.hidden_size, dtype=self.dtype, name="proj_in")(z.astype(self.dtype))
    x = x.reshape(b, h * w, self.hidden_size) + sincos_2d(h, w, self.hidden_size).astype(self.dtype)
    for i in range(self.num_layers):
      x = vit.Block(
          hidden_size=self.hidden_size,
          num_heads=self.num_heads,
          mlp_ratio=self.mlp_ratio,
          layerscale_init=None,
          dtype=self.dtype,
          name=f"block{i}",
      )(x)
    x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)
    p = self.patch_size
    c = self.refine_channels or 3
    head_dtype = self.dtype if self.refine_channels else jnp.float32  # pixels out: float32
    x = nn.Dense(p * p * c, dtype=head_dtype, name="proj_out")(x)  # (B, h*w, p*p*c)
    x = x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, c)
    if self.refine_channels:  # smooths seams between patches: shapes stay shapes
      x = ResBlock(c, self.groups, self.dtype, name="refine")(x)
      x = nn.GroupNorm(num_groups=min(self.groups, c), dtype=self.dtype, name="norm_out")(x)
      x = nn.Conv(3, (3, 3), dtype=jnp.float32, name="conv_out")(nn.silu(x))
    return x.astype(jnp.float32)


def last_layer(pix_params) -> str:
  """The name of a pixel decoder's last layer (the adversarial weight's W): `conv_out` (the
  conv decoder, a ViT decoder with a refine block) or `proj_out` (a plain ViT decoder)."""
  for name in ("conv_out", "proj_out"):
    if name in pix_params:
      return name
  raise ValueError(f"no conv_out / proj_out among the pixel decoder's {sorted(pix_params)}")


def make_pixel_decoder(cfg, dtype=jnp.float32) -> nn.Module:
  """From config: cfg.type in {"conv", "vit"} plus that type's fields."""
  if cfg.type == "conv":
    return ConvDecoder(
        ch=cfg.ch,
        ch_mult=tuple(cfg.ch_mult),
        num_res_blocks=cfg.num_res_blocks,
        mid_attention=cfg.mid_attention,
        groups=cfg.groups,
        dtype=dtype,
    )
  if cfg.type == "vit":
    return ViTDecoder(
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        patch_size=cfg.patch_size,
        refine_channels=cfg.refine_channels,
        groups=cfg.groups,
        dtype=dtype,
    )
  raise ValueError(f"Unknown pixel decoder type {cfg.type!r} (expected 'conv' or 'vit').")

"""SigLIP / SigLIP2 vision tower (the PS-VAE paper's second representation encoder).

Mirrors Hugging Face's ``SiglipVisionModel`` and ``Siglip2VisionModel`` up to the last hidden
state (``post_layernorm`` of the encoder's output; the attention-pooling head is not used):
patch embedding (a p x p stride-p conv; Siglip2's linear map on (row, column, channel)-flattened
patches is the same map), a learned position embedding on a G x G grid with no CLS token,
pre-LN blocks (``vit.Block`` without LayerScale, tanh-GELU MLP), a final LayerNorm.

Position embeddings on another grid are resized as transformers does: SigLIP with torch's
bicubic ``interpolate`` (``interpolate_pos_encoding=True``), Siglip2 with bilinear antialiased
``interpolate`` to each image's (rows, columns) of patches (``resize_positional_embeddings``).

Inputs are images normalised with SigLIP's mean 0.5 / std 0.5 (pixels in [-1, 1]); the call
returns patch tokens on the grid, like ``vit.DinoV2``, so the PS-VAE can use either encoder.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from psvae_jax.models import vit

_INIT = nn.initializers.truncated_normal(stddev=0.02)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


class SiglipVision(nn.Module):
  """SigLIP (``pos_resize="bicubic"``) or SigLIP2 (``"bilinear_aa"``) vision tower.

  Attributes:
    hidden_size: token width D.
    num_layers: transformer blocks.
    num_heads: attention heads.
    mlp_dim: the MLP's hidden width (``intermediate_size``).
    patch_size: patch side p.
    pos_grid: side G of the stored position-embedding grid (num_patches = G * G).
    layer_norm_eps: LayerNorm epsilon.
    pos_resize: how position embeddings reach another grid: "bicubic" (SigLIP) or
      "bilinear_aa" (SigLIP2).
    dtype: compute dtype; parameters are always float32.
  """

  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  patch_size: int = 16
  pos_grid: int = 16
  layer_norm_eps: float = 1e-6
  pos_resize: str = "bilinear_aa"
  dtype: Any = jnp.float32

  # The block settings E_s copies (models/autoencoder.SemanticEncoder).
  mlp_ratio = 4.0
  layerscale_init = None
  use_swiglu = False
  gelu_approximate = True

  @nn.compact
  def __call__(self, images: jax.Array, with_stream: bool = False):
    """(B, H, W, 3) SigLIP-normalised images -> (B, H // p, W // p, D) patch tokens after the
    final LayerNorm; with ``with_stream`` also the tokens before it (``vit.DinoV2``'s contract).
    """
    if self.pos_resize not in ("bicubic", "bilinear_aa"):
      raise ValueError(f"pos_resize={self.pos_resize!r}: bicubic (SigLIP) or bilinear_aa.")
    d, p, g = self.hidden_size, self.patch_size, self.pos_grid
    b = images.shape[0]
    x = nn.Conv(
        d,
        (p, p),
        strides=(p, p),
        padding="VALID",
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=_INIT,
        name="patch_embed",
    )(
        images.astype(self.dtype)
    )  # (B, gh, gw, D)
    gh, gw = x.shape[1], x.shape[2]
    pos = self.param("pos_embed", _INIT, (g * g, d), jnp.float32)  # (G*G, D)
    if (gh, gw) != (g, g):
      bilinear = self.pos_resize == "bilinear_aa"
      pos = vit.interpolate_pos_embed_bicubic(
          pos.reshape(g, g, d),
          (gh, gw),
          antialias=bilinear,
          mode="bilinear" if bilinear else "bicubic",
      ).reshape(gh * gw, d)
    x = x.reshape(b, gh * gw, d) + pos.astype(self.dtype)[None]  # (B, N, D)
    for i in range(self.num_layers):
      x = vit.Block(
          hidden_size=d,
          num_heads=self.num_heads,
          mlp_dim=self.mlp_dim,
          layerscale_init=None,
          layer_norm_eps=self.layer_norm_eps,
          gelu_approximate=True,
          dtype=self.dtype,
          name=f"layer_{i}",
      )(x)
    stream = x.reshape(b, gh, gw, d)
    x = nn.LayerNorm(
        epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=jnp.float32, name="norm"
    )(x)
    x = x.reshape(b, gh, gw, d)  # (B, gh, gw, D)
    return (x, stream) if with_stream else x


def siglip_config(size: str, version: int = 2) -> dict[str, Any]:
  """Module kwargs of SigLIP(2) vision sizes: "B" (base, patch 16, 224 px), "so400m" (patch
  14, 224 px: 16 x 16 tokens like DINOv2 at 224) or "tiny" (CPU tests)."""
  table = {
      "B": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, patch_size=16),
      "so400m": dict(hidden_size=1152, num_layers=27, num_heads=16, mlp_dim=4304, patch_size=14),
      "tiny": dict(hidden_size=64, num_layers=3, num_heads=2, mlp_dim=160, patch_size=4),
  }
  if size not in table:
    raise ValueError(f"Unknown SigLIP size {size!r}; expected one of {list(table)}")
  kw = dict(
      table[size], layer_norm_eps=1e-6, pos_resize="bilinear_aa" if version == 2 else "bicubic"
  )
  kw["pos_grid"] = (32 if size == "tiny" else 224) // kw["patch_size"]
  return kw

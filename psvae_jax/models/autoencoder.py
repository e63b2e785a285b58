"""The PS-VAE: frozen-able representation encoder E, semantic encoder E_s, decoders D_s, D_p.

Shapes: images (B, H, W, 3) in [-1, 1] -> features f (B, h, w, d) -> latent z (B, h, w, C)
-> reconstructed features (B, h, w, d) and pixels (B, H', W', 3).

What E_s reads: the encoder's residual stream after its last block, *before* the final
LayerNorm (`stream`), not the normed features f. E_s's blocks start as copies of the
encoder's last blocks (and its norm as a copy of the encoder's final LayerNorm), which
were trained on that un-normalised stream (DINOv2's residual stream has a large,
token-dependent scale that the final LayerNorm removes). The semantic target D_s must
reproduce stays f, the normed output (the DINOv2 features of the weights API contract).
Every path that encodes (training loss, eval, `encode` for stage 3 and the API) goes
through `encoder_outputs` / `encode`, so all of them feed E_s the same stream.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from psvae_jax.models import vit
from psvae_jax.models.layers import sincos_2d

IMAGENET_MEAN = jnp.array([0.485, 0.456, 0.406], jnp.float32)
IMAGENET_STD = jnp.array([0.229, 0.224, 0.225], jnp.float32)


class SemanticEncoder(nn.Module):
  """E_s: transformer blocks on the encoder's tokens, then a linear map to (mu, logvar)."""

  hidden_size: int
  num_heads: int
  num_blocks: int
  latent_channels: int
  mlp_ratio: float = 4.0
  layerscale_init: float | None = 1.0
  use_swiglu: bool = False
  layer_norm_eps: float = 1e-6
  gelu_approximate: bool = False
  mlp_dim: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, stream):  # (B, h, w, d): the encoder's pre-final-LayerNorm patch tokens
    b, h, w, d = stream.shape
    x = stream.reshape(b, h * w, d).astype(self.dtype)
    for i in range(self.num_blocks):
      x = vit.Block(
          hidden_size=self.hidden_size,
          num_heads=self.num_heads,
          mlp_ratio=self.mlp_ratio,
          layerscale_init=self.layerscale_init,
          use_swiglu=self.use_swiglu,
          layer_norm_eps=self.layer_norm_eps,
          gelu_approximate=self.gelu_approximate,
          mlp_dim=self.mlp_dim,
          dtype=self.dtype,
          name=f"block{i}",
      )(x)
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
    moments = nn.Dense(
        2 * self.latent_channels,
        dtype=jnp.float32,
        name="to_moments",
        kernel_init=nn.initializers.zeros_init(),
    )(x)
    mu, logvar = jnp.split(moments.astype(jnp.float32).reshape(b, h, w, -1), 2, axis=-1)
    return mu, jnp.clip(logvar, -30.0, 20.0)  # (B, h, w, C) each


class SemanticDecoder(nn.Module):
  """D_s: linear C -> d (+ 2-D position embedding), transformer blocks, back to d."""

  hidden_size: int
  num_heads: int
  num_blocks: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z):  # (B, h, w, C)
    b, h, w, _ = z.shape
    d = self.hidden_size
    x = nn.Dense(d, dtype=self.dtype, name="proj_in")(z.astype(self.dtype)).reshape(b, h * w, d)
    x = x + sincos_2d(h, w, d).astype(self.dtype)
    for i in range(self.num_blocks):
      x = vit.Block(
          hidden_size=d,
          num_heads=self.num_heads,
          mlp_ratio=self.mlp_ratio,
          layerscale_init=None,
          dtype=self.dtype,
          name=f"block{i}",
      )(x)
    x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)
    x = nn.Dense(d, dtype=jnp.float32, name="proj_out")(x)
    return x.reshape(b, h, w, d)


class PSVAE(nn.Module):
  """Holds the four parts; each method touches only the params it needs.

  Attributes:
    encoder: the representation encoder (vit.DinoV2 or siglip.SiglipVision).
    sem_enc, sem_dec, pix_dec: E_s, D_s, D_p.
    encoder_image_size: encoder input side (e.g. 224); images are resized to it.
    encoder_norm: the encoder's input normalisation: "imagenet" (DINOv2's mean / std) or
      "siglip" (mean 0.5, std 0.5: pixels in [-1, 1]).
  """

  encoder: nn.Module
  sem_enc: nn.Module
  sem_dec: nn.Module
  pix_dec: nn.Module
  encoder_image_size: int
  encoder_norm: str = "imagenet"

  def _encoder_input(self, images: jax.Array) -> jax.Array:  # (B, H, W, 3) in [-1, 1]
    b, h, w, c = images.shape
    s = self.encoder_image_size
    x = images.astype(jnp.float32)
    if (h, w) != (s, s):
      x = jax.image.resize(x, (b, s, s, c), method="bilinear", antialias=True)
    if self.encoder_norm == "siglip":
      return x  # ((x + 1) / 2 - 0.5) / 0.5
    if self.encoder_norm != "imagenet":
      raise ValueError(f"encoder_norm={self.encoder_norm!r}: imagenet or siglip")
    return ((x + 1.0) * 0.5 - IMAGENET_MEAN) / IMAGENET_STD

  def features(self, images: jax.Array) -> jax.Array:
    """The semantic features f (B, h, w, d): the encoder's output after its final LayerNorm.

    This is the semantic target (DINOv2's patch features); E_s does not read it (see
    `encoder_outputs`).
    """
    return self.encoder(self._encoder_input(images))

  def encoder_outputs(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(f, stream): the normed features f and the pre-final-LayerNorm stream E_s reads.

    Both (B, h, w, d), from one encoder pass.
    """
    return self.encoder(self._encoder_input(images), with_stream=True)

  def encode_features(self, stream: jax.Array) -> tuple[jax.Array, jax.Array]:
    """E_s on the encoder's pre-final-LayerNorm stream (from `encoder_outputs`), not on f."""
    return self.sem_enc(stream)

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns the posterior (mu, logvar), each (B, h, w, C)."""
    _, stream = self.encoder_outputs(images)
    return self.sem_enc(stream)

  def decode_features(self, z: jax.Array) -> jax.Array:
    return self.sem_dec(z)

  def decode(self, z: jax.Array) -> jax.Array:
    """Latent (B, h, w, C) -> image (B, H', W', 3)."""
    return self.pix_dec(z)

  def __call__(self, images: jax.Array, rng: jax.Array | None = None):
    """Full pass used for init: features, posterior sample, both reconstructions."""
    f, stream = self.encoder_outputs(images)
    mu, logvar = self.sem_enc(stream)
    z = mu if rng is None else reparameterize(rng, mu, logvar)
    return f, mu, logvar, self.sem_dec(z), self.pix_dec(z)


def reparameterize(rng: jax.Array, mu: jax.Array, logvar: jax.Array) -> jax.Array:
  return mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape, mu.dtype)

"""A wide DDT head (RAE's DiT^DH; Wang et al. 2025, "DDT: Decoupled Diffusion Transformer"): a few
wide adaLN-Zero blocks that predict the velocity from the noisy latent, conditioned per token on a
backbone's output and on the timestep.

The backbone (the shared text-and-latent blocks, or a DiT) reads the noisy latent and the
condition and produces one state per latent token; the head re-reads the noisy latent's patches
at its own width and modulates every block with ``Dense(backbone state) + t embedding`` of that
token (per-token adaLN, dit.DiTBlock with (B, N, D) conditioning), then a zero-initialised linear
layer maps each token to its patch of the prediction.
"""

from __future__ import annotations

# The DiT's dense layer and initialisers (dit._dense, dit._XAVIER, ...) are shared on purpose.
# pylint: disable=protected-access

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from psvae_jax.models import dit
from psvae_jax.models import layers


def patchify(x: jax.Array, p: int) -> jax.Array:
  """(B, h, w, C) -> (B, (h/p)(w/p), p·p·C), row-major tokens."""
  b, h, w, c = x.shape
  if h % p or w % p:
    raise ValueError(f"Latent {h}x{w} is not divisible by patch size {p}.")
  gh, gw = h // p, w // p
  return x.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * c)


def unpatchify(tokens: jax.Array, h: int, w: int, p: int) -> jax.Array:
  """(B, (h/p)(w/p), p·p·C) -> (B, h, w, C)."""
  b, _, f = tokens.shape
  c = f // (p * p)
  x = tokens.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


class DDTHead(nn.Module):
  """noisy latent (B, h, w, C), backbone states (B, N, D_b), model time (B,) -> (B, h, w, C_out).

  Attributes:
    width, depth, num_heads, mlp_ratio: the head's blocks (wide and shallow: RAE's DiT^DH-XL uses
      width 2048, depth 2).
    patch_size: p, as the backbone's (N = (h/p)(w/p)).
    out_channels: C_out (0: the latent's C).
    freq_dim: sinusoidal timestep embedding size.
    dtype, attention_impl: as dit.DiT.
  """

  width: int
  depth: int = 2
  num_heads: int = 16
  mlp_ratio: float = 4.0
  patch_size: int = 1
  out_channels: int = 0
  freq_dim: int = 256
  dtype: Any = jnp.float32
  attention_impl: str | None = None

  def _dense(self, features, name, init=dit._XAVIER):
    return dit._dense(features, name, self.dtype, init)

  @nn.compact
  def __call__(self, x: jax.Array, states: jax.Array, t: jax.Array) -> jax.Array:
    b, h, w, ch = x.shape
    p, out_ch = self.patch_size, self.out_channels or x.shape[-1]
    tokens = self._dense(self.width, "patch_embed")(patchify(x, p).astype(self.dtype))
    if states.shape[1] != tokens.shape[1]:
      raise ValueError(f"DDT head: {states.shape[1]} backbone states for {tokens.shape[1]} tokens.")
    tokens = tokens + jnp.asarray(layers.sincos_2d(h // p, w // p, self.width), self.dtype)[None]
    t_emb = dit.timestep_embedding(t, self.freq_dim)
    t_emb = self._dense(self.width, "t_fc2")(
        nn.silu(self._dense(self.width, "t_fc1", dit._NORMAL)(t_emb))
    )
    c = self._dense(self.width, "cond_proj")(states.astype(self.dtype)) + t_emb[:, None]
    for i in range(self.depth):
      tokens = dit.DiTBlock(
          self.width,
          self.num_heads,
          self.mlp_ratio,
          dtype=self.dtype,
          attention_impl=self.attention_impl,
          name=f"blocks_{i}",
      )(tokens, c)
    zero = nn.initializers.zeros
    shift, scale = jnp.split(
        self._dense(2 * self.width, "final_adaLN", zero)(nn.silu(c)).astype(jnp.float32), 2, -1
    )
    norm = nn.LayerNorm(1e-6, use_bias=False, use_scale=False, dtype=jnp.float32, name="final_norm")
    tokens = dit.modulate(norm(tokens), shift, scale)
    out = dit._dense(p * p * out_ch, "final_linear", jnp.float32, zero)(tokens)
    del ch
    return unpatchify(out, h, w, p).astype(jnp.float32)

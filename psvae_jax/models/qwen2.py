"""Qwen2 (the decoder stack of Qwen2 / Qwen2.5 language models) as a linen module.

A port of transformers' ``Qwen2Model`` (weights imported by ``psvae_jax.weights.qwen2``): token
embeddings, ``num_layers`` pre-norm blocks (RMSNorm; grouped-query self-attention with q/k/v
biases and no output bias, rotary position embedding with the config's theta; a SwiGLU MLP
``down(silu(gate(x)) * up(x))``) and a final RMSNorm. ``Qwen2Model(input_ids, attention_mask)``
returns the last hidden state, as ``Qwen2Model(...).last_hidden_state``: causal attention over the
tokens with the padding (``attention_mask`` 0) masked as keys; positions 0..L-1 (transformers'
default, whatever the padding).

The blocks also run on given embeddings with given positions and mask (``inputs_embeds``,
``positions``, ``mask``): what a model that puts other tokens through the same blocks needs (the
text-and-latent generator), and take a cache of earlier tokens' keys and values. Parameters are
float32; ``dtype`` sets the compute dtype; the RMSNorm (T5's: float32 statistics and scale, one
rounding to ``dtype``), the attention logits and softmax are float32. No dropout.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from psvae_jax.models import attention
from psvae_jax.models import text_encoders

_INIT = nn.initializers.normal(stddev=0.02)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """(cos, sin), each float32 (..., head_dim), of rotary embedding at integer `positions` (...):
  frequencies theta^(-2i / head_dim), the two halves repeated (transformers' default rope)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (..., head_dim / 2)
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x (B, L, N, D) rotated: x cos + rotate_half(x) sin, with cos/sin (B, L, D)."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  out = x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin
  return out.astype(x.dtype)


def causal_mask(attention_mask: jax.Array) -> jax.Array:
  """(B, L) key padding (1 = token) -> (B, 1, L, L) bool: query i sees keys j <= i that are
  tokens."""
  length = attention_mask.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), bool))
  return (causal[None] & attention_mask.astype(bool)[:, None, :])[:, None]


class Qwen2Attention(nn.Module):
  """Grouped-query self-attention: `num_heads` query heads share `num_kv_heads` key/value heads;
  q/k/v projections with biases, o_proj without; rotary embedding on q and k."""

  num_heads: int
  num_kv_heads: int
  head_dim: int
  dtype: Any = jnp.float32
  attention_impl: str = ""

  @nn.compact
  def __call__(self, x, cos, sin, mask, prefix=None):
    """x (B, L, d) -> (out (B, L, d), (k, v) of these tokens, each (B, L, KV, D) after RoPE).

    prefix: (k, v) of earlier tokens (a cache), prepended to the keys and values; `mask` is then
    (B, 1, L, L_prefix + L)."""
    b, l, d = x.shape
    dense = lambda f, bias, name: nn.Dense(
        f, use_bias=bias, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_INIT, name=name
    )
    q = dense(self.num_heads * self.head_dim, True, "q_proj")(x)
    k = dense(self.num_kv_heads * self.head_dim, True, "k_proj")(x)
    v = dense(self.num_kv_heads * self.head_dim, True, "v_proj")(x)
    q = apply_rope(q.reshape(b, l, self.num_heads, self.head_dim), cos, sin)
    k = apply_rope(k.reshape(b, l, self.num_kv_heads, self.head_dim), cos, sin)
    v = v.reshape(b, l, self.num_kv_heads, self.head_dim)
    own = (k, v)
    if prefix is not None:
      k = jnp.concatenate([prefix[0].astype(k.dtype), k], axis=1)
      v = jnp.concatenate([prefix[1].astype(v.dtype), v], axis=1)
    groups = self.num_heads // self.num_kv_heads
    if groups > 1:  # each key/value head serves `groups` query heads (as transformers repeats)
      k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    out = attention.dot_product_attention(q, k, v, mask=mask, implementation=self.attention_impl)
    return dense(d, False, "o_proj")(out.reshape(b, l, self.num_heads * self.head_dim)), own


class Qwen2MLP(nn.Module):
  intermediate_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda f, name: nn.Dense(
        f, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_INIT, name=name
    )
    h = nn.silu(dense(self.intermediate_size, "gate_proj")(x)) * dense(
        self.intermediate_size, "up_proj"
    )(x)
    return dense(x.shape[-1], "down_proj")(h)


class Qwen2Block(nn.Module):
  """x + attn(norm(x)), then + mlp(norm(.)) (transformers' ``Qwen2DecoderLayer``)."""

  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  rms_norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  attention_impl: str = ""

  @nn.compact
  def __call__(self, x, cos, sin, mask, prefix=None):
    """-> (x after the block, this block's (k, v) of x's tokens); prefix: cached (k, v)."""
    norm = lambda name: text_encoders.T5LayerNorm(self.rms_norm_eps, self.dtype, name=name)
    a, kv = Qwen2Attention(
        self.num_heads,
        self.num_kv_heads,
        self.head_dim,
        self.dtype,
        self.attention_impl,
        name="self_attn",
    )(norm("input_layernorm")(x), cos, sin, mask, prefix)
    h = x + a
    mlp = Qwen2MLP(self.intermediate_size, self.dtype, name="mlp")
    return h + mlp(norm("post_attention_layernorm")(h)), kv


class Qwen2Model(nn.Module):
  """The Qwen2 decoder stack (see the module docstring).

  Attributes:
    vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads: the config's
      (num_heads divisible by num_kv_heads; head_dim = hidden_size / num_heads).
    rope_theta: the rotary base.
    rms_norm_eps: RMSNorm epsilon.
    dtype: compute dtype; attention_impl: as models/attention.py.
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  attention_impl: str = ""

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def setup(self):
    if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"Qwen2: hidden_size {self.hidden_size} / num_heads {self.num_heads} / num_kv_heads "
          f"{self.num_kv_heads} must divide evenly."
      )
    self.embed_tokens = nn.Embed(
        self.vocab_size, self.hidden_size, embedding_init=_INIT, param_dtype=jnp.float32
    )
    self.layers = [
        Qwen2Block(
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.intermediate_size,
            self.rms_norm_eps,
            self.dtype,
            self.attention_impl,
            name=f"layers_{i}",
        )
        for i in range(self.num_layers)
    ]
    self.norm = text_encoders.T5LayerNorm(self.rms_norm_eps, self.dtype)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    return self.embed_tokens(input_ids).astype(self.dtype)

  def __call__(
      self,
      input_ids: jax.Array | None = None,
      attention_mask: jax.Array | None = None,
      *,
      inputs_embeds: jax.Array | None = None,
      positions: jax.Array | None = None,
      mask: jax.Array | None = None,
      prefix: list | None = None,
      return_cache: bool = False,
  ):
    """Token ids (B, L) (or `inputs_embeds` (B, L, d)) -> the final-norm hidden states (B, L, d).

    attention_mask: (B, L), 1 = token (default all); with causal attention unless `mask`
    (B, 1, L, L) bool, query x key, is given. positions: (B, L) integers (default 0..L-1).
    prefix: a cache of earlier tokens (per layer (k, v), as `return_cache` gives it): those tokens
    are not recomputed, only attended to; `mask` is then (B, 1, L, L_prefix + L).
    return_cache: also return this call's per-layer (k, v) of its tokens."""
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
    b, l = x.shape[:2]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    if mask is None:
      keys = jnp.ones((b, l), bool) if attention_mask is None else attention_mask
      mask = causal_mask(keys)
    cos, sin = rope_tables(positions, self.head_dim, self.rope_theta)
    cache = []
    for i, layer in enumerate(self.layers):
      x, kv = layer(x, cos, sin, mask, None if prefix is None else prefix[i])
      cache.append(kv)
    x = self.norm(x)
    return (x, cache) if return_cache else x

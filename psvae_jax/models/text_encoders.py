"""Frozen text encoders for conditioning: the CLIP text transformer and the T5 encoder.

Flax linen ports of transformers' ``CLIPTextModel`` and ``T5EncoderModel``
(weights imported by ``psvae_jax.weights.clip`` / ``psvae_jax.weights.t5``).
Both take ``(input_ids (B, L) int, attention_mask (B, L))`` and return
``(hidden (B, L, d), pooled (B, d))``; element 0 is the token-state output of the
weights-API contract (DESIGN.md §3), element 1 the vector added to the DiT's
timestep embedding.

* CLIP: pooled is the final-LayerNorm state at the EOS token, picked exactly as
  transformers 5 does: the first position whose id equals ``eos_token_id``, or,
  for legacy configs with ``eos_token_id == 2``, the position of the largest id.
* T5 has no pooled output; pooled is the mean of the final states over the
  positions where ``attention_mask`` is 1.

Attention runs through ``attention.dot_product_attention`` (jax.nn's contract) with a boolean
mask (CLIP: causal AND padding; T5: padding) and, for T5, the shared relative position bias
passed as ``bias`` with ``scale=1.0`` (T5 does not scale by 1/sqrt(d)). Parameters
are float32; ``dtype`` sets the compute dtype. There is no dropout: the encoders
are used frozen.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from psvae_jax.models import attention

_INIT = nn.initializers.normal(stddev=0.02)


def _quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": _quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation transformers' ``ACT2FN[name]`` computes."""
  if name not in ACTIVATIONS:
    raise ValueError(f"Unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def _padding_mask(attention_mask: jax.Array | None, input_ids: jax.Array) -> jax.Array:
  """(B, L) bool key mask; all True when ``attention_mask`` is None."""
  if attention_mask is None:
    return jnp.ones(input_ids.shape, bool)
  return jnp.asarray(attention_mask).astype(bool)


class SelfAttention(nn.Module):
  """Multi-head self-attention with ``q_proj``/``k_proj``/``v_proj``/``o_proj``.

  Attributes:
    num_heads: number of heads N.
    head_dim: per-head width H (inner width N*H may differ from the model width).
    use_bias: whether the projections have biases (CLIP yes, T5 no).
    scale: logit scale; None means 1/sqrt(H).
    dtype: compute dtype.
  """

  num_heads: int
  head_dim: int
  use_bias: bool = True
  scale: float | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    b, l, d = x.shape
    inner = self.num_heads * self.head_dim
    dense = lambda f, name: nn.Dense(
        f,
        use_bias=self.use_bias,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=_INIT,
        name=name,
    )
    shape = (b, l, self.num_heads, self.head_dim)
    q = dense(inner, "q_proj")(x).reshape(shape)  # (B, L, N, H)
    k = dense(inner, "k_proj")(x).reshape(shape)
    v = dense(inner, "v_proj")(x).reshape(shape)
    if bias is not None:
      bias = bias.astype(q.dtype)
    out = attention.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=self.scale
    )  # (B, L, N, H)
    return dense(d, "o_proj")(out.reshape(b, l, inner))  # (B, L, D)


def _layer_norm(eps: float, dtype: Any, name: str) -> nn.LayerNorm:
  # Two-pass variance, as torch computes it.
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name
  )


class CLIPEncoderLayer(nn.Module):
  """CLIP pre-LN layer: ``x + attn(ln1(x))``, then ``+ fc2(act(fc1(ln2(x))))``."""

  hidden_size: int
  num_heads: int
  intermediate_size: int
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    dense = lambda f, name: nn.Dense(
        f, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_INIT, name=name
    )
    h = _layer_norm(self.layer_norm_eps, self.dtype, "layer_norm1")(x)
    x = x + SelfAttention(
        self.num_heads,
        self.hidden_size // self.num_heads,
        use_bias=True,
        dtype=self.dtype,
        name="self_attn",
    )(h, mask)
    h = _layer_norm(self.layer_norm_eps, self.dtype, "layer_norm2")(x)
    h = activation(self.hidden_act)(dense(self.intermediate_size, "fc1")(h))
    return x + dense(self.hidden_size, "fc2")(h)  # (B, L, d)


class CLIPTextTransformer(nn.Module):
  """transformers' ``CLIPTextModel``: embeddings, pre-LN causal layers, final LN.

  Attributes:
    vocab_size: token vocabulary size.
    hidden_size: model width d.
    num_layers: number of encoder layers.
    num_heads: attention heads.
    intermediate_size: MLP hidden width.
    max_position_embeddings: number of learned positions (L must not exceed it).
    hidden_act: MLP activation name (``quick_gelu`` for OpenAI CLIP, ``gelu``).
    layer_norm_eps: LayerNorm epsilon.
    eos_token_id: selects the pooled position (see the module docstring).
    dtype: compute dtype; parameters are float32.
  """

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  eos_token_id: int = 49407
  dtype: Any = jnp.float32

  def _norm(self, name: str) -> nn.LayerNorm:
    return _layer_norm(self.layer_norm_eps, self.dtype, name)

  @nn.compact
  def __call__(
      self, input_ids: jax.Array, attention_mask: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """Encodes token ids.

    Args:
      input_ids: (B, L) integer token ids, L <= max_position_embeddings.
      attention_mask: (B, L), 1 for real tokens and 0 for padding (None: all 1).

    Returns:
      ``(hidden (B, L, d), pooled (B, d))``: the final-LayerNorm token states
      and the state at the EOS token.
    """
    _, length = input_ids.shape
    if length > self.max_position_embeddings:
      raise ValueError(
          f"Sequence length {length} exceeds max_position_embeddings "
          f"{self.max_position_embeddings}."
      )
    tokens = nn.Embed(
        self.vocab_size,
        self.hidden_size,
        embedding_init=_INIT,
        param_dtype=jnp.float32,
        name="token_embedding",
    )
    positions = self.param(
        "position_embedding", _INIT, (self.max_position_embeddings, self.hidden_size), jnp.float32
    )
    x = tokens(input_ids) + positions[None, :length]  # (B, L, d) float32
    x = x.astype(self.dtype)

    keys = _padding_mask(attention_mask, input_ids)  # (B, L)
    causal = jnp.tril(jnp.ones((length, length), bool))  # (L, L)
    mask = causal[None, None] & keys[:, None, None, :]  # (B, 1, L, L)

    for i in range(self.num_layers):
      x = CLIPEncoderLayer(
          self.hidden_size,
          self.num_heads,
          self.intermediate_size,
          self.hidden_act,
          self.layer_norm_eps,
          self.dtype,
          name=f"layers_{i}",
      )(x, mask)
    hidden = self._norm("final_layer_norm")(x)  # (B, L, d)

    ids = input_ids.astype(jnp.int32)
    if self.eos_token_id == 2:  # Legacy configs: the EOS id is the largest id.
      eos_pos = jnp.argmax(ids, axis=-1)
    else:  # First occurrence of the EOS id (pad may equal EOS).
      eos_pos = jnp.argmax((ids == self.eos_token_id).astype(jnp.int32), axis=-1)
    pooled = jnp.take_along_axis(hidden, eos_pos[:, None, None], axis=1)[:, 0]
    return hidden, pooled  # (B, L, d), (B, d)


class T5LayerNorm(nn.Module):
  """RMS LayerNorm without mean subtraction or bias (statistics in float32)."""

  eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (scale * (x32 * jax.lax.rsqrt(var + self.eps))).astype(self.dtype)


def relative_position_bucket(
    relative_position: jax.Array, num_buckets: int, max_distance: int
) -> jax.Array:
  """T5's bidirectional bucketing of ``memory_position - query_position``.

  Half the buckets hold positive offsets; within each half, offsets below
  ``num_buckets // 4`` get their own bucket and larger ones share log-spaced
  buckets up to ``max_distance``.
  """
  num_buckets //= 2
  buckets = (relative_position > 0).astype(jnp.int32) * num_buckets
  rel = jnp.abs(relative_position)
  max_exact = num_buckets // 2
  is_small = rel < max_exact
  safe = jnp.maximum(rel, 1).astype(jnp.float32)  # log(0) is never selected.
  large = max_exact + (
      jnp.log(safe / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, rel, large)


class T5Block(nn.Module):
  """T5 encoder block: ``x + attn(norm(x))`` then ``+ ff(norm(x))``, no biases."""

  d_model: int
  d_kv: int
  d_ff: int
  num_heads: int
  is_gated_act: bool = False
  dense_act_fn: str = "relu"
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, bias: jax.Array) -> jax.Array:
    dense = lambda f, name: nn.Dense(
        f, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_INIT, name=name
    )
    h = T5LayerNorm(self.layer_norm_epsilon, self.dtype, name="attn_norm")(x)
    x = x + SelfAttention(
        self.num_heads, self.d_kv, use_bias=False, scale=1.0, dtype=self.dtype, name="attn"
    )(h, mask, bias)
    h = T5LayerNorm(self.layer_norm_epsilon, self.dtype, name="ff_norm")(x)
    act = activation(self.dense_act_fn)
    if self.is_gated_act:
      h = act(dense(self.d_ff, "wi_0")(h)) * dense(self.d_ff, "wi_1")(h)
    else:
      h = act(dense(self.d_ff, "wi")(h))
    return x + dense(self.d_model, "wo")(h)  # (B, L, d)


class T5Encoder(nn.Module):
  """transformers' ``T5EncoderModel`` (T5 v1.0 relu and v1.1 gated-gelu variants).

  Attributes:
    vocab_size: token vocabulary size.
    d_model: model width d.
    d_kv: per-head width.
    d_ff: feed-forward width.
    num_layers: encoder blocks.
    num_heads: attention heads.
    relative_attention_num_buckets: buckets of the shared position bias.
    relative_attention_max_distance: distance of the last bucket.
    is_gated_act: gated feed-forward (``wi_0``/``wi_1``) instead of ``wi``.
    dense_act_fn: feed-forward activation (``relu``; ``gelu_new`` for gated-gelu).
    layer_norm_epsilon: RMS-norm epsilon.
    dtype: compute dtype; parameters are float32.
  """

  vocab_size: int
  d_model: int
  d_kv: int
  d_ff: int
  num_layers: int
  num_heads: int
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  is_gated_act: bool = False
  dense_act_fn: str = "relu"
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32

  def _position_bias(self, length: int) -> jax.Array:
    table = self.param(
        "relative_attention_bias",
        _INIT,
        (self.relative_attention_num_buckets, self.num_heads),
        jnp.float32,
    )
    pos = jnp.arange(length)
    bucket = relative_position_bucket(
        pos[None, :] - pos[:, None],
        self.relative_attention_num_buckets,
        self.relative_attention_max_distance,
    )  # (L, L)
    return jnp.transpose(table[bucket], (2, 0, 1))[None]  # (1, N, L, L)

  @nn.compact
  def __call__(
      self, input_ids: jax.Array, attention_mask: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """Encodes token ids.

    Args:
      input_ids: (B, L) integer token ids.
      attention_mask: (B, L), 1 for real tokens and 0 for padding (None: all 1).

    Returns:
      ``(hidden (B, L, d), pooled (B, d))``: the final-norm token states and
      their mean over the unmasked positions.
    """
    _, length = input_ids.shape
    shared = nn.Embed(
        self.vocab_size, self.d_model, embedding_init=_INIT, param_dtype=jnp.float32, name="shared"
    )
    x = shared(input_ids).astype(self.dtype)  # (B, L, d)
    keys = _padding_mask(attention_mask, input_ids)  # (B, L)
    mask = keys[:, None, None, :]  # (B, 1, 1, L)
    bias = self._position_bias(length)  # (1, N, L, L), shared by all blocks
    for i in range(self.num_layers):
      x = T5Block(
          self.d_model,
          self.d_kv,
          self.d_ff,
          self.num_heads,
          self.is_gated_act,
          self.dense_act_fn,
          self.layer_norm_epsilon,
          self.dtype,
          name=f"block_{i}",
      )(x, mask, bias)
    hidden = T5LayerNorm(self.layer_norm_epsilon, self.dtype, name="final_layer_norm")(
        x
    )  # (B, L, d)
    weights = keys.astype(jnp.float32)[..., None]  # (B, L, 1)
    pooled = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1) / jnp.maximum(
        jnp.sum(weights, axis=1), 1.0
    )
    return hidden, pooled.astype(hidden.dtype)  # (B, L, d), (B, d)

"""Diffusion Transformer (DiT, Peebles & Xie 2023) with adaLN-Zero blocks, text or class
conditioning.

Layout follows the DiT reference: patchify (a Dense on flattened p×p patches, equal to DiT's
stride-p conv), fixed 2-D sin-cos position embedding, N adaLN-Zero blocks, a final adaLN layer with
a zero-initialised linear head, unpatchify. The conditioning vector c = timestep embedding (+ label
embedding | + projected pooled text) drives every block's shift/scale/gate through SiLU →
Dense(6·D), zero-initialised, so every block is the identity and the output is exactly zero at
init.

Text conditioning (``cond_type="text"``) adds, PixArt-style, a pre-LN cross-attention after
self-attention in every block (not modulated; output projection zero-initialised) to the text token
states projected to width, masked by the text attention mask. Rows where ``drop`` is True use
learned null embeddings (``null_context``, ``null_pooled``) instead; class conditioning uses the
extra null label ``num_classes``. Condition dropout itself (drawing ``drop``) belongs to the
training task.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from psvae_jax.models import attention
from psvae_jax.models import layers

_XAVIER = nn.initializers.xavier_uniform()
_ZERO = nn.initializers.zeros
_NORMAL = nn.initializers.normal(stddev=0.02)
_REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

_SIZES = {  # DiT paper, Table 1: width, depth, heads.
    "tiny": dict(width=128, depth=4, num_heads=4),
    "S": dict(width=384, depth=12, num_heads=6),
    "B": dict(width=768, depth=12, num_heads=12),
    "L": dict(width=1024, depth=24, num_heads=16),
    "XL": dict(width=1152, depth=28, num_heads=16),
}


def dit_config(size: str) -> dict[str, int]:
  """``{"width", "depth", "num_heads"}`` for a DiT size: tiny, S, B, L or XL."""
  if size not in _SIZES:
    raise ValueError(f"Unknown DiT size {size!r}; choose from {sorted(_SIZES)}.")
  return dict(_SIZES[size])


def analytic_flops(
    width: int, depth: int, tokens: int, patch: int = 2, channels: int = 4, freq_dim: int = 256
) -> float:
  """Forward FLOPs of one image (2 x multiply-accumulates; bench/flops.py checks it against
  XLA's count and the DiT paper): per block 12 N D^2 + 2 N^2 D + 6 D^2 (adaLN), outside the
  blocks patchify, timestep MLP, final adaLN and head. Cross-attention to text is not counted."""
  d, n = width, tokens
  block = 12 * n * d * d + 2 * n * n * d + 6 * d * d
  outside = n * patch * patch * channels * d * 2 + freq_dim * d + d * d + 2 * d * d
  return 2.0 * (depth * block + outside)


def stack_blocks(params: dict) -> dict:
  """Unrolled DiT params (``blocks_0`` .. ``blocks_{d-1}``) -> the ``scan_blocks=True`` layout
  (``blocks/block/...`` with a leading depth axis), e.g. to continue an unrolled checkpoint in
  the scanned form."""
  names = sorted((k for k in params if k.startswith("blocks_")), key=lambda k: int(k[7:]))
  if not names:
    raise ValueError("No blocks_<i> entries: these params are not an unrolled DiT's.")
  rest = {k: v for k, v in params.items() if not k.startswith("blocks_")}
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[k] for k in names])
  return {**rest, "blocks": {"block": stacked}}


def unstack_blocks(params: dict) -> dict:
  """The inverse of :func:`stack_blocks`."""
  if "blocks" not in params:
    raise ValueError("No blocks/block entry: these params are not a scanned DiT's.")
  rest = {k: v for k, v in params.items() if k != "blocks"}
  stacked = params["blocks"]["block"]
  depth = jax.tree.leaves(stacked)[0].shape[0]
  return {
      **rest,
      **{f"blocks_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(depth)},
  }


def _dense(features: int, name: str, dtype: Any, kernel_init=_XAVIER) -> layers.Dense:
  """The DiT's dense layer (blocks and the rest): fp32 params, zero bias, compute in ``dtype``."""
  return layers.Dense(
      features,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=kernel_init,
      bias_init=_ZERO,
      name=name,
  )


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding (B,) → (B, dim) float32, [cos | sin] as in DiT's TimestepEmbedder."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # (half,)
  args = t.astype(jnp.float32)[:, None] * freqs[None]  # (B, half)
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def per_token(v: jax.Array) -> jax.Array:
  """A conditioning vector for every token: (B, D) -> (B, 1, D); (B, N, D) (per-token
  conditioning, as a DDT head's) as it is."""
  return v[:, None] if v.ndim == 2 else v


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x (B, N, D) · (1 + scale) + shift, with shift/scale (B, D) or per token (B, N, D)."""
  return x * (1.0 + per_token(scale)) + per_token(shift)


class DiTBlock(nn.Module):
  """adaLN-Zero transformer block, with optional (unmodulated, pre-LN) cross-attention to context
  tokens."""

  width: int
  num_heads: int
  mlp_ratio: float = 4.0
  cross_attention: bool = False
  dtype: Any = jnp.float32
  attention_impl: str | None = None

  def _dense(self, features: int, name: str, kernel_init=_XAVIER) -> layers.Dense:
    return _dense(features, name, self.dtype, kernel_init)

  def _norm(self, name: str, affine: bool = False) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=1e-6,
        use_bias=affine,
        use_scale=affine,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name=name,
    )

  def _attend(self, q, k, v, mask=None):
    return attention.dot_product_attention(q, k, v, mask=mask, implementation=self.attention_impl)

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      c: jax.Array,
      context: jax.Array | None = None,
      context_mask: jax.Array | None = None,
  ) -> jax.Array:
    """x (B, N, D) tokens; c (B, D) conditioning, or (B, N, D) per token; context (B, L, D)
    (already at width); mask (B, L) bool."""
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads {self.num_heads}.")
    heads, hd = self.num_heads, d // self.num_heads
    mod = self._dense(6 * d, "adaLN_modulation", _ZERO)(nn.silu(c))  # (B, 6D)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)

    h = modulate(self._norm("norm1")(x), shift_msa, scale_msa)
    qkv = self._dense(3 * d, "qkv")(h).reshape(b, n, 3, heads, hd)  # (B, N, 3, H, Dh)
    a = self._attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).reshape(b, n, d)  # (B, N, D)
    x = x + per_token(gate_msa) * self._dense(d, "attn_proj")(a)

    if self.cross_attention:
      h = self._norm("norm_cross", affine=True)(x)
      q = self._dense(d, "cross_q")(h).reshape(b, n, heads, hd)  # (B, N, H, Dh)
      kv = self._dense(2 * d, "cross_kv")(context)
      kv = kv.reshape(b, context.shape[1], 2, heads, hd)  # (B, L, 2, H, Dh)
      mask = (
          None if context_mask is None else context_mask.astype(bool)[:, None, None, :]
      )  # (B, 1, 1, L)
      a = self._attend(q, kv[:, :, 0], kv[:, :, 1], mask).reshape(b, n, d)
      x = x + self._dense(d, "cross_proj", _ZERO)(a)

    h = modulate(self._norm("norm2")(x), shift_mlp, scale_mlp)
    h = self._dense(int(d * self.mlp_ratio), "mlp_fc1")(h)
    h = self._dense(d, "mlp_fc2")(nn.gelu(h, approximate=True))
    return x + per_token(gate_mlp) * h


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
  """A wide DDT head (RAE's DiT^DH; Wang et al. 2025, "DDT: Decoupled Diffusion Transformer"):
  a few wide adaLN-Zero blocks that re-read the noisy latent's patches at their own width, each
  modulated per token by ``Dense(backbone state) + t embedding`` of that token, then a
  zero-initialised linear layer to each token's patch of the prediction.

  noisy latent (B, h, w, C), backbone states (B, N, D_b), model time (B,) -> (B, h, w, C_out).

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

  def _dense(self, features, name, init=_XAVIER):
    return _dense(features, name, self.dtype, init)

  @nn.compact
  def __call__(self, x: jax.Array, states: jax.Array, t: jax.Array) -> jax.Array:
    b, h, w, ch = x.shape
    p, out_ch = self.patch_size, self.out_channels or x.shape[-1]
    tokens = self._dense(self.width, "patch_embed")(patchify(x, p).astype(self.dtype))
    if states.shape[1] != tokens.shape[1]:
      raise ValueError(f"DDT head: {states.shape[1]} backbone states for {tokens.shape[1]} tokens.")
    tokens = tokens + jnp.asarray(layers.sincos_2d(h // p, w // p, self.width), self.dtype)[None]
    t_emb = timestep_embedding(t, self.freq_dim)
    t_emb = self._dense(self.width, "t_fc2")(
        nn.silu(self._dense(self.width, "t_fc1", _NORMAL)(t_emb))
    )
    c = self._dense(self.width, "cond_proj")(states.astype(self.dtype)) + t_emb[:, None]
    for i in range(self.depth):
      tokens = DiTBlock(
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
    tokens = modulate(norm(tokens), shift, scale)
    out = _dense(p * p * out_ch, "final_linear", jnp.float32, zero)(tokens)
    del ch
    return unpatchify(out, h, w, p).astype(jnp.float32)


class _ScanStep(nn.Module):
  """One DiTBlock as an ``nn.scan`` body: (tokens, c, context, mask) -> (tokens, None)."""

  block_kw: dict

  @nn.compact
  def __call__(self, x, c, context, context_mask):
    return DiTBlock(**self.block_kw, name="block")(x, c, context, context_mask), None


class DiT(nn.Module):
  """DiT on (B, h, w, C) latents.

  Attributes:
    width, depth, num_heads, mlp_ratio: transformer size (see ``dit_config``).
    patch_size: p; h and w must be multiples of it. Tokens: (h/p)·(w/p).
    out_channels: output channels (default: input C, or 2C with ``learn_sigma``).
    learn_sigma: output 2C channels (ε and variance), as DiT's default; off here.
    cond_type: "text" or "class".
    num_classes: class count (the embedding table has one more row, the null class).
    t_scale: the timestep embedder sees ``t · t_scale`` (1 for 0..1000 model time; 1000 to feed t
      ∈ [0, 1]).
    freq_dim: sinusoidal timestep embedding size (256 in DiT).
    dtype: compute dtype; parameters are float32; the output is float32.
    remat: rematerialise blocks in the backward pass.
    remat_policy: with ``remat``: "full" (save only block inputs) or "dots_saveable" (keep matmul
      outputs, recompute the element-wise work;
      jax.checkpoint_policies.dots_with_no_batch_dims_saveable).
    attention_impl: see ``attention.dot_product_attention`` ("" / None: the CPU path on the CPU,
      jax's default elsewhere; "cpu", "xla", "cudnn").
    scan_blocks: run the blocks as one ``nn.scan`` (params stacked under ``blocks/block`` with a
      leading depth axis; not loadable from unscanned checkpoints): one traced block, for compile
      time of deep models.
    head_width, head_depth, head_heads: > 0: a DDT head (``DDTHead``, RAE's DiT^DH) of that
      width, depth and heads replaces the final layer, conditioned per token on the blocks'
      output; 0 (default): DiT's own final layer.

  Text conditioning creates ``null_context`` with the (L, d_text) of the context seen at init: pad
  prompts to that fixed length L (as tokenizers do with ``padding="max_length"``) and mask the
  padding.
  """

  width: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  patch_size: int = 1
  out_channels: int | None = None
  learn_sigma: bool = False
  cond_type: str = "text"
  num_classes: int = 1000
  t_scale: float = 1.0
  freq_dim: int = 256
  dtype: Any = jnp.float32
  remat: bool = False
  remat_policy: str = "full"
  attention_impl: str | None = None
  scan_blocks: bool = False
  head_width: int = 0
  head_depth: int = 2
  head_heads: int = 16

  def _dense(self, features: int, name: str, kernel_init=_XAVIER) -> layers.Dense:
    return _dense(features, name, self.dtype, kernel_init)

  def _embed_time(self, t: jax.Array) -> jax.Array:
    emb = timestep_embedding(t * self.t_scale, self.freq_dim).astype(self.dtype)  # (B, F)
    emb = self._dense(self.width, "t_embed_fc1", _NORMAL)(emb)
    return self._dense(self.width, "t_embed_fc2", _NORMAL)(nn.silu(emb))  # (B, D)

  def _class_condition(self, labels: jax.Array | None, drop: jax.Array | None) -> jax.Array:
    if labels is None:
      raise ValueError("cond_type='class' needs labels.")
    if drop is not None:
      labels = jnp.where(drop, self.num_classes, labels)
    table = nn.Embed(
        self.num_classes + 1,
        self.width,
        embedding_init=_NORMAL,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name="label_embed",
    )
    return table(labels)  # (B, D)

  def _text_condition(self, context, context_mask, pooled, drop):
    """Returns (vector added to c or None, context (B, L, D), mask (B, L) or None),
    nulls applied."""
    if context is None:
      raise ValueError("cond_type='text' needs context (B, L, d_text).")
    b, length, d_text = context.shape
    null_ctx = self.param("null_context", _NORMAL, (length, d_text), jnp.float32)
    if drop is not None:
      context = jnp.where(drop[:, None, None], null_ctx[None].astype(context.dtype), context)
      if context_mask is not None:  # The null context is fully visible.
        context_mask = jnp.where(drop[:, None], True, context_mask.astype(bool))
    context = self._dense(self.width, "context_proj")(context.astype(self.dtype))  # (B, L, D)
    vec = None
    if pooled is not None:
      null_pool = self.param("null_pooled", _NORMAL, (pooled.shape[-1],), jnp.float32)
      if drop is not None:
        pooled = jnp.where(drop[:, None], null_pool[None].astype(pooled.dtype), pooled)
      vec = self._dense(self.width, "pooled_proj")(pooled.astype(self.dtype))  # (B, D)
    return vec, context, context_mask

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      t: jax.Array,
      context: jax.Array | None = None,
      context_mask: jax.Array | None = None,
      pooled: jax.Array | None = None,
      labels: jax.Array | None = None,
      drop: jax.Array | None = None,
      source: jax.Array | None = None,
      drop_source: jax.Array | None = None,
  ) -> jax.Array:
    """Predicts ε (or v) for latents.

    Args:
      x: (B, h, w, C) noisy latents.
      t: (B,) float model time (0..1000 scale unless ``t_scale`` says otherwise).
      context: text token states (B, L, d_text) ("text").
      context_mask: (B, L) text attention mask, 1/True = attend ("text").
      pooled: pooled text vector (B, d_text) ("text", optional; pass it at init iff used later).
      labels: (B,) int class labels ("class").
      drop: (B,) bool; True rows use the null condition.
      source: (B, h, w, C_s) a source image's normalised latent (instruction editing,
        InstructPix2Pix): concatenated to x along channels before patching. A model trained with
        it must always get it (its patch embedding reads C + C_s channels).
      drop_source: (B,) bool; True rows get the null source (zeros: the mean latent).

    Returns:
      (B, h, w, C_out) float32 (C_out from x's C, not the source's).
    """
    b, h, w, ch = x.shape
    out_ch = self.out_channels or (2 * ch if self.learn_sigma else ch)  # from x, not the source
    if source is not None:
      if source.shape[:3] != x.shape[:3]:
        raise ValueError(f"source latent {source.shape} does not match the latents {x.shape}.")
      if drop_source is not None:
        source = jnp.where(drop_source[:, None, None, None], jnp.zeros_like(source), source)
      x = jnp.concatenate([x, source.astype(x.dtype)], axis=-1)  # (B, h, w, C + C_s)
      ch = x.shape[-1]
    p = self.patch_size
    gh, gw = h // p, w // p
    patches = patchify(x, p)  # (B, N, p·p·C); refuses a latent not divisible by p
    tokens = self._dense(self.width, "patch_embed")(patches.astype(self.dtype))  # (B, N, D)
    tokens = tokens + jnp.asarray(layers.sincos_2d(gh, gw, self.width), self.dtype)[None]

    c = self._embed_time(t)  # (B, D)
    ctx = ctx_mask = None
    if self.cond_type == "class":
      c = c + self._class_condition(labels, drop)
    elif self.cond_type == "text":
      vec, ctx, ctx_mask = self._text_condition(context, context_mask, pooled, drop)
      if vec is not None:
        c = c + vec
    else:
      raise ValueError(f"cond_type must be 'text' or 'class', got {self.cond_type!r}.")

    if self.remat_policy not in _REMAT_POLICIES:
      raise ValueError(
          f"remat_policy must be one of {sorted(_REMAT_POLICIES)}, got {self.remat_policy!r}."
      )
    policy = _REMAT_POLICIES[self.remat_policy]
    block_kw = dict(
        width=self.width,
        num_heads=self.num_heads,
        mlp_ratio=self.mlp_ratio,
        cross_attention=ctx is not None,
        dtype=self.dtype,
        attention_impl=self.attention_impl,
    )
    if self.scan_blocks:
      step_cls = nn.remat(_ScanStep, policy=policy) if self.remat else _ScanStep
      scan = nn.scan(
          step_cls,
          variable_axes={"params": 0},
          split_rngs={"params": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
          length=self.depth,
      )
      tokens, _ = scan(block_kw, name="blocks")(tokens, c, ctx, ctx_mask)
    else:
      block_cls = nn.remat(DiTBlock, policy=policy) if self.remat else DiTBlock
      for i in range(self.depth):
        tokens = block_cls(**block_kw, name=f"blocks_{i}")(tokens, c, ctx, ctx_mask)

    if self.head_width:  # a DDT head on the noisy latent (not the source), per-token condition
      head = DDTHead(
          self.head_width,
          self.head_depth,
          self.head_heads,
          self.mlp_ratio,
          p,
          out_ch,
          self.freq_dim,
          self.dtype,
          self.attention_impl,
          name="head",
      )
      return head(
          x[..., : x.shape[-1] - (0 if source is None else source.shape[-1])],
          tokens,
          t * self.t_scale,
      )
    # Final layer: adaLN (shift, scale) + zero-initialised linear to patch outputs. The norm,
    # modulation and head run in float32 whatever self.dtype (cheap: the head is D x p·p·C), so
    # the prediction the loss compares is not rounded to bf16.
    shift, scale = jnp.split(
        self._dense(2 * self.width, "final_adaLN", _ZERO)(nn.silu(c)), 2, axis=-1
    )
    norm = nn.LayerNorm(
        epsilon=1e-6, use_bias=False, use_scale=False, dtype=jnp.float32, name="final_norm"
    )
    tokens = modulate(norm(tokens), shift.astype(jnp.float32), scale.astype(jnp.float32))
    out = _dense(p * p * out_ch, "final_linear", jnp.float32, _ZERO)(tokens)  # (B, N, p·p·C_out)
    out = unpatchify(out, h, w, p)
    return out.astype(jnp.float32)

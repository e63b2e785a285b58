"""The paper's generator: text and latent tokens through shared language-model blocks (Qwen2,
Transfusion-style), then a wide DDT head.

Sequence ``[text tokens (L) | latent tokens (N)]`` through one Qwen2 stack
(``models/qwen2.Qwen2Model``, initialised from Qwen2.5 by ``weights/qwen2.load_qwen2``):

* text tokens attend causally to the text (as the language model was trained), and never to the
  latent tokens, so their keys and values depend on neither t nor the latent (a sampler can
  compute them once per prompt);
* latent tokens attend to every text token of their prompt and to all latent tokens;
* the latent, patchified (p), is projected to the model width; the timestep embedding is added to
  the latent tokens' initial hidden states;
* positions: the latent tokens continue the text's 1-D RoPE positions (n_text, n_text + 1, ...:
  the language model's rotary geometry is kept as pretrained, as Transfusion does) and get a
  fixed 2-D sin-cos embedding added at the input (the grid, as DiT's). 2-D RoPE on the latent
  tokens would change what the pretrained heads' rotations mean for half the sequence; the added
  embedding leaves them as they are and costs nothing;
* the backbone's final-norm states of the latent tokens condition the DDT head
  (``models/dit.DDTHead``), which predicts the velocity (or ε).

Classifier-free guidance drops the text: ``drop`` rows see no text token (the empty prompt, which
a Qwen2 tokenizer encodes as no tokens), and their latent positions start at 0.

Instruction editing (``source``): the source image's latent enters the sequence as tokens, as the
paper does, ``[text | source | latent]``. The source tokens (projected by their own ``source_in``,
with the same 2-D sin-cos and the same RoPE positions as the latent tokens of their cell, no t)
see the text and the source, never the noisy latent, so their keys and values are computed once
per prompt with the text's (``text_cache``); the latent tokens see all three. ``drop_source`` rows
see no source token (two-condition guidance: the source's null).
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
from psvae_jax.models import qwen2


def sequence_mask(
    text_mask: jax.Array, num_latent: int, source_mask: jax.Array | None = None
) -> jax.Array:
  """(B, L) text tokens (1 = token) [, (B, Ns) source tokens (1 = seen)] -> (B, 1, S, S) bool,
  S = L + Ns + N: text rows causal over the text (each also sees itself, so a padded row is never
  empty), source rows every text and source token, latent rows every text, source and latent
  token."""
  b, l = text_mask.shape
  ns = 0 if source_mask is None else source_mask.shape[1]
  s = l + ns + num_latent
  parts = [text_mask.astype(bool)]
  if source_mask is not None:
    parts.append(source_mask.astype(bool))
  keys = jnp.concatenate(parts + [jnp.ones((b, num_latent), bool)], axis=1)  # (B, S)
  q = jnp.arange(s)[:, None]
  k = jnp.arange(s)[None, :]
  allowed = ((q < l) & (k <= q)) | ((q >= l) & (q < l + ns) & (k < l + ns)) | (q >= l + ns)
  allowed = allowed[None] & keys[:, None, :]
  allowed = allowed | (jnp.eye(s, dtype=bool)[None] & (q < l + ns)[None])
  return allowed[:, None]


def _text_mask(attention_mask, drop):
  text_mask = attention_mask.astype(bool)
  return text_mask if drop is None else text_mask & ~drop[:, None]


def _source_mask(source, drop_source, num_tokens: int):
  if source is None:
    return None
  keep = jnp.ones((source.shape[0], num_tokens), bool)
  return keep if drop_source is None else keep & ~drop_source[:, None]


def sequence_positions(text_mask: jax.Array, num_latent: int, num_source: int = 0) -> jax.Array:
  """(B, S) RoPE positions: text 0..L-1, then the source tokens and the latent tokens each
  n_text .. n_text + N - 1 (n_text the row's token count; a source token shares its cell's
  position with the latent token of that cell)."""
  b, l = text_mask.shape
  n_text = jnp.sum(text_mask.astype(jnp.int32), axis=1, keepdims=True)  # (B, 1)
  text = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  cells = lambda n: n_text + jnp.arange(n, dtype=jnp.int32)[None]
  parts = [text] + ([cells(num_source)] if num_source else []) + [cells(num_latent)]
  return jnp.concatenate(parts, axis=1)


class FusionGenerator(nn.Module):
  """(noisy latent, model time, prompt tokens) -> prediction; see the module docstring.

  Attributes:
    backbone: the Qwen2 stack's fields (a dict: vocab_size, hidden_size, intermediate_size,
      num_layers, num_heads, num_kv_heads, rope_theta, rms_norm_eps), as
      weights/qwen2.config_values gives them.
    patch_size: p of the latent tokens.
    head_width, head_depth, head_heads, mlp_ratio: the DDT head.
    freq_dim: sinusoidal timestep embedding size.
    dtype, attention_impl: compute dtype (params float32, output float32); attention path.
  """

  backbone: dict
  patch_size: int = 1
  head_width: int = 1024
  head_depth: int = 2
  head_heads: int = 16
  mlp_ratio: float = 4.0
  freq_dim: int = 256
  dtype: Any = jnp.float32
  attention_impl: str = ""

  def setup(self):
    self.lm = qwen2.Qwen2Model(
        **self.backbone, dtype=self.dtype, attention_impl=self.attention_impl, name="backbone"
    )
    width = self.backbone["hidden_size"]
    dense = lambda f, name, init=dit._XAVIER: dit._dense(f, name, self.dtype, init)
    self.latent_in = dense(width, "latent_in")
    self.source_in = dense(width, "source_in")  # instruction editing only (created on use)
    self.t_fc1 = dense(width, "t_fc1", dit._NORMAL)
    self.t_fc2 = dense(width, "t_fc2", dit._NORMAL)
    self.head = dit.DDTHead(
        self.head_width,
        self.head_depth,
        self.head_heads,
        self.mlp_ratio,
        self.patch_size,
        freq_dim=self.freq_dim,
        dtype=self.dtype,
        attention_impl=self.attention_impl or None,
        name="head",
    )

  def latent_inputs(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """The latent tokens' initial hidden states: projected patches + 2-D sin-cos + t."""
    _, h, w, _ = x.shape
    p, width = self.patch_size, self.backbone["hidden_size"]
    tokens = self.latent_in(dit.patchify(x, p).astype(self.dtype))
    tokens = tokens + jnp.asarray(layers.sincos_2d(h // p, w // p, width), self.dtype)[None]
    t_emb = self.t_fc2(nn.silu(self.t_fc1(dit.timestep_embedding(t, self.freq_dim))))
    return tokens + t_emb[:, None]

  def source_inputs(self, source: jax.Array) -> jax.Array:
    """The source latent's tokens: projected patches + the latent's 2-D sin-cos (no t)."""
    _, h, w, _ = source.shape
    p, width = self.patch_size, self.backbone["hidden_size"]
    tokens = self.source_in(dit.patchify(source, p).astype(self.dtype))
    return tokens + jnp.asarray(layers.sincos_2d(h // p, w // p, width), self.dtype)[None]

  def _prefix(self, input_ids, attention_mask, drop, source, drop_source):
    """The condition's embeddings [text | source] and their key mask (B, L + Ns)."""
    text_mask = _text_mask(attention_mask, drop)
    embeds = [self.lm.embed(input_ids)]
    ns = 0
    if source is not None:
      src = self.source_inputs(source)
      ns = src.shape[1]
      embeds.append(src)
    return jnp.concatenate(embeds, axis=1), text_mask, _source_mask(source, drop_source, ns)

  def states(
      self, x, t, input_ids, attention_mask, drop=None, source=None, drop_source=None
  ) -> jax.Array:
    """The backbone's final-norm states of the whole sequence (B, L + Ns + N, d)."""
    prefix, text_mask, source_mask = self._prefix(
        input_ids, attention_mask, drop, source, drop_source
    )
    latent = self.latent_inputs(x, t)  # (B, N, d)
    n, ns = latent.shape[1], prefix.shape[1] - text_mask.shape[1]
    return self.lm(
        inputs_embeds=jnp.concatenate([prefix, latent], axis=1),
        positions=sequence_positions(text_mask, n, ns),
        mask=sequence_mask(text_mask, n, source_mask),
    )

  def text_cache(self, input_ids, attention_mask, drop=None, source=None, drop_source=None) -> dict:
    """The condition's per-layer keys and values, the text's (and the source's: they depend on
    neither t nor the latent: compute them once per prompt) with their key mask, for
    `__call__(..., text_cache=)`."""
    prefix, text_mask, source_mask = self._prefix(
        input_ids, attention_mask, drop, source, drop_source
    )
    ns = prefix.shape[1] - text_mask.shape[1]
    positions = sequence_positions(text_mask, 0, ns)
    _, kv = self.lm(
        inputs_embeds=prefix,
        positions=positions,
        mask=sequence_mask(text_mask, 0, source_mask),
        return_cache=True,
    )
    keys = text_mask if source_mask is None else jnp.concatenate([text_mask, source_mask], 1)
    return {"kv": kv, "mask": keys, "n_text": jnp.sum(text_mask.astype(jnp.int32), axis=1)}

  def __call__(
      self,
      x: jax.Array,
      t: jax.Array,
      input_ids: jax.Array | None = None,
      attention_mask: jax.Array | None = None,
      drop: jax.Array | None = None,
      text_cache: dict | None = None,
      source: jax.Array | None = None,
      drop_source: jax.Array | None = None,
  ) -> jax.Array:
    """x (B, h, w, C) noisy latents; t (B,) model time (0..1000); input_ids / attention_mask
    (B, L) the prompt's tokens (right-padded); drop (B,) bool: rows without text (CFG); source
    (B, h, w, C_s) a source image's normalised latent (instruction editing) and drop_source (B,)
    bool: rows without it; or text_cache (`text_cache(...)`, the drops already applied): only
    the latent tokens run. Returns the (B, h, w, C) float32 prediction."""
    if text_cache is None:
      states = self.states(x, t, input_ids, attention_mask, drop, source, drop_source)
      n = x.shape[1] * x.shape[2] // self.patch_size**2
      return self.head(x, states[:, states.shape[1] - n :], t)
    keys = text_cache["mask"]  # (B, L + Ns): the prefix's keys
    latent = self.latent_inputs(x, t)  # (B, N, d)
    b, n = latent.shape[:2]
    allowed = jnp.concatenate([keys, jnp.ones((b, n), bool)], axis=1)  # latent rows see all
    mask = jnp.broadcast_to(allowed[:, None, None, :], (b, 1, n, allowed.shape[1]))
    positions = text_cache["n_text"][:, None] + jnp.arange(n, dtype=jnp.int32)[None]
    states = self.lm(inputs_embeds=latent, positions=positions, mask=mask, prefix=text_cache["kv"])
    return self.head(x, states, t)

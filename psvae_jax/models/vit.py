"""DINOv2 Vision Transformer encoder and its reusable pre-LN transformer block.

The modules mirror the Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel``
computation exactly (see ``psvae_jax.weights.dinov2`` for the weight importer),
including the bicubic position-embedding interpolation that PyTorch performs when
the input grid differs from the stored one.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from psvae_jax.models import attention
from psvae_jax.models import layers

_DENSE_INIT = nn.initializers.truncated_normal(stddev=0.02)


class Block(nn.Module):
  """DINOv2 transformer block: ``x + ls1 * attn(ln1(x))``, then ``+ ls2 * mlp(ln2(x))``.

  Attributes:
    hidden_size: token width D.
    num_heads: number of attention heads (D must be divisible by it).
    mlp_ratio: MLP hidden width is ``int(D * mlp_ratio)`` (before the SwiGLU rule).
    layerscale_init: initial LayerScale value; ``None`` disables LayerScale.
    use_swiglu: use the SwiGLU feed-forward of DINOv2-g instead of the GELU MLP.
    layer_norm_eps: LayerNorm epsilon.
    gelu_approximate: the MLP's GELU in its tanh form (SigLIP's gelu_pytorch_tanh).
    mlp_dim: the MLP's hidden width when it is not a whole multiple of D (SigLIP-so400m's
      4304 for 1152); 0 = ``int(D * mlp_ratio)``.
    dtype: compute dtype; parameters are always float32.
  """

  hidden_size: int
  num_heads: int
  mlp_ratio: float = 4.0
  layerscale_init: float | None = 1.0
  use_swiglu: bool = False
  layer_norm_eps: float = 1e-6
  gelu_approximate: bool = False
  mlp_dim: int = 0
  dtype: Any = jnp.float32

  def _dense(self, features: int, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=True,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=_DENSE_INIT,
        name=name,
    )

  def _norm(self, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=jnp.float32, name=name
    )

  def _layer_scale(self, x: jax.Array, name: str) -> jax.Array:
    if self.layerscale_init is None:
      return x
    gamma = self.param(
        name, nn.initializers.constant(self.layerscale_init), (self.hidden_size,), jnp.float32
    )
    return x * gamma.astype(self.dtype)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the block.

    Args:
      x: tokens, ``(B, N, D)``.

    Returns:
      Tokens of the same shape, in ``self.dtype``.
    """
    d, heads = self.hidden_size, self.num_heads
    if d % heads:
      raise ValueError(f"hidden_size {d} is not divisible by num_heads {heads}")
    head_dim = d // heads
    b, n, _ = x.shape
    x = x.astype(self.dtype)

    # Self-attention.
    h = self._norm("norm1")(x)
    qkv = [
        layers.DenseParams(d, d, kernel_init=_DENSE_INIT, name=name)()
        for name in ("q_proj", "k_proj", "v_proj")
    ]  # nn.Dense's parameters, applied as one (D, 3D) GEMM
    q, k, v = (
        t.reshape(b, n, heads, head_dim) for t in layers.fused_dense(h, qkv, self.dtype)
    )  # (B, N, H, Dh) each
    a = attention.dot_product_attention(q, k, v)  # (B, N, H, Dh)
    a = self._dense(d, "o_proj")(a.reshape(b, n, d))  # (B, N, D)
    x = x + self._layer_scale(a, "layer_scale1")

    # Feed-forward.
    h = self._norm("norm2")(x)
    hidden = self.mlp_dim or int(d * self.mlp_ratio)
    if self.use_swiglu:
      # Dinov2SwiGLUFFN: two thirds of the MLP width, rounded up to a multiple of 8.
      hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
      gate = self._dense(hidden, "gate_proj")(h)  # (B, N, F)
      up = self._dense(hidden, "up_proj")(h)  # (B, N, F)
      h = self._dense(d, "down_proj")(jax.nn.silu(gate) * up)  # (B, N, D)
    else:
      h = self._dense(hidden, "fc1")(h)  # (B, N, F)
      h = layers.gelu(h, approximate=self.gelu_approximate)
      h = self._dense(d, "fc2")(h)  # (B, N, D)
    return x + self._layer_scale(h, "layer_scale2")


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel with parameter ``a``, in float32 like torch."""
  x = np.abs(np.asarray(x, np.float32))
  a = np.float32(a)
  near = ((a + 2) * x - (a + 3)) * x * x + 1  # torch's cubic_convolution1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # torch's cubic_convolution2
  return np.where(x < 1, near, np.where(x < 2, far, 0)).astype(np.float32)


def _triangle(x: np.ndarray) -> np.ndarray:
  """The bilinear (triangle) kernel, in float32 like torch."""
  x = np.abs(np.asarray(x, np.float32))
  return np.where(x < 1, np.float32(1) - x, 0).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _torch_bicubic_matrix(
    in_size: int, out_size: int, antialias: bool, mode: str = "bicubic"
) -> np.ndarray:
  """``(out_size, in_size)`` matrix of torch's 1-D bicubic resampling weights.

  Reproduces ``torch.nn.functional.interpolate(mode="bicubic",
  align_corners=False, size=...)`` along one axis (no ``scale_factor``), using
  float32 arithmetic for coordinates and weights as torch's CPU kernels do:

  * ``antialias=False`` (``upsample_bicubic2d``): source coordinate
    ``scale * (i + 0.5) - 0.5`` with ``scale = in / out``, Keys kernel with
    ``a = -0.75`` on the 4 neighbours, indices clamped to the border (so border
    taps accumulate).
  * ``antialias=True`` (``_upsample_bicubic2d_aa``, PIL-style): Keys kernel
    with ``a = -0.5`` stretched by ``max(scale, 1)`` (support ``2 * max(scale,
    1)``), taps outside the input dropped and the weights renormalised to one.
    With ``mode="bilinear"`` (``_upsample_bilinear2d_aa``, Siglip2's position
    resize) the same with the triangle kernel and half the support.
  """
  if mode not in ("bicubic", "bilinear") or (mode == "bilinear" and not antialias):
    raise ValueError(f"unsupported resize: mode={mode!r} antialias={antialias}")
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  mat = np.zeros((out_size, in_size), np.float32)
  if not antialias:
    for i in range(out_size):
      src = scale * (f32(i) + f32(0.5)) - f32(0.5)
      base = int(np.floor(src))
      t = min(max(src - f32(base), f32(0)), f32(1))
      coeffs = _cubic(np.array([t + f32(1), t, f32(1) - t, f32(2) - t]), -0.75)
      for off, c in zip(range(-1, 3), coeffs):
        mat[i, min(max(base + off, 0), in_size - 1)] += c
    return mat
  half = 2.0 if mode == "bicubic" else 1.0  # torch: interp_size / 2
  support = f32(half * scale) if scale >= 1 else f32(half)
  invscale = f32(1.0 / scale) if scale >= 1 else f32(1.0)
  for i in range(out_size):
    center = f32(float(scale) * (i + 0.5))
    # torch truncates towards zero (static_cast<int64_t>) before clamping.
    xmin = max(int(float(center - support) + 0.5), 0)
    xmax = min(int(float(center + support) + 0.5), in_size)
    js = np.arange(xmin, xmax)
    x = ((js - center).astype(np.float32).astype(np.float64) + 0.5) * float(invscale)
    w = _cubic(x.astype(np.float32), -0.5) if mode == "bicubic" else _triangle(x)
    total = f32(w.sum(dtype=np.float32))
    if total != 0:
      w = (w / total).astype(np.float32)
    mat[i, xmin:xmax] = w
  return mat


def interpolate_pos_embed_bicubic(
    grid: jax.Array, out_hw: tuple[int, int], antialias: bool = False, mode: str = "bicubic"
) -> jax.Array:
  """Resizes a position-embedding grid like torch's bicubic ``interpolate``.

  ``jax.image.resize`` uses a different bicubic (Keys ``a = -0.5`` with its own
  border handling), so this builds torch's separable interpolation weights with
  numpy at trace time (shapes are static) and applies them with an einsum in
  float32. Matches ``F.interpolate(x, size=out_hw, mode="bicubic",
  align_corners=False, antialias=antialias)`` as used by Hugging Face's
  ``Dinov2Embeddings`` (``antialias=False``) and
  ``Dinov2WithRegistersEmbeddings`` (``antialias=True``).

  Args:
    grid: ``(Gh, Gw, D)`` embeddings on the stored grid.
    out_hw: target ``(gh, gw)``.
    antialias: torch's ``antialias`` flag.
    mode: "bicubic", or "bilinear" (with ``antialias``: Siglip2's resize).

  Returns:
    ``(gh, gw, D)`` float32 embeddings.
  """
  gh_in, gw_in, _ = grid.shape
  wy = jnp.asarray(_torch_bicubic_matrix(gh_in, int(out_hw[0]), antialias, mode))
  wx = jnp.asarray(_torch_bicubic_matrix(gw_in, int(out_hw[1]), antialias, mode))
  grid = grid.astype(jnp.float32)
  return jnp.einsum(
      "yi,xj,ijd->yxd", wy, wx, grid, precision=jax.lax.Precision.HIGHEST
  )  # (gh, gw, D)


class DinoV2(nn.Module):
  """DINOv2 ViT returning normalised patch features on the patch grid.

  Attributes:
    hidden_size: token width D.
    num_layers: number of transformer blocks.
    num_heads: attention heads.
    mlp_ratio: MLP width ratio.
    patch_size: patch side p (patch embedding is a p x p, stride-p conv).
    pos_grid: side of the stored position-embedding grid (37 for 518 px / 14).
    num_register_tokens: register tokens inserted after CLS (0 = none).
    layerscale_init: LayerScale init; ``None`` disables it.
    use_swiglu: SwiGLU feed-forward (DINOv2-g).
    layer_norm_eps: LayerNorm epsilon.
    pos_embed_antialias: antialias flag of the bicubic position-embedding
      resize (Hugging Face uses ``False`` for ``Dinov2Model`` and ``True`` for
      ``Dinov2WithRegistersModel``).
    dtype: compute dtype; parameters are always float32.
  """

  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_ratio: float = 4.0
  patch_size: int = 14
  pos_grid: int = 37
  num_register_tokens: int = 0
  layerscale_init: float | None = 1.0
  use_swiglu: bool = False
  layer_norm_eps: float = 1e-6
  pos_embed_antialias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, with_stream: bool = False):
    """Encodes ImageNet-normalised images.

    Args:
      images: ``(B, H, W, 3)`` float, already normalised with ImageNet mean/std.
        Trailing pixels that do not fill a whole patch are ignored.
      with_stream: also return the patch tokens of the residual stream after the
        last block, *before* the final LayerNorm (what a copy of the last blocks
        was trained to read and write).

    Returns:
      ``(B, H // p, W // p, D)`` patch tokens after the final LayerNorm (CLS and
      register tokens dropped), in ``self.dtype``; with ``with_stream``, the pair
      ``(normed, stream)`` of two such arrays.
    """
    d, p, g = self.hidden_size, self.patch_size, self.pos_grid
    b = images.shape[0]
    x = nn.Conv(
        d,
        (p, p),
        strides=(p, p),
        padding="VALID",
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=_DENSE_INIT,
        name="patch_embed",
    )(
        images.astype(self.dtype)
    )  # (B, gh, gw, D)
    gh, gw = x.shape[1], x.shape[2]
    x = x.reshape(b, gh * gw, d)  # (B, N, D)

    init = nn.initializers.truncated_normal(stddev=0.02)
    cls = self.param("cls_token", init, (1, 1, d), jnp.float32)
    pos = self.param("pos_embed", init, (1, 1 + g * g, d), jnp.float32)
    patch_pos = pos[0, 1:]  # (G*G, D)
    if (gh, gw) != (g, g):
      patch_pos = interpolate_pos_embed_bicubic(
          patch_pos.reshape(g, g, d), (gh, gw), antialias=self.pos_embed_antialias
      ).reshape(gh * gw, d)
    cls_tok = (cls + pos[:, :1]).astype(self.dtype)  # (1, 1, D)
    x = x + patch_pos.astype(self.dtype)[None]  # (B, N, D)
    parts = [jnp.broadcast_to(cls_tok, (b, 1, d))]
    if self.num_register_tokens:
      reg = self.param(
          "register_tokens", nn.initializers.zeros, (1, self.num_register_tokens, d), jnp.float32
      )
      parts.append(jnp.broadcast_to(reg.astype(self.dtype), (b, self.num_register_tokens, d)))
    x = jnp.concatenate(parts + [x], axis=1)  # (B, 1 + R + N, D)

    for i in range(self.num_layers):
      x = Block(
          hidden_size=d,
          num_heads=self.num_heads,
          mlp_ratio=self.mlp_ratio,
          layerscale_init=self.layerscale_init,
          use_swiglu=self.use_swiglu,
          layer_norm_eps=self.layer_norm_eps,
          dtype=self.dtype,
          name=f"layer_{i}",
      )(x)
    stream = x[:, 1 + self.num_register_tokens :].reshape(b, gh, gw, d)
    x = nn.LayerNorm(
        epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=jnp.float32, name="norm"
    )(x)
    x = x[:, 1 + self.num_register_tokens :].reshape(b, gh, gw, d)  # (B, gh, gw, D)
    return (x, stream) if with_stream else x


def dinov2_config(size: str, registers: bool = False) -> dict[str, Any]:
  """Module kwargs of the official DINOv2 sizes ("S", "B", "L", "g") or "tiny".

  Args:
    size: "S", "B", "L", "g" (SwiGLU), or "tiny" (a toy model for CPU tests).
    registers: add 4 register tokens and use the antialiased position-embedding
      resize of Hugging Face's ``Dinov2WithRegistersModel``.

  Returns:
    Keyword arguments for :class:`DinoV2`.
  """
  table = {
      "S": dict(hidden_size=384, num_layers=12, num_heads=6),
      "B": dict(hidden_size=768, num_layers=12, num_heads=12),
      "L": dict(hidden_size=1024, num_layers=24, num_heads=16),
      "g": dict(hidden_size=1536, num_layers=40, num_heads=24, use_swiglu=True),
      "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, patch_size=4, pos_grid=8),
  }
  if size not in table:
    raise ValueError(f"Unknown DINOv2 size {size!r}; expected one of {list(table)}")
  cfg = dict(
      mlp_ratio=4.0,
      patch_size=14,
      pos_grid=37,
      layerscale_init=1.0,
      use_swiglu=False,
      layer_norm_eps=1e-6,
      num_register_tokens=0,
      pos_embed_antialias=False,
  )
  cfg.update(table[size])
  if registers:
    cfg.update(num_register_tokens=4, pos_embed_antialias=True)
  return cfg

"""Small shared layers: fixed 2-D sin-cos position embeddings."""

from __future__ import annotations

import numpy as np


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, dim)


def sincos_2d(h: int, w: int, dim: int) -> np.ndarray:
  """(h*w, dim) float32 embedding, MAE/DiT style (half the channels per axis)."""
  if dim % 4:
    raise ValueError(f"sin-cos 2-D embedding needs dim % 4 == 0, got {dim}.")
  gy, gx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  emb = np.concatenate([sincos_1d(dim // 2, gy), sincos_1d(dim // 2, gx)], axis=1)
  return emb.astype(np.float32)

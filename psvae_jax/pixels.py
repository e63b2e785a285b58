"""uint8 <-> [-1, 1] float pixel conversion: the one place its conventions are written.

Two uint8 -> float conversions exist, equal up to one float32 ulp (they differ in 111 of the 256
byte values), and each caller keeps the one it has always used, so its results stay bitwise:
`to_float` divides (x / 127.5 - 1; the API, the FID proxy net), `to_float_inplace` multiplies by
float32(1 / 127.5) in place (the data pipeline: cheaper on large batches). `to_uint8` rounds
half up and clips.
"""

from __future__ import annotations

import numpy as np


def to_float(images):
  """uint8 (..., 3) -> float32 in [-1, 1] as x / 127.5 - 1.

  numpy or jax arrays (traceable); XLA:CPU may round a jax result one ulp off numpy's.
  """
  return images.astype(np.float32) / 127.5 - 1.0


def to_float_inplace(images: np.ndarray) -> np.ndarray:
  """uint8 (b, H, W, 3) -> float32 in [-1, 1] as x * float32(1 / 127.5) - 1, on one new array."""
  out = images.astype(np.float32)
  out *= np.float32(1 / 127.5)
  out -= np.float32(1)
  return out


def to_uint8(images) -> np.ndarray:
  """[-1, 1] float images -> uint8: (x + 1) * 127.5 rounded half up, clipped to [0, 255]."""
  return np.asarray(np.clip((np.asarray(images, np.float32) + 1.0) * 127.5 + 0.5, 0, 255), np.uint8)

"""The shapes prompt-adherence checker: does an image show what its caption says?

`score` is used on autoencoder reconstructions and diffusion samples: it decides
whether every object named in a caption is present with the right colour, shape
and position. It works on "soft" colour membership (how far each pixel lies
along the segment from the estimated background colour to a palette colour),
which keeps it robust to blur, noise and moderate colour shifts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from psvae_jax.shapes import world

_AREA = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}  # / size**2.
_MAX_RESIDUAL = 90.0  # Max distance of a pixel from the bg->colour segment.
_MIN_WEIGHT = 0.3  # Min fraction of the colour for a pixel to count.
_AREA_RANGE = (0.4, 2.5)  # Accepted soft area / nominal area of the shape.
_CENTER_TOL = 0.12  # Centre position: max centroid offset from the middle.
_CROSS_TOL = 0.2  # Side positions: max centroid offset across the axis.
_SIDE_MARGIN = 0.15  # Side positions: centroid must clear the midline by this.
# Shape classification from the fill ratio (area / (max row width * max column
# height): square 1, circle pi/4, triangle 1/2) and the skewness of the vertical
# mass distribution (upright triangle -0.57, circle and square 0).
_TRIANGLE_SKEW = -0.25  # Skewness below which it is an upright triangle.
_TRIANGLE_MAX_FILL = 0.8  # Max fill ratio of a triangle.
_SYMMETRIC_SKEW = 0.2  # Max |skewness| of a circle or a square.
_SQUARE_FILL = 0.9  # Min fill ratio of a square.
_CIRCLE_FILL = 0.68  # Min fill ratio of a circle.
_MAX_FILL = 1.15  # Max fill ratio of any shape (above 1 only through noise).
_MAX_ASPECT = 1.4  # Max width / height (and height / width) of any shape.


def _estimate_background(image: np.ndarray) -> np.ndarray:
  """Median colour of the 1-pixel border ring: float32 (3,)."""
  border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
  return np.median(border.astype(np.float32), axis=0)


def _color_weights(image: np.ndarray, background: np.ndarray) -> np.ndarray:
  """Soft membership of each pixel to each palette colour: (C, H, W) in [0,1].

  A pixel belongs to the colour whose background->colour segment it is closest
  to (if within `_MAX_RESIDUAL`); its weight is its position along the segment.

  Args:
    image: float32 (H, W, 3).
    background: float32 (3,).
  """
  rel = image - background  # (H, W, 3)
  dirs = np.asarray(list(world.COLORS.values()), np.float32) - background  # (C, 3)
  norm2 = np.maximum(np.sum(dirs**2, axis=-1), 1.0)  # (C,)
  t = np.einsum("hwk,ck->chw", rel, dirs) / norm2[:, None, None]  # (C, H, W)
  t_seg = np.clip(t, 0.0, 1.0)
  residual = np.linalg.norm(rel[None] - t_seg[..., None] * dirs[:, None, None, :], axis=-1)
  best = np.argmin(residual, axis=0)  # (H, W)
  onehot = best[None] == np.arange(len(world.COLORS))[:, None, None]
  keep = onehot & (residual <= _MAX_RESIDUAL) & (t >= _MIN_WEIGHT)
  return np.where(keep, np.minimum(t, 1.0), 0.0).astype(np.float32)


def _region(position: str, height: int, width: int) -> np.ndarray:
  """Boolean (H, W) mask of where an object at `position` is searched for."""
  ys, xs = np.mgrid[0:height, 0:width]
  if position == "left":
    return xs < width / 2
  if position == "right":
    return xs >= width / 2
  if position == "top":
    return ys < height / 2
  if position == "bottom":
    return ys >= height / 2
  return np.ones((height, width), bool)


def _classify_shape(weights: np.ndarray) -> str:
  """Shape of a soft mask (H, W) from its fill ratio and vertical skewness."""
  rows = weights.sum(axis=1)  # (H,) soft width of each row.
  cols = weights.sum(axis=0)  # (W,) soft height of each column.
  area = rows.sum()
  ys = np.arange(len(rows), dtype=np.float64)
  mean = (rows * ys).sum() / area
  var = max((rows * (ys - mean) ** 2).sum() / area, 1e-6)
  skew = (rows * (ys - mean) ** 3).sum() / area / var**1.5
  fill = area / max(rows.max() * cols.max(), 1e-6)
  aspect = rows.max() / max(cols.max(), 1e-6)  # Width / height; 1 for all.
  if not 1 / _MAX_ASPECT <= aspect <= _MAX_ASPECT:
    return "unknown"
  if skew < _TRIANGLE_SKEW and fill < _TRIANGLE_MAX_FILL:
    return "triangle"
  if abs(skew) < _SYMMETRIC_SKEW and _SQUARE_FILL <= fill <= _MAX_FILL:
    return "square"
  if abs(skew) < _SYMMETRIC_SKEW and fill >= _CIRCLE_FILL:
    return "circle"
  return "unknown"


def _main_blob(weights: np.ndarray) -> np.ndarray | None:
  """Keeps the heaviest 8-connected blob of a soft mask (H, W), rescaled.

  Blobs are the 8-connected components of the pixels above half the max
  weight. Stray pixels (noise, blur fringes of other objects) are dropped, and
  the weights are divided by the blob's typical interior weight so that a
  global colour scaling (e.g. a darker red) does not change the shape features.

  Args:
    weights: float (H, W) soft mask of one colour.

  Returns:
    float (H, W) soft mask of the blob, or None if there is none.
  """
  if not weights.any():
    return None
  labels, count = ndimage.label(weights >= 0.5 * weights.max(), structure=np.ones((3, 3)))
  if count == 0:
    return None
  masses = ndimage.sum(weights, labels, index=np.arange(1, count + 1))
  blob = labels == 1 + int(np.argmax(masses))
  support = ndimage.binary_dilation(blob, structure=np.ones((3, 3)))
  w = np.where(support, weights, 0.0)
  return np.minimum(w / np.percentile(weights[blob], 90), 1.0)


def _object_ok(weights: np.ndarray, obj: world.ShapeObject) -> bool:
  """Whether a colour's soft mask (H, W) shows `obj` at its position."""
  height, width = weights.shape
  w = _main_blob(weights * _region(obj.position, height, width))
  if w is None:
    return False
  area = float(w.sum())
  nominal = _AREA[obj.shape] * (world.BASE_SIZE**2) * height * width
  if not _AREA_RANGE[0] * nominal <= area <= _AREA_RANGE[1] * nominal:
    return False
  ys, xs = np.mgrid[0:height, 0:width]
  cx = float((w * (xs + 0.5)).sum() / area / width)
  cy = float((w * (ys + 0.5)).sum() / area / height)
  if obj.position == "center":
    if max(abs(cx - 0.5), abs(cy - 0.5)) > _CENTER_TOL:
      return False
  else:
    along, across = (cx, cy) if obj.position in ("left", "right") else (cy, cx)
    side = -1.0 if obj.position in ("left", "top") else 1.0
    if side * (along - 0.5) < _SIDE_MARGIN or abs(across - 0.5) > _CROSS_TOL:
      return False
  return _classify_shape(w) == obj.shape


def score(image: np.ndarray, text: str) -> bool:
  """Whether every object named in `text` is in `image` as described.

  Args:
    image: uint8 (H, W, 3) RGB image.
    text: a caption in the `world.caption` grammar.

  Returns:
    True iff each named object is found with the right colour, shape and
    position. Captions naming two objects at the same position are never
    satisfied (scenes hold at most one object per position).

  Raises:
    ValueError: if the caption does not parse or the image has a wrong shape.
    TypeError: if the image is not uint8.
  """
  if image.dtype != np.uint8:
    raise TypeError(f"Expected a uint8 image, got {image.dtype}.")
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"Expected an (H, W, 3) image, got {image.shape}.")
  objects = world.parse_caption(text)
  if len({o.position for o in objects}) != len(objects):
    return False
  pixels = image.astype(np.float32)
  weights = _color_weights(pixels, _estimate_background(pixels))
  color_index = {name: i for i, name in enumerate(world.COLORS)}
  return all(_object_ok(weights[color_index[o.color]], o) for o in objects)


def score_batch(images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
  """`score` over a batch: images uint8 (B, H, W, 3) -> bool (B,)."""
  if len(images) != len(captions):
    raise ValueError(f"Got {len(images)} images but {len(captions)} captions.")
  return np.array([score(im, c) for im, c in zip(images, captions)], bool)


def accepts(text: str) -> bool:
  """Whether `text` is a caption of the shapes grammar (one `score` can check)."""
  try:
    return bool(world.parse_caption(str(text)))
  except ValueError:
    return False

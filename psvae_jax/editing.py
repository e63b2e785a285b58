"""Image editing (SDEdit) and inpainting: input/mask preparation and compositing.

The sampling itself is `Generator.edit_latents` (one jit, the same scan sampler as generation);
this module holds the host-side parts used by `psvae_jax.api.Pipeline.edit` / `.inpaint`,
`python -m psvae_jax.sample --init_image=... [--mask=...]` and the demo's figures
(`psvae_jax.experiments.figures`):

- `prepare_images`: images of any size -> the model's square resolution, by center crop
  ("crop") or padding ("pad"), with a `Placement` that maps a result back to the input size.
- `binarize_mask`: any mask (bool, uint8 0..255, float 0..1, grey or RGB(A), any size) -> a
  {0, 1} mask at the image's size; resized (bilinear) then thresholded at 0.5 (>= 0.5 is
  "regenerate"), so a non-binary mask is documented behaviour, not an error.
- `latent_mask`: the pixel mask max-pooled to the latent grid (a latent cell is regenerated
  if any of its pixels is), then dilated by `dilation` cells.
- `composite`: the final image = feathered mask * generated + (1 - mask) * original.
- `load_image` / `load_mask`: files -> arrays with clear errors (`EditInputError`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image
from scipy import ndimage

from psvae_jax import pixels
from psvae_jax.data import decode

FITS = ("crop", "pad")


class EditInputError(ValueError):
  """A bad edit / inpaint input (file, mask, strength): the message says what to fix."""


# ---- files ----------------------------------------------------------------------------------
def load_image(path: str, alpha_background: str = "white") -> np.ndarray:
  """An image file -> uint8 (H, W, 3) RGB, read as training reads images (`decode.read_file`:
  16-bit scaled, alpha composited on `alpha_background`, the data default; EXIF applied)."""
  if not os.path.isfile(path):
    raise EditInputError(f"Image file not found: {path!r}.")
  try:
    return decode.read_file(path, decode.background_color(alpha_background))
  except decode.BadImage as e:
    raise EditInputError(f"Cannot read image {path!r}: {e}") from e


def load_mask(path: str) -> np.ndarray:
  """A mask file (white = regenerate) -> float32 (H, W) in [0, 1] (not yet thresholded).

  Read by the same reader as images (16-bit masks scaled, transparent pixels count as black,
  i.e. kept); colour masks become their luma (ITU-R 601, as PIL's "L").
  """
  if not os.path.isfile(path):
    raise EditInputError(f"Mask file not found: {path!r}.")
  try:
    rgb = decode.read_file(path, decode.background_color("black"))
  except decode.BadImage as e:
    raise EditInputError(f"Cannot read mask {path!r}: {e}") from e
  return (rgb.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])) / 255.0


# ---- images ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Placement:
  """Where the model's square image sits in the input: box (left, top, right, bottom) in the
  input's (crop) or the padded canvas' (pad) pixels, the square's side, and the input size."""

  fit: str
  box: tuple[int, int, int, int]
  side: int
  height: int
  width: int


def check_strength(strength: float) -> float:
  s = float(strength)
  if not np.isfinite(s) or not 0.0 <= s <= 1.0:
    raise EditInputError(
        f"strength must be in [0, 1] (0 = keep the image, 1 = ignore it), " f"got {strength}."
    )
  return s


def as_uint8_image(image) -> np.ndarray:
  """uint8 (H, W, 3), or float in [-1, 1], or grey (H, W) -> uint8 (H, W, 3)."""
  x = np.asarray(image)
  if x.ndim == 2:
    x = np.repeat(x[..., None], 3, axis=-1)
  if x.ndim != 3 or x.shape[-1] not in (3, 4) or min(x.shape[:2]) < 1:
    raise EditInputError(f"An image must be (H, W, 3), got shape {x.shape}.")
  x = x[..., :3]
  if x.dtype != np.uint8:
    x = pixels.to_uint8(x)
  return x


def _resize(image: np.ndarray, size: tuple[int, int], resample=Image.Resampling.BICUBIC):
  """uint8 (H, W, 3) -> (size[1], size[0], 3); size is (width, height) as PIL takes it."""
  if image.shape[1::-1] == size:
    return image
  return np.asarray(Image.fromarray(image).resize(size, resample))


def prepare_image(image, size: int, fit: str = "crop") -> tuple[np.ndarray, Placement]:
  """Any-size image -> uint8 (size, size, 3) and its Placement (see `restore_size`)."""
  if fit not in FITS:
    raise EditInputError(f"fit must be one of {FITS}, got {fit!r}.")
  x = as_uint8_image(image)
  h, w = x.shape[:2]
  side = min(h, w) if fit == "crop" else max(h, w)
  left, top = (w - side) // 2, (h - side) // 2  # negative offsets = padding
  if fit == "crop":
    square = x[top : top + side, left : left + side]
    box = (left, top, left + side, top + side)
  else:
    square = np.zeros((side, side, 3), np.uint8)
    square[-top : -top + h, -left : -left + w] = x
    box = (-left, -top, -left + w, -top + h)
  return _resize(square, (size, size)), Placement(fit, box, side, h, w)


def restore_size(result: np.ndarray, original: np.ndarray, place: Placement) -> np.ndarray:
  """A (size, size, 3) result -> the input's (H, W, 3).

  crop: the result, resized to the cropped square, replaces that square of the original (the
  cropped-away borders keep the input's pixels); pad: the padding is cut off again.
  """
  square = _resize(result, (place.side, place.side))
  left, top, right, bottom = place.box
  if place.fit == "crop":
    out = as_uint8_image(original).copy()
    out[top:bottom, left:right] = square
    return out
  return np.ascontiguousarray(square[top:bottom, left:right])


def prepare_images(images, size: int, fit: str = "crop"):
  """A batch (N, H, W, 3) array or a list of any-size images -> uint8 (N, size, size, 3) and
  the list of Placements."""
  if isinstance(images, np.ndarray):
    images = list(images) if images.ndim == 4 else [images]
  out = [prepare_image(im, size, fit) for im in images]
  if not out:
    raise EditInputError("No images given.")
  return np.stack([o[0] for o in out]), [o[1] for o in out]


# ---- masks ----------------------------------------------------------------------------------
def binarize_mask(mask, height: int, width: int) -> np.ndarray:
  """Any mask -> float32 (height, width) in {0, 1}, 1 = regenerate.

  bool, uint8 (0..255) or float (0..1) masks, grey or RGB(A) (channels averaged), of any size
  (resized bilinearly to (height, width)); then thresholded: value >= 0.5 regenerates.
  """
  m = np.asarray(mask)
  if m.ndim == 3:
    m = m[..., :3].mean(axis=-1) if m.shape[-1] >= 3 else m[..., 0]
  if m.ndim != 2 or min(m.shape) < 1:
    raise EditInputError(f"A mask must be (H, W) or (H, W, C), got shape {np.shape(mask)}.")
  if m.dtype == bool:
    m = m.astype(np.float32)
  elif m.dtype == np.uint8:
    m = m.astype(np.float32) / 255.0
  else:
    m = m.astype(np.float32)
  if not np.all(np.isfinite(m)):
    raise EditInputError("The mask holds NaN or inf values.")
  if m.shape != (height, width):
    m = np.asarray(Image.fromarray(m, mode="F").resize((width, height), Image.Resampling.BILINEAR))
  return (m >= 0.5).astype(np.float32)


def prepare_mask(mask, place: Placement, size: int) -> np.ndarray:
  """A mask at (or resized to) the input image's size -> {0, 1} float32 (size, size), placed as
  the image is (padding is known: 0)."""
  m = binarize_mask(mask, place.height, place.width)
  m8 = (m * 255).astype(np.uint8)[..., None].repeat(3, axis=-1)
  left, top, right, bottom = place.box
  if place.fit == "crop":
    square = m8[top:bottom, left:right]
  else:
    square = np.zeros((place.side, place.side, 3), np.uint8)
    square[top:bottom, left:right] = m8
  sq = _resize(square, (size, size), Image.Resampling.BILINEAR)[..., 0]
  return (sq >= 128).astype(np.float32)


def latent_mask(masks: np.ndarray, latent_hw: tuple[int, int], dilation: int = 1) -> np.ndarray:
  """Pixel masks (N, S, S) in {0, 1} -> latent-grid masks (N, h, w, 1): max-pooled, dilated.

  A latent cell is regenerated when any pixel it covers is; `dilation` then grows the region by
  that many cells (3x3 structuring element) so the seam gets context. dilation 0: no growth.
  """
  if dilation < 0:
    raise EditInputError(f"dilation must be >= 0, got {dilation}.")
  n, s, _ = masks.shape
  h, w = latent_hw
  if s % h or s % w:
    cells = (
        np.stack(
            [
                np.asarray(Image.fromarray(m, mode="F").resize((w, h), Image.Resampling.BOX))
                for m in masks.astype(np.float32)
            ]
        )
        > 0
    )
  else:
    cells = masks.reshape(n, h, s // h, w, s // w).max(axis=(2, 4)) > 0
  if dilation:
    cells = np.stack(
        [
            ndimage.binary_dilation(c, np.ones((3, 3), bool), iterations=dilation) if c.any() else c
            for c in cells
        ]
    )
  return cells.astype(np.float32)[..., None]


def feather_weights(mask: np.ndarray, feather: float) -> np.ndarray:
  """{0, 1} (H, W) -> blend weights (H, W) in [0, 1]: Gaussian-blurred edge (sigma = feather px),
  1 inside the mask away from its edge; feather 0: the hard mask."""
  if feather < 0:
    raise EditInputError(f"feather must be >= 0, got {feather}.")
  if feather == 0 or not mask.any() or mask.all():
    return mask.astype(np.float32)
  return np.clip(ndimage.gaussian_filter(mask.astype(np.float32), feather), 0.0, 1.0)


def composite(
    generated: np.ndarray, original: np.ndarray, mask: np.ndarray, feather: float
) -> np.ndarray:
  """uint8 (H, W, 3) generated/original, {0, 1} (H, W) mask -> the blended uint8 image."""
  wgt = feather_weights(mask, feather)[..., None]
  out = wgt * generated.astype(np.float32) + (1.0 - wgt) * original.astype(np.float32)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
  """PSNR (dB, 255 peak) between uint8 images, over the pixels where `where` (H, W) is true."""
  d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
  if where is not None:
    d = d[np.broadcast_to(where[..., None].astype(bool), d.shape)]
  mse = float(d.mean()) if d.size else 0.0
  return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


__all__ = [
    "EditInputError",
    "Placement",
    "load_image",
    "load_mask",
    "check_strength",
    "prepare_image",
    "prepare_images",
    "restore_size",
    "binarize_mask",
    "prepare_mask",
    "latent_mask",
    "feather_weights",
    "composite",
    "psnr",
]

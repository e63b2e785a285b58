"""Image decoding for the input pipeline: bytes/paths/arrays -> RGB uint8, crop, resize.

Every image becomes RGB uint8 whatever it was stored as:
  * grayscale ("L", "1") is replicated to three channels;
  * alpha ("RGBA", "LA", palette with transparency, ...) is composited onto a solid
    background, white by default (`data.alpha_background="white" | "black"`): most
    transparent images on the web (logos, cut-outs, icons) are drawn for a white page;
  * CMYK (Adobe-inverted JPEGs included) goes through PIL's CMYK -> RGB conversion
    (embedded ICC profiles are ignored);
  * 16-bit ("I;16*", "I") is scaled to 8 bits (x / 257); float ("F") is clipped;
  * palette ("P") is expanded; EXIF orientation is applied.

Bad inputs raise `BadImage(kind)` with one of the kinds below, which the pipeline skips
and counts. Huge images (more than `max_pixels`, default 50 MP): JPEGs are decoded
downscaled with PIL's `draft` (DCT-domain 1/2, 1/4 or 1/8 scaling, so the full bitmap
is never materialised) and counted as "repaired_downscaled"; other formats must be
decoded at full size by their codecs and are skipped as "skipped_too_large", as is
anything beyond PIL's own bomb limit (2 x Image.MAX_IMAGE_PIXELS, ~179 MP), which PIL
refuses to open, JPEGs included. Images whose shorter side is below `min_size`
(e.g. 1x1) are skipped as "skipped_too_small"; empty files, files that are not images,
truncated or corrupt ones, and unreadable paths as "skipped_empty_file",
"skipped_not_image", "skipped_corrupt" and "skipped_unreadable".
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageOps

# We bound sizes ourselves (max_pixels); PIL's bomb check would only warn or raise later.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

SKIPPED_EMPTY_FILE = "skipped_empty_file"
SKIPPED_NOT_IMAGE = "skipped_not_image"
SKIPPED_CORRUPT = "skipped_corrupt"
SKIPPED_UNREADABLE = "skipped_unreadable"
SKIPPED_TOO_SMALL = "skipped_too_small"
SKIPPED_TOO_LARGE = "skipped_too_large"
REPAIRED_DOWNSCALED = "repaired_downscaled"

_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")


class BadImage(Exception):
  """An image that cannot be used; `kind` names the reason (a counter name)."""

  def __init__(self, kind: str, message: str):
    super().__init__(f"{kind}: {message}")
    self.kind = kind


def background_color(name: str) -> tuple[int, int, int]:
  if name not in _BACKGROUNDS:
    raise ValueError(f"alpha_background must be one of {sorted(_BACKGROUNDS)}, got {name!r}.")
  return _BACKGROUNDS[name]


def open_image(data: bytes) -> Image.Image:
  """Opens (reads the header of) encoded bytes; raises BadImage if unusable."""
  if not data:
    raise BadImage(SKIPPED_EMPTY_FILE, "zero bytes")
  try:
    return Image.open(io.BytesIO(data))
  except Image.DecompressionBombError as e:
    raise BadImage(SKIPPED_TOO_LARGE, str(e)) from e
  except Image.UnidentifiedImageError as e:
    raise BadImage(SKIPPED_NOT_IMAGE, "not a recognised image format") from e
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise BadImage(SKIPPED_CORRUPT, repr(e)) from e


def _composite(pil: Image.Image, background: tuple[int, int, int]) -> Image.Image:
  rgba = pil.convert("RGBA")
  base = Image.new("RGBA", rgba.size, background + (255,))
  return Image.alpha_composite(base, rgba).convert("RGB")


def pil_to_rgb(pil: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
  """Any PIL mode -> uint8 (H, W, 3)."""
  mode = pil.mode
  if mode == "RGB":
    return np.asarray(pil, dtype=np.uint8)
  if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in pil.info):
    return np.asarray(_composite(pil, background), dtype=np.uint8)
  if mode.startswith("I") or mode == "F":
    values = np.asarray(pil)
    if mode == "F":
      values = values * 255.0 if values.size and values.max() <= 1.0 else values
      gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
    else:  # 16-bit (or 32-bit int) grey levels.
      gray = np.clip(np.round(values.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)
    if gray.ndim == 2:
      gray = np.repeat(gray[..., None], 3, axis=-1)
    return gray[..., :3]
  return np.asarray(pil.convert("RGB"), dtype=np.uint8)


def decode_bytes(
    data: bytes,
    *,
    min_decode_size: int,
    max_pixels: int,
    min_size: int,
    background: tuple[int, int, int],
) -> tuple[np.ndarray, list[str]]:
  """Decodes encoded image bytes.

  Args:
    data: the encoded file.
    min_decode_size: JPEGs may be decoded downscaled while both sides stay >= this.
    max_pixels: larger images are downscaled (JPEG) or skipped (other formats).
    min_size: images with a shorter side below this are skipped.
    background: RGB colour that transparent pixels are composited onto.

  Returns:
    (uint8 (H, W, 3), list of repair kinds applied).

  Raises:
    BadImage: the image is unusable.
  """
  repairs = []
  with open_image(data) as pil:
    width, height = pil.size
    if min(width, height) < min_size:
      raise BadImage(SKIPPED_TOO_SMALL, f"{width}x{height} < {min_size} px")
    too_large = width * height > max_pixels
    if pil.format == "JPEG":
      # The smallest DCT scale (down to 1/8) that keeps both sides >= min_decode_size.
      pil.draft(None, (min_decode_size, min_decode_size))
      if pil.size[0] * pil.size[1] > max_pixels:
        raise BadImage(SKIPPED_TOO_LARGE, f"{width}x{height} JPEG is still {pil.size} after draft")
      if too_large:
        repairs.append(REPAIRED_DOWNSCALED)
    elif too_large:
      raise BadImage(SKIPPED_TOO_LARGE, f"{pil.format} {width}x{height} > max_pixels={max_pixels}")
    try:
      pil.load()
      pil = ImageOps.exif_transpose(pil)
      return pil_to_rgb(pil, background), repairs
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise BadImage(SKIPPED_CORRUPT, repr(e)) from e


def array_to_rgb(image: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
  """An in-memory array (H, W), (H, W, 1|3|4), uint8 or uint16 -> uint8 (H, W, 3)."""
  if image.dtype == np.uint16:
    image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise BadImage(SKIPPED_CORRUPT, f"bad image array shape {image.shape}")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  elif image.shape[-1] == 4:
    alpha = image[..., 3:].astype(np.float32) / 255.0
    rgb = image[..., :3].astype(np.float32) * alpha + np.float32(background) * (1 - alpha)
    image = np.round(rgb)
  return np.asarray(image, dtype=np.uint8)


def load_rgb(
    record: dict[str, Any],
    *,
    min_decode_size: int,
    max_pixels: int,
    min_size: int,
    background: tuple[int, int, int],
) -> tuple[np.ndarray, list[str]]:
  """The RGB pixels of a source record ("image" array or bytes, or "path")."""
  image = record.get("image")
  if isinstance(image, np.ndarray) and image.dtype != object:
    if min(image.shape[:2]) < min_size:
      raise BadImage(SKIPPED_TOO_SMALL, f"array {image.shape[:2]} < {min_size} px")
    return array_to_rgb(image, background), []
  if isinstance(image, np.ndarray):  # A 0-d object array holding bytes.
    image = image.item()
  if isinstance(image, (bytes, bytearray)):
    data = bytes(image)
  elif record.get("path"):
    try:
      with open(record["path"], "rb") as f:
        data = f.read()
    except OSError as e:
      raise BadImage(SKIPPED_UNREADABLE, repr(e)) from e
  else:
    raise BadImage(SKIPPED_CORRUPT, f"record has no pixels (keys {sorted(record)})")
  return decode_bytes(
      data,
      min_decode_size=min_decode_size,
      max_pixels=max_pixels,
      min_size=min_size,
      background=background,
  )


def read_file(path: str, background: tuple[int, int, int] = _BACKGROUNDS["white"]) -> np.ndarray:
  """An image file at full resolution -> uint8 (H, W, 3), as the training pipeline reads it
  (16-bit scaled, alpha composited on `background`, EXIF orientation applied); the reader of
  user files outside training (`--init_image`, `--mask`). Raises BadImage."""
  image, _ = load_rgb(
      {"path": path},
      min_decode_size=1 << 30,  # never a downscaled JPEG draft
      max_pixels=1 << 62,
      min_size=1,
      background=background,
  )
  return image


def crop_box(
    height: int, width: int, crop: str, rng: np.random.Generator | None
) -> tuple[int, int, int, int]:
  """The largest square (left, top, right, bottom): centred, or random if crop="random"."""
  side = min(height, width)
  if crop == "random" and rng is not None:
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
  else:
    top, left = (height - side) // 2, (width - side) // 2
  return left, top, left + side, top + side


def resize_box(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """Crops `box` out of `image` and resizes it to (size, size) (bicubic, antialiased)."""
  left, top, right, bottom = box
  if (right - left, bottom - top) == (size, size):
    return np.ascontiguousarray(image[top:bottom, left:right])
  pil = Image.fromarray(image)
  return np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC, box=box))

"""Figures of a class-conditioned chain on a real labelled dataset (the Fashion-MNIST demo).

  base = class_figures.bicubic_baseline(images, side=8)   # PSNR / SSIM of down-up bicubic
  class_figures.class_grid(images_by_class, class_names, "grid.png")  # one row per class

The bicubic baseline says what the autoencoder's figures are worth: the test images reduced to
the latent's spatial size (side x side x 3 values, against the latent's side x side x C) and
enlarged back, both bicubic, scored with the same PSNR / SSIM as the reconstructions.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageDraw

from psvae_jax.evals import image_metrics

_LABEL_WIDTH = 96  # pixels of the class-name column
_PAD = 2


def bicubic_baseline(images: np.ndarray, side: int, batch_size: int = 250) -> dict[str, float]:
  """Mean PSNR / SSIM (and their standard errors) of bicubic down to `side`, then back up.

  Args:
    images: float32 (N, S, S, 3) in [-1, 1].
    side: the reduced side (the latent's spatial size).
    batch_size: images per jitted call.

  Returns:
    {"psnr", "psnr_se", "ssim", "ssim_se", "num_images", "side"}.
  """
  n, s = images.shape[0], images.shape[1]

  @jax.jit
  def scores(x):
    small = jax.image.resize(x, (x.shape[0], side, side, 3), "bicubic", antialias=True)
    back = jnp.clip(jax.image.resize(small, x.shape, "bicubic"), -1.0, 1.0)
    return image_metrics.psnr(back, x), image_metrics.ssim(back, x)

  psnrs, ssims = [], []
  for i in range(0, n, batch_size):
    p, q = scores(jnp.asarray(images[i : i + batch_size], jnp.float32))
    psnrs.append(np.asarray(p))
    ssims.append(np.asarray(q))
  psnr, ssim = np.concatenate(psnrs), np.concatenate(ssims)
  se = lambda v: float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
  return {
      "psnr": float(psnr.mean()),
      "psnr_se": se(psnr),
      "ssim": float(ssim.mean()),
      "ssim_se": se(ssim),
      "num_images": int(n),
      "side": int(side),
      "image_size": int(s),
  }


def class_grid(
    rows: Sequence[np.ndarray], class_names: Sequence[str], path: str, scale: int = 2
) -> str:
  """Writes a PNG with one row per class: its name, then its images; returns `path`.

  Args:
    rows: per class, uint8 (K, H, W, 3) images (same K, H, W for all rows).
    class_names: one name per row.
    path: output PNG.
    scale: nearest-neighbour enlargement of each tile (small images stay legible).
  """
  if len(rows) != len(class_names):
    raise ValueError(f"{len(rows)} rows for {len(class_names)} class names.")
  k, h, w = rows[0].shape[:3]
  th, tw = h * scale, w * scale
  canvas = Image.new(
      "RGB", (_LABEL_WIDTH + k * (tw + _PAD), len(rows) * (th + _PAD)), (255, 255, 255)
  )
  draw = ImageDraw.Draw(canvas)
  for r, (images, name) in enumerate(zip(rows, class_names)):
    y = r * (th + _PAD)
    draw.text((4, y + th // 2 - 6), str(name)[:16], fill=(0, 0, 0))
    for c in range(images.shape[0]):
      tile = Image.fromarray(np.asarray(images[c], np.uint8)).resize((tw, th), Image.NEAREST)
      canvas.paste(tile, (_LABEL_WIDTH + c * (tw + _PAD), y))
  canvas.save(path)
  return path

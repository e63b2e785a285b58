"""The class demo's figures: the bicubic baseline and the per-class grid."""

import numpy as np
from PIL import Image

from psvae_jax.experiments import class_figures


def _smooth(n=3, size=32):
  yy, xx = np.mgrid[0:size, 0:size] / size
  img = np.stack([np.sin(3 * xx + k) * np.cos(2 * yy) for k in range(3)], -1)
  return np.repeat(img[None], n, 0).astype(np.float32) * 0.8


def test_bicubic_baseline():
  x = _smooth()
  same = class_figures.bicubic_baseline(x, 32)
  assert same["psnr"] == 100.0 and same["ssim"] > 0.999  # identity at full size
  smooth = class_figures.bicubic_baseline(x, 8)
  noise = np.random.default_rng(0).uniform(-1, 1, x.shape).astype(np.float32)
  noisy = class_figures.bicubic_baseline(noise, 8)
  assert 20 < smooth["psnr"] < 100 and noisy["psnr"] < smooth["psnr"] - 5
  assert smooth["num_images"] == 3 and smooth["side"] == 8


def test_class_grid(tmp_path):
  rows = [np.full((5, 8, 8, 3), 40 * c, np.uint8) for c in range(3)]
  path = class_figures.class_grid(rows, ["a", "b", "c"], str(tmp_path / "g.png"), scale=2)
  grid = np.asarray(Image.open(path))
  assert grid.shape[0] == 3 * (16 + 2)
  # Row c's first tile holds its images' value.
  assert grid[18 + 4, 96 + 4, 0] == 40 and grid[36 + 4, 96 + 4, 0] == 80

"""Tests for psvae_jax.evals.image_metrics against numpy and scikit-image."""

import jax
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from psvae_jax.evals import image_metrics


def _unit(x):
  return np.clip((np.asarray(x, np.float64) + 1.0) / 2.0, 0.0, 1.0)


def _sk_ssim(x, y):
  return np.array(
      [
          structural_similarity(
              a,
              b,
              channel_axis=-1,
              data_range=1.0,
              gaussian_weights=True,
              sigma=1.5,
              use_sample_covariance=False,
          )
          for a, b in zip(_unit(x), _unit(y))
      ]
  )


def _pairs(size, seed=0):
  """Random, noisy-copy and structured (gradients, edges, checkerboard) pairs."""
  rng = np.random.default_rng(seed)
  out = []
  x = rng.uniform(-1, 1, (2, size, size, 3))
  out.append((x, rng.uniform(-1, 1, x.shape)))  # unrelated
  out.append((x, np.clip(x + 0.1 * rng.normal(size=x.shape), -1, 1)))  # noisy
  yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
  grad = np.stack([xx, yy, xx * yy], -1) * 2 - 1
  edges = np.where((xx > 0.5)[..., None], 0.8, -0.6) * np.ones((1, 1, 3))
  checker = (np.arange(size)[:, None] // 4 + np.arange(size)[None] // 4) % 2
  checker = np.repeat(checker[..., None] * 1.6 - 0.8, 3, -1)
  s1 = np.stack([grad, edges])
  s2 = np.stack([np.clip(grad + 0.2 * checker, -1, 1), 0.5 * edges + 0.1])
  out.append((s1, s2))
  out.append((s1, np.clip(s1 + 0.05 * rng.normal(size=s1.shape), -1, 1)))
  # Out-of-range values are clipped by both implementations.
  out.append((1.3 * x, np.clip(x + 0.3, -1.2, 1.2)))
  return [(np.float32(a), np.float32(b)) for a, b in out]


@pytest.mark.parametrize("size", [32, 64])
def test_psnr_matches_numpy_and_skimage(size):
  psnr = jax.jit(image_metrics.psnr)
  for x, y in _pairs(size):
    got = np.asarray(psnr(x, y))
    a, b = _unit(x), _unit(y)
    mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
    ref = 10 * np.log10(1.0 / np.maximum(mse, 1e-10))
    sk = np.array([peak_signal_noise_ratio(ai, bi, data_range=1.0) for ai, bi in zip(a, b)])
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got, sk, atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", [32, 64])
def test_ssim_matches_skimage(size):
  ssim = jax.jit(image_metrics.ssim)
  worst = 0.0
  for x, y in _pairs(size):
    got = np.asarray(ssim(x, y))
    ref = _sk_ssim(x, y)
    assert got.shape == (x.shape[0],)
    worst = max(worst, float(np.max(np.abs(got - ref))))
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
  assert worst < 1e-4


def test_gaussian_filter_matches_scipy():
  from scipy.ndimage import gaussian_filter  # pylint: disable=g-import-not-at-top

  x = np.random.default_rng(1).uniform(0, 1, (1, 32, 32, 2)).astype(np.float32)
  got = np.asarray(jax.jit(image_metrics.gaussian_filter2d)(x))
  ref = gaussian_filter(x.astype(np.float64), sigma=(0, 1.5, 1.5, 0), truncate=3.5, mode="reflect")
  np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)


def test_identical_images():
  x = np.float32(np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)))
  np.testing.assert_allclose(np.asarray(jax.jit(image_metrics.ssim)(x, x)), 1.0, atol=1e-6)
  assert np.all(np.asarray(jax.jit(image_metrics.psnr)(x, x)) >= 99.0)


def test_ssim_rejects_tiny_images():
  x = np.zeros((1, 8, 8, 3), np.float32)
  with pytest.raises(ValueError, match="H, W >= 11"):
    image_metrics.ssim(x, x)

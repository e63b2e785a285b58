"""FID statistics and distance: pytorch-fid / scipy agreement, singular cases, batching invariance.

pytorch-fid 0.3.0 cannot be imported here (its fid_score and inception modules import
torchvision, which is not installed), so `_pytorch_fid_frechet` below re-implements its
`calculate_frechet_distance` with the same steps (scipy sqrtm of the product, eps offset on
a non-finite result, real part) as the reference.
"""

import numpy as np
import pytest
from scipy import linalg

from psvae_jax.evals import fid


def _pytorch_fid_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
  diff = mu1 - mu2
  covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError("Imaginary component")
    covmean = covmean.real
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _features(seed, n, d, shift=0.0):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  return (np.maximum(rng.normal(size=(n, d)) @ mix + shift, 0)).astype(np.float32)


def test_running_stats_equal_numpy_and_do_not_depend_on_batching():
  f = _features(0, 300, 32)
  mask = np.ones(300, bool)
  mask[-7:] = False  # padding rows
  f64 = f[mask].astype(np.float64)
  ref_mu, ref_sigma = f64.mean(0), np.cov(f64, rowvar=False)
  for bs in (8, 32, 64, 300):
    s = fid.FeatureStats(32)
    for i in range(0, 300, bs):
      s.update(f[i : i + bs], mask[i : i + bs])
    mu, sigma = s.finalize()
    assert s.count == 293
    np.testing.assert_allclose(mu, ref_mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-10, atol=1e-12)


def test_fid_matches_pytorch_fid_and_self_is_zero():
  a, b = _features(1, 2000, 64), _features(2, 2000, 64, shift=0.3)
  sa, sb = fid.FeatureStats(64).update(a), fid.FeatureStats(64).update(b)
  (mu1, s1), (mu2, s2) = sa.finalize(), sb.finalize()
  ours = fid.frechet_distance(mu1, s1, mu2, s2)
  ref = _pytorch_fid_frechet(mu1, s1, mu2, s2)
  print(f"fid ours {ours:.8f} pytorch-fid {ref:.8f} rel {abs(ours - ref) / ref:.2e}")
  assert abs(ours - ref) <= 1e-3 * ref
  assert fid.frechet_distance(mu1, s1, mu1, s1) <= 1e-6


def test_near_singular_covariances_stay_finite_and_agree():
  # Fewer samples than dimensions: rank-deficient covariances.
  a, b = _features(3, 40, 64), _features(4, 40, 64, shift=0.1)
  (mu1, s1), (mu2, s2) = (
      fid.FeatureStats(64).update(a).finalize(),
      fid.FeatureStats(64).update(b).finalize(),
  )
  ours = fid.frechet_distance(mu1, s1, mu2, s2)
  ref = _pytorch_fid_frechet(mu1, s1, mu2, s2)
  assert np.isfinite(ours) and ours > 0
  assert abs(ours - ref) <= 1e-3 * abs(ref)
  # tr(sqrt(S1 S2)) against scipy's sqrtm on a well-conditioned pair
  w1, w2 = np.cov(_features(5, 500, 16), rowvar=False), np.cov(_features(6, 500, 16), rowvar=False)
  np.testing.assert_allclose(
      fid.trace_sqrt_product(w1, w2), np.trace(linalg.sqrtm(w1 @ w2)).real, rtol=1e-8
  )


def test_non_finite_inputs_raise():
  mu, sigma = np.zeros(4), np.eye(4)
  bad = sigma.copy()
  bad[0, 0] = np.nan
  with pytest.raises(FloatingPointError):
    fid.frechet_distance(mu, bad, mu, sigma)
  with pytest.raises(FloatingPointError):
    fid.FeatureStats(4).update(np.full((2, 4), np.inf))


def test_reference_stats_round_trip_and_adm_format(tmp_path):
  mu, sigma = np.arange(3.0), np.eye(3) * 2
  fid.save_stats(str(tmp_path / "ref.npz"), mu, sigma, dataset="shapes", num_images=10)
  m2, s2, meta = fid.load_stats(str(tmp_path / "ref.npz"))
  np.testing.assert_array_equal(m2, mu)
  np.testing.assert_array_equal(s2, sigma)
  assert meta == {"dataset": "shapes", "num_images": 10}
  np.savez(
      tmp_path / "adm.npz",
      arr_0=np.zeros((2, 4, 4, 3), np.uint8),
      mu=mu,
      sigma=sigma,
      mu_s=mu,
      sigma_s=sigma,
  )
  m3, _, meta3 = fid.load_stats(str(tmp_path / "adm.npz"))
  np.testing.assert_array_equal(m3, mu)
  assert "adm.npz" in meta3["source"]

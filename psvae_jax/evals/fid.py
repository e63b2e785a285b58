"""FID: float64 running feature statistics (per host, reduced across hosts) and the Frechet
distance.

  stats = FeatureStats(2048)
  for batch in batches: stats.update(features, mask)     # per host, float64
  mu, sigma = stats.allreduce().finalize()               # all hosts' images
  fid = frechet_distance(mu, sigma, ref_mu, ref_sigma)

The statistics are exact sums, so they do not depend on the batch size, the order of the
batches or the number of devices/hosts (up to float64 rounding). The covariance is the
unbiased one (``np.cov(features, rowvar=False)``), as pytorch-fid and the TF reference use.

The matrix square root: tr(sqrt(S1 S2)) = tr(sqrt(A S2 A)) with A = S1^(1/2) (S1 S2 and
A S2 A share eigenvalues), and A S2 A is symmetric PSD, so a symmetric eigendecomposition
gives it without complex intermediates; eigenvalues that rounding made slightly negative
are clipped to 0. This is stable for near-singular covariances (fewer samples than
dimensions), where ``scipy.linalg.sqrtm`` of the non-symmetric product can return
inf/NaN or a complex result. Non-finite inputs raise instead of returning NaN.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
from etils import epath


def _allgather_f64(x: np.ndarray) -> np.ndarray:
  """(P, ...) float64 from every process, exact: gathered as uint32 bit patterns."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  bits = np.ascontiguousarray(x, np.float64).view(np.uint32)
  out = np.asarray(multihost_utils.process_allgather(bits))  # (P, ...)
  return out.view(np.float64).reshape((jax.process_count(),) + x.shape)


@dataclasses.dataclass
class FeatureStats:
  """Running float64 sums of features: count, mean and scatter (sum of centred outer products)."""

  dim: int
  count: int = 0
  mean: np.ndarray | None = None
  scatter: np.ndarray | None = None

  def __post_init__(self):
    if self.mean is None:
      self.mean = np.zeros((self.dim,), np.float64)
      self.scatter = np.zeros((self.dim, self.dim), np.float64)

  def update(self, features: Any, mask: Any = None) -> "FeatureStats":
    """Adds (N, dim) features (rows with mask False are padding and are skipped)."""
    f = np.asarray(features, np.float64).reshape(-1, self.dim)
    if mask is not None:
      f = f[np.asarray(mask, bool).reshape(-1)]
    if not len(f):
      return self
    if not np.isfinite(f).all():
      raise FloatingPointError(f"{int((~np.isfinite(f)).sum())} non-finite feature values.")
    batch = FeatureStats(self.dim, len(f), f.mean(0))
    c = f - batch.mean
    batch.scatter = c.T @ c
    return self.merge(batch)

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    """Chan et al.'s exact combination of two sets of sums (in place)."""
    if other.count == 0:
      return self
    n = self.count + other.count
    delta = other.mean - self.mean
    self.scatter = (
        self.scatter + other.scatter + np.outer(delta, delta) * (self.count * other.count / n)
    )
    self.mean = self.mean + delta * (other.count / n)
    self.count = n
    return self

  def allreduce(self) -> "FeatureStats":
    """The statistics over all processes' features (every process gets the same)."""
    if jax.process_count() == 1:
      return self
    counts = _allgather_f64(np.asarray([self.count], np.float64))[:, 0]
    means, scatters = _allgather_f64(self.mean), _allgather_f64(self.scatter)
    out = FeatureStats(self.dim)
    for c, m, s in zip(counts, means, scatters):
      out.merge(FeatureStats(self.dim, int(c), m, s))
    return out

  def finalize(self) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma): mean (dim,) and unbiased covariance (dim, dim), float64."""
    if self.count < 2:
      raise ValueError(f"FID statistics need at least 2 images, got {self.count}.")
    return self.mean.copy(), self.scatter / (self.count - 1)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr(sqrt(sigma1 @ sigma2)) for symmetric PSD matrices, via symmetric eigensolvers."""
  s1 = (sigma1 + sigma1.T) / 2
  s2 = (sigma2 + sigma2.T) / 2
  w, v = np.linalg.eigh(s1)
  a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S1^(1/2)
  m = a @ s2 @ a
  ev = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sum(np.sqrt(np.clip(ev, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), in float64; never NaN silently."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(
      np.asarray(sigma2, np.float64)
  )
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(
        f"FID statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, "
        f"sigma {s1.shape} vs {s2.shape}."
    )
  for name, x in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
    if not np.isfinite(x).all():
      raise FloatingPointError(f"FID input {name} has non-finite values.")
  diff = mu1 - mu2
  fid = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
  if not np.isfinite(fid):
    raise FloatingPointError("FID is not finite.")
  return max(fid, 0.0)  # rounding can leave -1e-12 for identical statistics


# ---- reference statistics --------------------------------------------------------------------
def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray, **meta) -> None:
  """Our cache format: an .npz with `mu`, `sigma` (ADM-compatible keys) and a JSON `meta`."""
  p = epath.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  with p.open("wb") as f:
    np.savez(f, mu=mu, sigma=sigma, meta=np.asarray(json.dumps(meta, sort_keys=True)))


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray, dict]:
  """(mu, sigma, meta) from our cache or an ADM reference batch (e.g.
  VIRTUAL_imagenet256_labeled.npz).

  ADM's files hold `mu`/`sigma` (pool3) next to `mu_s`/`sigma_s` (spatial) and the images
  `arr_0`; only `mu` and `sigma` are read (np.load is lazy, the images are not loaded).
  """
  with epath.Path(path).open("rb") as f:
    data = np.load(f, allow_pickle=False)
    if "mu" not in data or "sigma" not in data:
      raise ValueError(f"{path} has no mu/sigma (keys: {sorted(data.keys())}).")
    meta = json.loads(str(data["meta"])) if "meta" in data else {"source": str(path)}
    return np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64), meta

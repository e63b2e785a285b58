"""What several test modules share: the repository root, running an entry point in a fresh
process, and moving weights off their initial values (zero or constant-initialised layers would
hide the computation a parity test checks). Imported as `import helpers` (pytest puts tests/ on
sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module: str, *args: str, env=None, devices: int | None = None, timeout=600):
  """`python -m MODULE ARGS` from the repository root -> CompletedProcess (text, captured).

  devices: simulated CPU devices in the child (XLA_FLAGS); None keeps this process's."""
  if devices is not None:
    env = dict(os.environ if env is None else env)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.run(
      [sys.executable, "-m", module, *args],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def perturb_torch(model, seed: int | None = None):
  """A PyTorch model's 1-D norm weights set to 1 + 0.2 N(0, 1) and other 1-D parameters (biases)
  moved by 0.2 N(0, 1), in place, from torch's RNG (seeded first when `seed` is given)."""
  import torch  # pylint: disable=g-import-not-at-top

  if seed is not None:
    torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif p.ndim == 1:
        p.add_(0.2 * torch.randn_like(p))
  return model


def perturbed(params, scale: float = 0.02, seed: int = 0):
  """A params pytree plus scale * N(0, 1) per leaf (numpy's generator, leaves in tree order), each
  leaf keeping its dtype."""
  import jax  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: x + np.asarray(scale * rng.standard_normal(np.shape(x)), np.asarray(x).dtype),
      params,
  )


def max_err(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))

"""The workdir contract (shared/DESIGN.md section 3): the names of what a run writes, reading a
run's config (with its one legacy migration) and its class names. No JAX, no flax: the CLIs check
a workdir with this before anything heavy loads. Paths are etils.epath's (local or gs://).

  config.json          the resolved config (train/loop.py writes it at the start)
  data.json            the splits' sizes, record fingerprints, class names (data/provenance.py)
  paths.json           the runs it points at, relative to it (paths.py)
  latent_stats.npz     the latent's per-channel statistics (latent_stats.py)
  metrics.json         the last evaluation's figures (writers.py)
  eval_history.jsonl   one line per periodic evaluation (writers.py)
  checkpoints/         Orbax (checkpoint.py)
  samples/             periodic sample grids (train/loop.py)
"""

from __future__ import annotations

import json

from etils import epath

from psvae_jax.diffusion import settings

CONFIG = "config.json"
DATA = "data.json"
PATHS = "paths.json"
LATENT_STATS = "latent_stats.npz"
METRICS = "metrics.json"
EVAL_HISTORY = "eval_history.jsonl"
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"


def read_config_dict(workdir: str) -> dict:
  """DIR/config.json as a dict, its `sample` keys as they are named now (a config written before
  the rename cfg -> guidance_scale loads renamed). FileNotFoundError when it is not a workdir."""
  path = epath.Path(workdir) / CONFIG
  if not path.exists():
    raise FileNotFoundError(f"{workdir} is not a psvae-jax workdir (no {CONFIG}).")
  return settings.rename_legacy_sample_keys(json.loads(path.read_text()))


def read_config(workdir: str):
  """DIR/config.json as an ml_collections.ConfigDict (read_config_dict's)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  return ml_collections.ConfigDict(read_config_dict(workdir))


def class_names(workdir: str) -> list[str]:
  """The class names DIR/data.json recorded (the sorted class folders); [] when none."""
  path = epath.Path(workdir) / DATA
  return list(json.loads(path.read_text()).get("class_names", [])) if path.exists() else []

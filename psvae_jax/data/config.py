"""The data config every `psvae_jax.data` entry point reads, complete.

The fields and their defaults are written once, in `configs.common.data_config`.
A run resolves its data config once, where it starts: a stage config's `data` is complete from
`base_config`, and the stored configs a run reads (a workdir's config.json, a latent cache's
meta.json, written before a field existed) are resolved when read. The data functions take the
config through `complete`, which hands a complete ConfigDict back as it is (no copy, nothing
re-filled) and resolves only a partial one (a test's dict, a plugin's), so the code reads
`cfg.field` and never restates a default.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any

import ml_collections

from configs import common

_FIELDS = frozenset(common.data_config())


def complete(data_cfg: Any) -> ml_collections.ConfigDict:
  """`data_cfg` itself when it is a ConfigDict with every data field, else `resolve(data_cfg)`."""
  if isinstance(data_cfg, ml_collections.ConfigDict) and _FIELDS.issubset(data_cfg.keys()):
    return data_cfg
  return resolve(data_cfg)


def resolve(data_cfg: Any) -> ml_collections.ConfigDict:
  """`data_cfg` (ConfigDict, mapping or dataclass) over the defaults of configs/common.py.

  Fields unknown to the defaults are kept. The result is a new, unlocked ConfigDict.
  """
  if hasattr(data_cfg, "to_dict"):
    given = data_cfg.to_dict()
  elif isinstance(data_cfg, Mapping):
    given = dict(data_cfg)
  elif dataclasses.is_dataclass(data_cfg):
    given = dataclasses.asdict(data_cfg)
  else:
    given = dict(vars(data_cfg))
  return ml_collections.ConfigDict({**common.data_config().to_dict(), **given})

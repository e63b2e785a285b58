"""The data config every `psvae_jax.data` entry point reads, complete.

The fields and their defaults are written once, in `configs.common.data_config`.
Callers may pass a partial config: a test's dict, or the data config of an older
workdir's config.json or latent cache's meta.json (written before a field existed);
`resolve` fills the missing fields from those defaults, so the code reads
`cfg.field` and never restates a default.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any

import ml_collections

from configs import common


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

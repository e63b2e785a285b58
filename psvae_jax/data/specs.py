"""`KIND:ARGS` data specs: the `--data` of the latent cache, evaluate and the feature-net trainer.

  shapes:num=2048,seed=0                  synthetic shapes (num = data.num_train)
  folder:/data/images,num_train=10000     an image folder (a bare directory also works)
  folder:path=/data/fmnist                the same, with the key
  tfds:imagenet2012,path=/data/tfds,label_captions=true
                                          a prepared tfds dataset (path = data_dir)

ARGS are comma-separated `key=value` fields of the data config (configs/common.py
`data_config`), the first of which may be a bare value. num_train and num_eval default to 0 (every
record) rather than the training defaults.
"""

from __future__ import annotations

import pathlib

import ml_collections

from configs import common
from psvae_jax.data import sources


def parse_data_spec(spec: str, image_size: int) -> ml_collections.ConfigDict:
  """`KIND:ARGS` (or a bare directory) -> a locked data config (see module docstring)."""
  cfg = common.data_config()
  cfg.image_size, cfg.num_train, cfg.num_eval = int(image_size), 0, 0
  cfg.lock()
  kind, sep, rest = spec.partition(":")
  if not sep or kind not in sources.SOURCES:
    path = pathlib.Path(spec).expanduser()
    if not path.is_dir():
      raise ValueError(
          f"--data={spec!r}: expected KIND:ARGS with KIND in "
          f"{sorted(sources.SOURCES)}, or an existing directory."
      )
    kind = "tfds" if (path / "dataset_info.json").is_file() else "folder"
    rest = f"path={spec}"
  cfg.source = kind
  for i, item in enumerate(p for p in rest.split(",") if p):
    key, eq, value = item.partition("=")
    if not eq:
      if i:
        raise ValueError(f"--data: {item!r} must be key=value.")
      key, value = ("tfds_name" if kind == "tfds" else "path"), item
    key = {"num": "num_train"}.get(key, key)
    if key not in cfg:
      raise ValueError(f"--data: unknown field {key!r} (data config fields: {sorted(cfg)}).")
    current = cfg[key]
    if isinstance(current, bool):
      cfg[key] = value.lower() in ("1", "true", "yes", "on")
    else:
      cfg[key] = type(current)(value)
  if cfg.image_size != image_size:
    raise ValueError(
        f"--data image_size={cfg.image_size} differs from the autoencoder's " f"{image_size}."
    )
  if kind in ("shapes", "shapes_instruct") and cfg.num_train <= 0:
    raise ValueError(f"--data={kind} needs num=N (the number of images to cache).")
  return cfg

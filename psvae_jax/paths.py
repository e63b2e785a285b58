"""Workdirs that move: the directories a run points at, also recorded relative to the workdir.

A stage-3 workdir names its autoencoder and text encoder or fusion generator's Qwen2 directory
(generator.weights; and stage 2 its stage-1 run) by the path
given at training start. `record` writes DIR/paths.json with each of them relative to DIR
("../psvae"), and `relocate` uses that when the stored path no longer exists (a demo folder copied
or moved as a whole), or an explicit override (`--autoencoder=`, `--text_encoder=` on the sample
CLI, `api.load(..., autoencoder=...)`).
"""

from __future__ import annotations

import json
import os

from absl import logging
from etils import epath

from psvae_jax import workdir as workdir_lib

FIELDS = ("autoencoder", "text_encoder", "init_from", "generator.weights")


def _get(config, field: str) -> str:
  node = config
  for part in field.split("."):
    node = node.get(part) if node is not None else None
  return node or ""


def _set(config, field: str, value: str) -> None:
  *parents, leaf = field.split(".")
  for part in parents:
    config = config[part]
  config[leaf] = value


def _is_local(path: str) -> bool:
  return "://" not in path


def record(config, workdir: str) -> None:
  """Writes DIR/paths.json: each set FIELDS path relative to the workdir (local paths only)."""
  if not _is_local(str(workdir)):
    return
  out = {}
  for field in FIELDS:
    value = _get(config, field)
    if value and _is_local(value):
      out[field] = os.path.relpath(os.path.abspath(value), os.path.abspath(workdir))
  (epath.Path(workdir) / workdir_lib.PATHS).write_text(json.dumps(out, indent=2))


def relocate(config, workdir: str, **overrides: str | None) -> None:
  """Points config's FIELDS at what exists: an override if given, the stored path if it exists,
  else the path recorded relative to the workdir (if that exists). Changes config in place."""
  relative = {}
  path = epath.Path(workdir) / workdir_lib.PATHS
  if path.exists():
    relative = json.loads(path.read_text())
  for field in FIELDS:
    if overrides.get(field):
      _set(config, field, overrides[field])
      continue
    value = _get(config, field)
    if not value or epath.Path(value).exists() or field not in relative:
      continue
    moved = os.path.normpath(os.path.join(str(workdir), relative[field]))
    if os.path.exists(moved):
      logging.info(
          "%s: %s is gone; using %s (recorded relative to the workdir).", field, value, moved
      )
      _set(config, field, moved)

"""Portable export (psvae_jax/export.py): safetensors + JSON that api.load reads without the
workdir's Orbax checkpoints, giving the same images; moved exports still load; bad files fail."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from psvae_jax import api
from psvae_jax import frozen_psvae
from psvae_jax import checkpoint
from psvae_jax import export

PROMPTS = ["a red circle on the left and a blue square on the right", "a green square"]


def test_dit_export_round_trip_after_a_move(trained_dit, tmp_path):
  src = str(trained_dit / "dit")
  info = export.export(src, str(tmp_path / "first"))
  assert info["stage"] == "dit" and info["step"] == 4
  files = set(info["files"])
  assert {"config.json", "ema_params.safetensors", "latent_stats.npz", "paths.json"} <= files
  assert {"autoencoder/ema_params.safetensors", "text_encoder/config.json"} <= files
  assert not any("checkpoints" in f for f in files)  # no Orbax in an export
  os.rename(tmp_path / "first", tmp_path / "moved")  # config.json's absolute paths are gone now

  ref = api.load(src)
  got = api.load(str(tmp_path / "moved"))
  for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(got.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(
      ref.generate(PROMPTS, steps=4, seed=3), got.generate(PROMPTS, steps=4, seed=3)
  )
  x = ref.generate(PROMPTS[:1], steps=4, seed=1)
  np.testing.assert_array_equal(np.asarray(ref.encode(x)), np.asarray(got.encode(x)))

  with pytest.raises(FileExistsError, match="exists"):
    export.export(src, str(tmp_path / "moved"))


def test_autoencoder_export_and_a_damaged_file(trained_dit, tmp_path):
  src = str(trained_dit / "psvae")
  out = tmp_path / "ae"
  export.export(src, str(out))
  ref, got = frozen_psvae.load_autoencoder(src), frozen_psvae.load_autoencoder(str(out))
  x = np.linspace(-1, 1, 2 * 32 * 32 * 3, dtype=np.float32).reshape(2, 32, 32, 3)
  np.testing.assert_array_equal(np.asarray(ref.encode(x)[0]), np.asarray(got.encode(x)[0]))
  np.testing.assert_array_equal(got.stats.select(True)[1], ref.stats.select(True)[1])
  assert json.loads((out / "export.json").read_text())["stage"] == "psvae"

  path = str(out / checkpoint.EXPORTED_PARAMS)
  tensors = load_file(path)
  name = sorted(tensors)[0]
  del tensors[name]
  save_file(tensors, path)
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match="missing"):
    frozen_psvae.load_autoencoder(str(out))
  shutil.rmtree(out)

"""A demo folder moved as a whole still loads: paths recorded relative to the workdir."""

import shutil

import ml_collections

from psvae_jax import paths


def test_moved_folder_and_overrides(tmp_path):
  old = tmp_path / "old"
  for d in ("dit", "psvae", "text_encoder"):
    (old / d).mkdir(parents=True)
  config = ml_collections.ConfigDict(
      dict(autoencoder=str(old / "psvae"), text_encoder=str(old / "text_encoder"), init_from="")
  )
  paths.record(config, str(old / "dit"))
  new = tmp_path / "moved"
  shutil.move(str(old), str(new))
  loaded = ml_collections.ConfigDict(config.to_dict())  # config.json still names old/
  paths.relocate(loaded, str(new / "dit"))
  assert loaded.autoencoder == str(new / "psvae")
  assert loaded.text_encoder == str(new / "text_encoder")
  other = tmp_path / "elsewhere"
  other.mkdir()
  paths.relocate(loaded, str(new / "dit"), autoencoder=str(other))  # an override wins
  assert loaded.autoencoder == str(other)
  kept = ml_collections.ConfigDict(dict(autoencoder=str(other), text_encoder="", init_from=""))
  paths.relocate(kept, str(new / "dit"))  # an existing path stays
  assert kept.autoencoder == str(other)

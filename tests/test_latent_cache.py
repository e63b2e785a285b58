"""Latent cache: encode once with a frozen PS-VAE, read back fast, resume exactly."""

import json
import os
import pathlib
import subprocess
import sys

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import svae
from psvae_jax import frozen_psvae
from psvae_jax import builders
from psvae_jax import checkpoint
from psvae_jax import pixels
from psvae_jax import cache_latents
from psvae_jax.data import cache
from psvae_jax.data import specs
from psvae_jax.data import iterators
from psvae_jax.data import latents
from psvae_jax.data import pipeline
from psvae_jax.shapes import source as shapes_source
from psvae_jax.shapes import world
from psvae_jax.train.state import TrainState

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _train_tiny_autoencoder(workdir: pathlib.Path) -> None:
  """The real 2-step training run (about 80 s on a 2-core CPU)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  subprocess.run(
      [
          sys.executable,
          "-m",
          "psvae_jax.main",
          "--config=configs/svae.py:tiny",
          f"--workdir={workdir}",
          "--config.num_train_steps=2",
          "--config.eval_every=2",
          "--config.ckpt_every=2",
          "--config.eval.num_images=64",
          "--config.batch_size=16",
      ],
      cwd=ROOT,
      env=env,
      check=True,
      capture_output=True,
  )


def _write_untrained_autoencoder(workdir: pathlib.Path) -> None:
  """A tiny S-VAE workdir in the trainer's own format (config.json + Orbax state),
  with random weights: no train-step compilation, so it takes a few seconds."""
  config = svae.get_config("tiny")
  model = builders.build_psvae(config.model, dtype=jnp.float32)
  size = config.data.image_size
  params_shape = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))[
      "params"
  ]
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda a: (0.05 * rng.standard_normal(a.shape)).astype(a.dtype), params_shape
  )
  state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state={},
      ema_params=params,
      frozen={},
      skipped=jnp.zeros((), jnp.int32),
  )
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), async_save=False)
  ckpt.save(2, state, data_state={}, config=config.to_dict())
  ckpt.close()
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory):
  """PSVAE_TEST_TRAIN_AE=1 trains it with psvae_jax.main instead (slow)."""
  workdir = tmp_path_factory.mktemp("svae")
  if os.environ.get("PSVAE_TEST_TRAIN_AE") == "1":
    _train_tiny_autoencoder(workdir)
  else:
    _write_untrained_autoencoder(workdir)
  return str(workdir)


@pytest.fixture(scope="module")
def ae(ae_dir):
  return frozen_psvae.load_autoencoder(ae_dir)


@pytest.fixture(scope="module")
def cache_dir(ae, ae_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("cache")
  cfg = specs.parse_data_spec("shapes:num=40,seed=3", ae.image_size)
  cache.write_cache(
      ae, cfg, str(out), batch_size=16, dtype="bfloat16", store="mean_std", autoencoder_dir=ae_dir
  )
  return out


def test_cache_matches_direct_encoding(ae, ae_dir, cache_dir):
  meta = latents.read_meta(cache_dir)
  assert meta["shape"] == [8, 8, 16] and meta["count"] == 40
  assert meta["dtype"] == "bfloat16" and meta["store"] == "mean_std"
  assert meta["autoencoder"] == os.path.abspath(ae_dir)
  source = latents.LatentCacheSource(cache_dir)
  assert len(source) == 40
  images, captions = zip(*(world.generate(i, 32, 3, split="train") for i in range(40)))
  x = pixels.to_float(np.stack(images))  # (40, 32, 32, 3)
  mu, logvar = map(np.asarray, ae.encode(jnp.asarray(x)))
  for i in (0, 17, 39):
    record = source[i]
    assert record["caption"] == captions[i] and record["index"] == i
    np.testing.assert_allclose(record["mu"], mu[i], rtol=2e-2, atol=2e-2)  # bf16.
    np.testing.assert_allclose(record["std"], np.exp(0.5 * logvar[i]), rtol=2e-2)
  stats = source.stats()  # of mu, and of the z = mu + sigma * eps that training reads
  flat, var = mu.reshape(-1, 16), np.exp(logvar).reshape(-1, 16)
  np.testing.assert_allclose(stats.mu_mean, flat.mean(0), atol=1e-4)
  np.testing.assert_allclose(stats.mu_std, flat.std(0), rtol=1e-3)
  np.testing.assert_allclose(stats.sample_mean, flat.mean(0), atol=1e-4)
  np.testing.assert_allclose(stats.sample_std, np.sqrt(flat.var(0) + var.mean(0)), rtol=1e-2)
  assert stats.num_images == 40


def test_latent_iterator_sampling_and_resume(cache_dir):
  cfg = dict(source="latents", path=str(cache_dir), num_train=0)
  it = pipeline.build_train_iterator(cfg, global_batch_size=4, seed=1)
  batches = [next(it) for _ in range(14)]  # 1.4 epochs.
  batch = batches[0]
  assert set(batch) == {"latent", "caption", "label"}
  assert batch["latent"].shape == (4, 8, 8, 16) and batch["latent"].dtype == np.float32
  assert batch["caption"].dtype == object and batch["label"].dtype == np.int32
  source = latents.LatentCacheSource(cache_dir)
  by_caption = {source[i]["caption"]: source[i]["mu"] for i in range(40)}
  noise = batch["latent"][0] - by_caption[batch["caption"][0]]
  assert 0 < np.abs(noise).mean() < 10  # A sample, not the mean.
  again = latents.build_latent_iterator(cfg, global_batch_size=4, seed=1)
  np.testing.assert_array_equal(next(again)["latent"], batch["latent"])
  fresh = latents.build_latent_iterator(cfg, global_batch_size=4, seed=1)
  for _ in range(6):
    next(fresh)
  state = json.loads(json.dumps(fresh.get_state()))
  resumed = latents.build_latent_iterator(cfg, global_batch_size=4, seed=1)
  resumed.set_state(state)
  for expected in batches[6:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["latent"], expected["latent"])
    assert list(got["caption"]) == list(expected["caption"])
  eval_set = pipeline.build_eval_set(dict(cfg, num_eval=8, image_size=32), 4)
  assert eval_set["caption"] == [
      world.generate(shapes_source.EVAL_INDEX_OFFSET + i, 32, 3, split=("train", "val")[i % 2])[1]
      for i in range(4)
  ]  # The shapes' validation split: new scenes, alternately seen and held-out compositions.
  parts = [
      latents.build_latent_iterator(
          cfg, global_batch_size=4, seed=1, process_index=p, process_count=2
      )
      for p in range(2)
  ]
  seen = [{c for _ in range(5) for c in next(p)["caption"]} for p in parts]
  assert not seen[0] & seen[1]


def test_cli_folder_with_bad_records_float32_sample(ae_dir, tmp_path, monkeypatch):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  folder = tmp_path / "images"
  folder.mkdir()
  for i in range(5):
    image, caption = world.generate(i, 48, 0)
    Image.fromarray(image).save(folder / f"{i}.png")
    (folder / f"{i}.txt").write_text(caption)
  (folder / "bad.jpg").write_bytes(b"")
  out = tmp_path / "cache"
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(runtime, "initialize", lambda *a: None)  # Skip the TF import.
  if "autoencoder" not in flags.FLAGS:
    cache_latents.define_flags()
  flags.FLAGS(
      [
          "cache",
          f"--autoencoder={ae_dir}",
          f"--data={folder}",
          f"--out={out}",
          "--batch_size=8",
          "--dtype=float32",
          "--store=sample",
      ]
  )
  try:
    cache_latents.main([])
  finally:
    flags.FLAGS.unparse_flags()
    flags.FLAGS.mark_as_parsed()
  meta = latents.read_meta(out)
  assert meta["count"] == 5 and meta["counters"] == {"skipped_empty_file": 1}
  record = latents.LatentCacheSource(out)[0]
  assert set(record) == {"z", "caption", "label", "index"} and record["z"].shape == (8, 8, 16)
  assert record["caption"] == world.generate(0, 48, 0)[1]
  stats = latents.LatentCacheSource(out).stats()  # z's spread estimated from (z - mu)^2
  assert stats.num_images == 5 and np.all(stats.sample_std > stats.mu_std)
  with pytest.raises(FileExistsError):
    cache.write_cache(None, None, str(out))


def test_multi_process_cache_files(tmp_path):
  counts = [3, 2]
  files = [latents.shard_file_name(p, 2) for p in range(2)]
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  index = 0
  for name, count in zip(files, counts):
    writer = array_record_module.ArrayRecordWriter(str(tmp_path / name), "group_size:1")
    for _ in range(count):
      mu = np.full((2, 2, 4), index, np.float32)
      writer.write(
          latents.serialize(
              {"mu": mu, "std": np.zeros_like(mu)}, f"c{index}", index, index, "float16"
          )
      )
      index += 1
    writer.close()
  (tmp_path / latents.META_FILE).write_text(
      json.dumps(
          {
              "format": latents.FORMAT,
              "shape": [2, 2, 4],
              "dtype": "float16",
              "count": 5,
              "files": files,
              "counts": counts,
          }
      )
  )
  source = latents.LatentCacheSource(tmp_path)
  assert [source[i]["caption"] for i in range(5)] == [f"c{i}" for i in range(5)]
  assert source[4]["mu"].mean() == 4
  it = latents.build_latent_iterator({"path": str(tmp_path)}, global_batch_size=1, seed=0)
  epochs = [[next(it)["caption"][0] for _ in range(5)] for _ in range(4)]
  assert all(sorted(e) == [f"c{i}" for i in range(5)] for e in epochs)  # Permutations,
  assert len({tuple(e) for e in epochs}) > 1  # reshuffled each epoch.
  bounds = [iterators.shard_bounds(5, p, 2, drop_remainder=False) for p in range(2)]
  assert bounds == [(0, 2), (2, 5)]


def test_parse_data_spec(tmp_path):
  cfg = specs.parse_data_spec("shapes:num=64,seed=2", 32)
  assert (cfg.source, cfg.num_train, cfg.seed, cfg.image_size) == ("shapes", 64, 2, 32)
  cfg = specs.parse_data_spec(f"folder:{tmp_path},label_captions=true", 32)
  assert (cfg.source, cfg.path, cfg.label_captions) == ("folder", str(tmp_path), True)
  cfg = specs.parse_data_spec(f"tfds:imagenet2012,path={tmp_path},train_split=validation", 32)
  assert (cfg.tfds_name, cfg.train_split) == ("imagenet2012", "validation")
  assert specs.parse_data_spec(str(tmp_path), 32).source == "folder"
  (tmp_path / "dataset_info.json").write_text("{}")
  assert specs.parse_data_spec(str(tmp_path), 32).source == "tfds"
  for bad, match in (
      ("shapes:num=4,colour=red", "unknown field"),
      ("shapes:num=4,image_size=64", "differs"),
      ("shapes:seed=1", "num=N"),
      ("/no/such/dir", "KIND:ARGS"),
  ):
    with pytest.raises(ValueError, match=match):
      specs.parse_data_spec(bad, 32)

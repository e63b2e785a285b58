"""Latent statistics: sampled z vs mu, stage 3's normalisation, the range warning, re-runs."""

import logging
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dit as dit_config
from configs import psvae as psvae_config
from psvae_jax import frozen_psvae
from psvae_jax import builders
from psvae_jax import checkpoint
from psvae_jax import latent_stats
from psvae_jax import parallel
from psvae_jax.train.tasks import autoencoder as ae_task
from psvae_jax.train.tasks import dit as dit_task
from psvae_jax import workdir as workdir_lib

C = 4


def _fake_encode(params, images):
  """mu from the pixels (per-channel scale and shift), a per-channel logvar of its own."""
  mu = images[..., :1] * params["scale"] + params["shift"]  # (B, H, W, C)
  logvar = jnp.broadcast_to(params["logvar"], mu.shape)
  return mu, logvar


def _batches(rng, n, batch=8, size=4):
  for _ in range(n):
    yield {"image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)}


def test_sampled_z_statistics_include_sigma():
  mesh = parallel.make_mesh(-1, 1)
  params = {
      "scale": jnp.array([1.0, 0.1, 2.0, 1e-3]),
      "shift": jnp.array([0.5, -3.0, 0.0, 7.0]),
      "logvar": jnp.log(jnp.array([1.0, 0.25, 4.0, 1.0])),
  }
  stats = latent_stats.compute(
      _fake_encode, params, _batches(np.random.default_rng(0), 6), mesh, 6, num_images=48, step=3
  )
  images = np.concatenate([b["image"] for b in _batches(np.random.default_rng(0), 6)])
  mu = np.asarray(_fake_encode(params, images)[0]).reshape(-1, C)  # (N, C)
  np.testing.assert_allclose(stats.mu_mean, mu.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.mu_std, mu.std(0), rtol=1e-4)
  z = mu + np.sqrt([1.0, 0.25, 4.0, 1.0]) * np.random.default_rng(1).standard_normal(
      (200, *mu.shape)
  )  # (200, N, C): many draws of z = mu + sigma * eps
  np.testing.assert_allclose(stats.sample_mean, mu.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.sample_std, z.reshape(-1, C).std(0), rtol=1e-2)
  assert stats.sample_std[3] > 100 * stats.mu_std[3]  # mu nearly constant, sigma = 1
  assert (stats.num_images, stats.images_seen, stats.step) == (48, 48, 3)


def test_save_load_and_old_format(tmp_path, caplog):
  stats = latent_stats.Moments.of(np.arange(12.0).reshape(3, C), np.ones((3, C))).stats(
      num_images=3, images_seen=3, step=5
  )
  latent_stats.save(str(tmp_path), stats)
  back = latent_stats.load(str(tmp_path))
  assert not back.legacy and (back.num_images, back.step) == (3, 5)
  np.testing.assert_array_equal(back.select(True)[1], stats.sample_std)
  np.testing.assert_array_equal(back.select(False)[1], stats.mu_std)
  np.savez(
      tmp_path / workdir_lib.LATENT_STATS,
      mean=np.zeros(C, np.float32),
      std=np.full(C, 2.0, np.float32),
  )  # the old format: mean/std of mu
  old = latent_stats.load(str(tmp_path))
  assert old.legacy and old.mu_std[0] == 2.0
  with caplog.at_level(logging.WARNING):
    assert old.select(True)[1][0] == 2.0
  assert "statistics of mu only" in caplog.text
  assert not latent_stats.is_current(str(tmp_path), 3, 5)


def _fake_autoencoder(stats):
  config = psvae_config.get_config("tiny")
  model = builders.build_psvae(config.model, dtype=jnp.float32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  return frozen_psvae.Autoencoder(model, abstract, config, stats)


def _stats(mu_std, z_std, channels=16):
  ones = np.ones(channels, np.float32)
  return latent_stats.LatentStats(0 * ones, mu_std * ones, 0 * ones, z_std * ones, 64, 64, 4)


@pytest.mark.parametrize("sample", [True, False])
def test_stage3_normalises_with_the_trained_latents_statistics(sample):
  stats = _stats(mu_std=1e-3, z_std=1.0)
  config = dit_config.get_config("tiny")
  config.model.cond_type = "class"
  config.autoencoder = "AE_DIR"
  config.diffusion.latent_sample = sample
  task = dit_task.DiTTask(config, parallel.make_mesh(-1, 1), _fake_autoencoder(stats))
  consts = task.constants()
  np.testing.assert_array_equal(consts["latent_std"], stats.select(sample)[1])
  assert float(consts["latent_std"][0]) == pytest.approx(1.0 if sample else 1e-3)
  z = jnp.full((1, 8, 8, 16), 0.5)
  np.testing.assert_allclose(task.ae.normalize(z, sample), z / stats.select(sample)[1])


def test_normalised_std_out_of_range_warns(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    assert latent_stats.check_normalized(
        np.zeros(3), np.ones(3), np.zeros(3), np.ones(3), "ok"
    ) == pytest.approx(1.0)
  assert not caplog.records
  with caplog.at_level(logging.WARNING):
    value = latent_stats.check_normalized(
        np.zeros(3), np.full(3, 2.65e4), np.zeros(3), np.ones(3), "z normalised with mu's"
    )
  assert value == pytest.approx(2.65e4) and "outside [0.5, 2]" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):  # 0.3: too small as well
    latent_stats.check_normalized(np.zeros(3), np.full(3, 0.3), np.zeros(3), np.ones(3), "x")
  assert "outside [0.5, 2]" in caplog.text
  # At stage-3 start: a latent cache whose z spread is far from the autoencoder's.
  latent_stats.save(str(tmp_path), _stats(mu_std=0.1, z_std=100.0))
  config = dit_config.get_config("tiny")
  config.data.source, config.data.path = "latents", str(tmp_path)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    frozen_psvae.latent_normalization(config, _fake_autoencoder(_stats(mu_std=0.1, z_std=1.0)))
  assert "Normalised latent std 100 is outside" in caplog.text
  config.diffusion.latent_sample = False
  with pytest.raises(ValueError, match="latent cache"):
    frozen_psvae.latent_normalization(config, _fake_autoencoder(_stats(mu_std=0.1, z_std=1.0)))


def _never():
  raise AssertionError("the latent statistics were recomputed")
  yield  # pylint: disable=unreachable


def test_stage2_finish_measures_both_latents_and_a_rerun_keeps_the_file(tmp_path):
  config = psvae_config.get_config("tiny")
  config.loss.lpips = 0.0
  config.model.encoder.num_layers = 1
  config.model.pixel_decoder.num_layers = 1
  config.batch_size, config.latent_stats_images = 8, 16
  task = ae_task.AutoencoderTask(config)
  mesh = parallel.make_mesh(-1, 1)
  abstract = jax.eval_shape(task.model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(0)  # random weights without compiling init (slow on a CPU)
  params = jax.device_put(
      jax.tree.map(lambda a: 0.05 * rng.standard_normal(a.shape, np.float32), abstract["params"]),
      parallel.replicated(mesh),
  )
  state = types.SimpleNamespace(step=jnp.asarray(4), ema_params=params)
  task.finish(state, {}, mesh, str(tmp_path), _batches(np.random.default_rng(0), 2, size=32))
  stats = latent_stats.load(str(tmp_path))
  assert (stats.num_images, stats.images_seen, stats.step) == (16, 16, 4)
  assert np.all(stats.sample_std > stats.mu_std)  # sigma > 0: z spreads wider than mu
  mtime = (tmp_path / workdir_lib.LATENT_STATS).stat().st_mtime_ns
  task.finish(state, {}, mesh, str(tmp_path), _never())  # same step, same count: kept
  assert (tmp_path / workdir_lib.LATENT_STATS).stat().st_mtime_ns == mtime
  config.latent_stats_images = 8  # another count: measured again
  task.finish(state, {}, mesh, str(tmp_path), _batches(np.random.default_rng(0), 1, size=32))
  assert latent_stats.load(str(tmp_path)).num_images == 8


def test_dit_keeps_its_own_copy_of_the_latent_statistics(tmp_path):
  ae_dir, dit_dir = str(tmp_path / "psvae"), str(tmp_path / "dit")
  (tmp_path / "psvae").mkdir()
  (tmp_path / "dit").mkdir()
  assert latent_stats.keep_copy(ae_dir, dit_dir) == ae_dir  # no statistics yet: nothing copied
  assert not (tmp_path / "dit" / workdir_lib.LATENT_STATS).exists()
  latent_stats.save(ae_dir, _stats(mu_std=0.5, z_std=1.0))
  assert latent_stats.keep_copy(ae_dir, dit_dir) == dit_dir  # stage 3 starts: copied
  latent_stats.save(ae_dir, _stats(mu_std=0.5, z_std=3.0))  # stage 2's finish re-run later
  assert latent_stats.keep_copy(ae_dir, dit_dir) == dit_dir  # a resumed stage 3 keeps its copy
  assert latent_stats.stats_dir(dit_dir, ae_dir) == dit_dir  # as does loading it (api)
  assert latent_stats.load(dit_dir).sample_std[0] == 1.0
  assert latent_stats.stats_dir(str(tmp_path / "old_dit"), ae_dir) == ae_dir  # no copy


def test_load_autoencoder_reads_the_dit_copy(tmp_path, monkeypatch):
  ae_dir, dit_dir = tmp_path / "psvae", tmp_path / "dit"
  ae_dir.mkdir()
  dit_dir.mkdir()
  (ae_dir / "config.json").write_text(psvae_config.get_config("tiny").to_json())
  monkeypatch.setattr(checkpoint, "restore_params", lambda workdir, target, key: target)
  latent_stats.save(str(ae_dir), _stats(mu_std=0.5, z_std=1.0))
  latent_stats.keep_copy(str(ae_dir), str(dit_dir))
  latent_stats.save(str(ae_dir), _stats(mu_std=0.5, z_std=3.0))
  ae = frozen_psvae.load_autoencoder(
      str(ae_dir), stats_dir=latent_stats.stats_dir(str(dit_dir), str(ae_dir))
  )
  config = dit_config.get_config("tiny")
  config.autoencoder = str(ae_dir)
  assert frozen_psvae.latent_normalization(config, ae)[1][0] == 1.0
  assert ae.stats_dir == str(dit_dir)
  assert frozen_psvae.load_autoencoder(str(ae_dir)).stats.sample_std[0] == 3.0

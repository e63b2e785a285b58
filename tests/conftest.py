"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TF (imported by clu) must not grab GPUs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_threefry_partitionable", True)

# Identical computations compiled again (resumed runs, subprocesses) hit this cache.
_CACHE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"
)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


import subprocess  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# pylint: disable=g-import-not-at-top,wrong-import-position
from psvae_jax import shapes_plugin as plugin  # noqa: E402
from psvae_jax.shapes import text as demo_text  # noqa: E402

# pylint: enable=g-import-not-at-top,wrong-import-position

plugin.register()  # the demo's shapes world: data.source="shapes", its checker, "proxy" features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Smaller than `tiny` so each compile stays short; the same code path as the demo.
SMALL_AE = [
    "--config.model.encoder.num_layers=1",
    "--config.model.pixel_decoder.num_layers=1",
    "--config.batch_size=8",
    "--config.eval.num_images=16",
    "--config.eval.batch_size=8",
    "--config.eval.num_grid=4",
    "--config.log_every=2",
    "--config.latent_stats_images=16",
]


def run_main(workdir, config, *extra, devices=2):
  """Runs `python -m psvae_jax.main` in a subprocess; returns its combined output."""
  cmd = [
      sys.executable,
      "-m",
      "psvae_jax.main",
      f"--config={config}",
      f"--workdir={workdir}",
      *extra,
  ]
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  return r.stdout + r.stderr


@pytest.fixture(scope="session")
def svae_dir(tmp_path_factory):
  """A stage-1 workdir trained for 6 steps (shared by the stage-2 and stage-3 tests)."""
  workdir = tmp_path_factory.mktemp("svae")
  run_main(
      workdir,
      "configs/svae.py:tiny",
      *SMALL_AE,
      "--config.num_train_steps=6",
      "--config.eval_every=6",
      "--config.ckpt_every=6",
  )
  return workdir


@pytest.fixture(scope="session")
def trained_dit(tmp_path_factory, svae_dir):
  """A tiny trained chain: stage 1 -> stage 2 -> demo text encoder -> stage 3 (a few steps)."""
  root = tmp_path_factory.mktemp("chain")
  steps = ["--config.num_train_steps=4", "--config.eval_every=4", "--config.ckpt_every=4"]
  run_main(
      root / "psvae", "configs/psvae.py:tiny", *SMALL_AE, *steps, f"--config.init_from={svae_dir}"
  )
  text = demo_text.build_demo_text_encoder(
      str(root / "text"), demo_text.shapes_vocabulary(), hidden_size=32, layers=1
  )
  run_main(
      root / "dit",
      "configs/dit.py:tiny",
      *steps,
      f"--config.autoencoder={root / 'psvae'}",
      f"--config.text_encoder={text}",
      "--config.batch_size=8",
      "--config.eval.num_images=8",
      "--config.sample.steps=4",
      "--config.train_text_encoder=True",
  )
  return root


@pytest.hookimpl(tryfirst=True)  # before xdist's hook reads the xdist_group markers
def pytest_collection_modifyitems(config, items):
  """Groups tests by the session workdir fixtures they use (pytest-xdist `--dist loadgroup`).

  With `-n 2` (launch/test.sh) each worker builds the session fixtures it needs; the groups keep
  the users of the trained chain on one worker so it is built once. (pytest 9.2 broke this with
  pytest-xdist 3.8: groups were split across workers; requirements-test.txt pins pytest 8.4 and
  tests/test_suite_setup.py fails if a group stops holding.)
  Tests marked `extended` (redundant with cheaper ones, kept for deliberate runs) are skipped
  unless `-m extended` selects them.
  """
  run_extended = "extended" in (config.getoption("-m") or "")
  for item in items:
    names = set(getattr(item, "fixturenames", ()))
    if "trained_dit" in names:
      item.add_marker(pytest.mark.xdist_group("trained_dit"))
    elif "svae_dir" in names:
      item.add_marker(pytest.mark.xdist_group("svae_dir"))
    if item.get_closest_marker("extended") and not run_extended:
      item.add_marker(pytest.mark.skip(reason="extended: run with -m extended"))

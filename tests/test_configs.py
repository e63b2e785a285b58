"""Configs: every variant builds; overrides of unknown keys fail at parse time, naming the key."""

import importlib
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from configs import common
from psvae_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "module,variant",
    [
        ("svae", "tiny"),
        ("svae", "dinov2_b"),
        ("svae", "dinov2_l"),
        ("svae", "siglip2_so400m"),
        ("psvae", "tiny"),
        ("psvae", "dinov2_b"),
        ("psvae", "dinov2_l"),
        ("psvae", "siglip2_so400m"),
    ],
)
def test_variants_build(module, variant):
  c = importlib.import_module(f"configs.{module}").get_config(variant)
  for key in ("num_train_steps", "batch_size", "seed", "log_every", "ckpt_every", "eval_every"):
    assert key in c
  assert c.stage == module


def test_unknown_variant():
  with pytest.raises(ValueError, match="nope"):
    common.parse_arg("nope", ("a",), "a")


def _main(*args):
  return subprocess.run(
      [sys.executable, "-m", "psvae_jax.main", *args],
      capture_output=True,
      text=True,
      timeout=60,
      cwd=ROOT,
  )


def test_config_typo_fails_before_compute(tmp_path):
  r = _main("--config=configs/psvae.py:tiny", f"--workdir={tmp_path}", "--config.optim.lrr=1")
  assert r.returncode != 0
  assert "lrr" in r.stderr
  assert not (tmp_path / "config.json").exists()  # nothing ran


def test_config_file_override():
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
  fv(["prog", "--config=configs/psvae.py:tiny"])
  assert fv.config.optim.lr == 5e-4
  with pytest.raises(AttributeError, match="lrr"):
    fv.config.optim.lrr = 1  # locked: unknown keys cannot be added


def test_stored_config_with_old_sample_keys_loads_renamed(tmp_path):
  """A config.json from before the rename (sample.cfg, sample.cfg_rescale) reads as the new keys."""
  old = {"stage": "dit", "sample": {"steps": 20, "cfg": 6.5, "cfg_rescale": 0.3, "eta": 0.0}}
  (tmp_path / "config.json").write_text(json.dumps(old))
  sample = workdir_lib.read_config(str(tmp_path)).sample
  assert (sample.guidance_scale, sample.guidance_rescale, sample.steps) == (6.5, 0.3, 20)
  assert "cfg" not in sample and "cfg_rescale" not in sample
  fresh = common.sample_config()  # a mutable copy: changing a run's settings leaves SAMPLE alone
  fresh.steps, fresh.guidance_scale = 3, 1.0
  assert (common.SAMPLE.steps, common.SAMPLE.guidance_scale) == (50, 7.5)
  assert common.sample_config().steps == 50


def test_model_guidance_scale_is_the_runs_own():
  from configs import dit  # pylint: disable=g-import-not-at-top

  assert common.model_guidance_scale(dit.get_config("tiny")) == 4.0  # tuned on validation
  assert common.model_guidance_scale(dit.get_config("tiny_class")) == 7.5
  assert common.model_guidance_scale({"sample": {"guidance_scale": 3.0}}) == 3.0
  assert common.model_guidance_scale({"sample": {"cfg": 5.0}}) == 5.0  # before the rename
  assert common.model_guidance_scale({}) == common.SAMPLE.guidance_scale

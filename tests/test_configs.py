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
from psvae_jax.diffusion.settings import SampleSettings

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
  fresh = common.sample_config()  # a mutable copy: changing a run's settings leaves the defaults
  fresh.steps, fresh.guidance_scale = 3, 1.0
  assert (SampleSettings().steps, SampleSettings().guidance_scale) == (50, 7.5)
  assert common.sample_config().steps == 50
  assert sorted(common.sample_config()) == sorted(SampleSettings.CONFIG_FIELDS)


def test_unset_sample_settings_are_the_runs_own():
  from configs import dit  # pylint: disable=g-import-not-at-top

  resolve = SampleSettings.resolve
  assert resolve(dit.get_config("tiny")).guidance_scale == 4.0  # tuned on validation
  assert resolve(dit.get_config("tiny")).guidance_interval == (0.5, 1.0)
  assert resolve(dit.get_config("tiny_class")).guidance_scale == 7.5
  assert resolve({"sample": {"guidance_scale": 3.0}}).guidance_scale == 3.0
  assert resolve({"sample": {"cfg": 5.0}}).guidance_scale == 5.0  # before the rename
  assert resolve({}) == SampleSettings()
  # An override wins; None is unset; the config's own otherwise (steps, eta included).
  s = resolve({"sample": {"steps": 20, "eta": 0.5, "guidance_scale": 3.0}}, steps=None, eta=0.0)
  assert (s.steps, s.eta, s.guidance_scale) == (20, 0.0, 3.0)
  # A config from before the sampling shift samples with its training shift.
  assert resolve({"sample": {}, "diffusion": {"flow_shift": 2.5}}).shift == 2.5
  assert resolve({"sample": {"shift": 3.0}, "diffusion": {"flow_shift": 2.5}}).shift == 3.0


@pytest.mark.parametrize(
    "override,message",
    [
        (dict(steps=0), "steps must be in [1, 1000]"),
        (dict(steps=2.5), "steps must be int"),
        (dict(guidance_scale=-1), "guidance_scale must be >= 0"),
        (dict(eta=float("nan")), "eta must be finite"),
        (dict(guidance_interval=(0.7, 0.2)), "guidance_interval must be (lo, hi)"),
        (dict(guidance_interval=(0.5,)), "guidance_interval must be (lo, hi)"),
        (dict(shift=0.0), "shift must be a number > 0"),
        (dict(resample=101), "resample must be an integer in [0, 100]"),
        (dict(image_guidance_scale=-0.5), "image_guidance_scale must be >= 0"),
    ],
)
def test_sample_settings_refuse_bad_values_in_one_line(override, message):
  with pytest.raises(ValueError) as e:
    SampleSettings.resolve(None, **override)
  assert message in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(TypeError, match="guidance"):  # an unknown name lists the known ones
    SampleSettings.resolve(None, guidance=3.0)


def test_sample_settings_module_loads_without_jax():
  code = (
      "import sys; sys.modules['jax'] = None; "
      "from psvae_jax.diffusion import settings; print(settings.SampleSettings().steps)"
  )
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
  assert r.stdout.strip() == "50", r.stderr[-2000:]

"""Timestep shifts: the sampling shift (sample.shift, --shift) apart from the training shift
(diffusion.flow_shift, optionally dimension-dependent), the presets, and the CLI's check."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import helpers

from configs import dit as dit_config
from psvae_jax import generation
from psvae_jax import parallel
from psvae_jax import runtime
from psvae_jax.diffusion import objectives
from psvae_jax.diffusion import samplers
from psvae_jax.diffusion import settings

LATENT = (2, 2, 1)  # (h, w, C)
B = 8  # one example per simulated device
S = 0.5  # data std of the stub model


class _GaussianDiT:
  """A stand-in DiT: the exact velocity for data N(m, S²), m from the label (0.3·label) or, for
  the null condition, -0.2; so it depends on z, t and the condition."""

  def apply(self, variables, z, t_model, labels, drop):
    del variables
    m = jnp.where(drop, -0.2, 0.3 * labels.astype(jnp.float32))[:, None, None, None]
    t = (t_model / 1000.0)[:, None, None, None]
    var = (1.0 - t) ** 2 * S**2 + t**2
    return (t - (1.0 - t) * S**2) * (z - (1.0 - t) * m) / var - m


class _StubAE:
  latent_shape = LATENT


def _config(flow_shift=1.0, shift=3.0):
  return ml_collections.ConfigDict(
      dict(
          model=dict(cond_type="class"),
          diffusion=dict(objective="flow", flow_shift=flow_shift, flow_shift_base_dim=0),
          sample=dict(
              steps=6,
              guidance_scale=2.0,
              eta=0.0,
              guidance_rescale=0.0,
              guidance_interval=(0.0, 1.0),
              shift=shift,
          ),
      )
  )


def _reference(z, labels, n, shift, guidance_scale, start=0):
  """Euler with CFG on t_i = shift(1 − i/n), written from the equations (numpy, float64)."""
  z = np.asarray(z, np.float64)
  m_c, m_u = (0.3 * labels.astype(np.float64))[:, None, None, None], -0.2
  sh = lambda u: shift * u / (1 + (shift - 1) * u)
  v = lambda z, t, m: (t - (1 - t) * S**2) * (z - (1 - t) * m) / ((1 - t) ** 2 * S**2 + t**2) - m
  for i in range(start, n):
    t, t_next = sh(1 - i / n), sh(1 - (i + 1) / n)
    z = z + (t_next - t) * (v(z, t, m_u) + guidance_scale * (v(z, t, m_c) - v(z, t, m_u)))
  return z


@pytest.fixture(scope="module")
def gen():
  return generation.Generator(
      _config(), _GaussianDiT(), None, None, _StubAE(), parallel.make_mesh(-1, 1)
  )


def test_sampling_shift_is_separate_from_training_shift(gen):
  labels = np.arange(B, dtype=np.int32) % 3
  z1 = np.asarray(generation.initial_noise(0, np.arange(B), LATENT))
  run = lambda **kw: np.asarray(
      gen.run(
          {"dit": {}},
          {},
          {"label": labels},
          z1,
          gen.sample_settings(steps=6, guidance_scale=2.0, eta=0.0, seed=0, **kw),
      )
  )
  counter = runtime.CompileCounter()
  out3 = run()  # the config's sample.shift = 3
  np.testing.assert_allclose(out3, _reference(z1, labels, 6, 3.0, 2.0), atol=1e-5)
  first = counter.count
  gen.config.diffusion.flow_shift = 5.0  # the training shift does not move the sampler
  np.testing.assert_array_equal(run(), out3)
  gen.config.sample.shift = 1.5  # the sampling shift does, without a recompile
  out15 = run()
  np.testing.assert_allclose(out15, _reference(z1, labels, 6, 1.5, 2.0), atol=1e-5)
  np.testing.assert_allclose(run(shift=3.0), out3, atol=1e-6)  # an explicit shift wins
  assert counter.count == first, "a sampling-shift change recompiled the sampler"
  assert np.abs(out15 - out3).max() > 1e-2
  del gen.config.sample["shift"]  # an older workdir's config: its training shift samples
  assert gen.sample_settings().shift == 5.0
  np.testing.assert_allclose(run(), _reference(z1, labels, 6, 5.0, 2.0), atol=1e-5)
  gen.config.sample.shift = 3.0
  gen.config.diffusion.flow_shift = 1.0


def test_sdedit_start_uses_the_sampling_shift(gen):
  labels = np.arange(B, dtype=np.int32) % 3
  z0 = np.random.default_rng(0).standard_normal((B,) + LATENT).astype(np.float32)
  mask = np.ones((B,) + LATENT[:2] + (1,), np.float32)  # regenerate everything: a plain edit
  s = gen.sample_settings(steps=6, guidance_scale=2.0, eta=0.0, seed=1, shift=2.0)
  out = gen.edit_latents({"dit": {}}, {}, {"label": labels}, z0, mask, s, strength=0.5)
  noise = np.asarray(generation.initial_noise(1, np.arange(B), LATENT), np.float64)
  start = samplers.sdedit_start_index(6, 0.5)  # 3
  t0 = 2.0 * (1 - start / 6) / (1 + (1 - start / 6))  # shift 2 at u = 1 − 3/6
  z_start = (1 - t0) * z0 + t0 * noise
  np.testing.assert_allclose(
      np.asarray(out), _reference(z_start, labels, 6, 2.0, 2.0, start), atol=1e-5
  )


def test_training_objective_ignores_the_sampling_shift():
  cfg = _config(flow_shift=2.0, shift=3.0)
  key = jax.random.key(0)
  t = objectives.make(cfg.diffusion).sample_t(key, (64,))
  cfg.sample.shift = 7.0
  np.testing.assert_array_equal(objectives.make(cfg.diffusion).sample_t(key, (64,)), t)
  cfg.diffusion.flow_shift = 3.0
  assert not np.allclose(objectives.make(cfg.diffusion).sample_t(key, (64,)), t)


def test_dimension_dependent_training_shift():
  # s = sqrt(h*w*C / 4096) (SD3 section 5.3.2; RAE's time_dist_shift with base 4096).
  assert settings.dimension_shift((16, 16, 96)) == pytest.approx(math.sqrt(6.0))  # PS-VAE
  assert settings.dimension_shift((16, 16, 768)) == pytest.approx(math.sqrt(48.0))  # RAE
  assert settings.dimension_shift((32, 32, 4)) == pytest.approx(1.0)  # SD-VAE at 256
  assert settings.dimension_shift((8, 8, 16), 256) == pytest.approx(2.0)
  with pytest.raises(ValueError, match="base_dim"):
    settings.dimension_shift((16, 16, 96), 0)
  c = dit_config.get_config("paper")
  c.lock()  # as main.py's config_flags leave it
  assert settings.resolve_flow_shift(c, (16, 16, 96)) == pytest.approx(math.sqrt(6.0))
  assert c.diffusion.flow_shift == pytest.approx(math.sqrt(6.0))  # what config.json will record
  assert '"flow_shift": 2.449' in c.to_json()
  assert objectives.make(c.diffusion).shift == pytest.approx(math.sqrt(6.0))
  assert c.sample.shift == 3.0  # the sampling shift stays its own
  seed = dit_config.get_config("XL_text")  # base 0: flow_shift as given
  assert settings.resolve_flow_shift(seed, (16, 16, 96)) == 1.0


def test_presets():
  paper, seed = dit_config.get_config("paper"), dit_config.get_config("XL_text")
  assert (paper.model.size, paper.model.cond_type) == ("XL", "text")
  assert paper.diffusion.objective == "flow" and paper.diffusion.flow_shift_base_dim == 4096
  assert (paper.sample.steps, paper.sample.shift, paper.sample.guidance_scale) == (50, 3.0, 6.5)
  assert isinstance(objectives.make(paper.diffusion), objectives.FlowObjective)
  assert (seed.model.size, seed.model.cond_type) == ("XL", "text")
  assert seed.diffusion.objective == "eps" and seed.diffusion.schedule == "linear"
  assert (seed.sample.steps, seed.sample.guidance_scale, seed.sample.eta) == (50, 7.5, 0.0)
  assert isinstance(objectives.make(seed.diffusion), objectives.EpsilonObjective)
  for c in (paper, seed):  # the final eval's size: 64 prompts x 50 steps x (guidance_scale, 1.0)
    assert c.eval.num_images == 64 and tuple(c.eval.guidance_scales) == ()


def test_sample_cli_rejects_bad_shift(tmp_path):
  for bad in ("0", "-1", "nan"):
    r = helpers.run_module(
        "psvae_jax.sample",
        f"--workdir={tmp_path}",
        "--prompt=a",
        f"--out={tmp_path / 'x.png'}",
        f"--shift={bad}",
        timeout=120,
    )
    assert r.returncode != 0 and "--shift must be a number > 0" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr

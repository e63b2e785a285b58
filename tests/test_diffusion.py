"""Tests for diffusion schedules, objectives and samplers (parity with diffusers' DDIMScheduler)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from psvae_jax.diffusion import objectives
from psvae_jax.diffusion import samplers
from psvae_jax.diffusion import schedules

SHAPE = (2, 4, 4, 3)  # (B, h, w, C)
MAX_STEPS = 64  # All DDIM runs below share this padded length, hence one compile per (CFG on/off).
_TRACES = []  # One entry per trace of the fake model, i.e. per compile of a sampler using it.


def _key(seed: int) -> jax.Array:
  """A key of the "unsafe_rbg" PRNG, to keep compiles short.

  On XLA:CPU every threefry hash in a jitted function (fold_in, split, normal) adds ~1.5 s of
  compile time with jax_threefry_partitionable (~0.3 s without); "rbg" still hashes with threefry in
  fold_in/split; "unsafe_rbg" uses RngBitGenerator only. The sampler takes any typed key.
  """
  return jax.random.key(seed, impl="unsafe_rbg")


def _settings(steps, guidance_scale=1.0, eta=0.0, seed=0, **kw) -> samplers.SampleSettings:
  """The sampler's traced settings, keyed with "unsafe_rbg" (see `_key`)."""
  s = samplers.SampleSettings(steps=steps, guidance_scale=guidance_scale, eta=eta, seed=seed, **kw)
  return samplers.traced(s, impl="unsafe_rbg")


def _diffusers_ddim(**kw) -> DDIMScheduler:
  return DDIMScheduler(
      num_train_timesteps=1000,
      beta_schedule="linear",
      beta_start=1e-4,
      beta_end=0.02,
      clip_sample=False,
      set_alpha_to_one=True,
      steps_offset=0,
      timestep_spacing="leading",
      prediction_type="epsilon",
      **kw,
  )


def _fake_eps_jax(z, t, cond):
  """A deterministic ε-model; cond {"c": (B,)} changes it,
  so cond and uncond are different models."""
  _TRACES.append(1)
  c = cond["c"][:, None, None, None]
  return 0.1 * z * (1.0 + c) + jnp.sin(t[:, None, None, None] / 100.0 + c)


def _fake_eps_torch(z, t, c):
  c = torch.as_tensor(c, dtype=torch.float32)[:, None, None, None]
  t = torch.full((z.shape[0],), float(t), dtype=torch.float32)[:, None, None, None]
  return 0.1 * z * (1.0 + c) + torch.sin(t / 100.0 + c)


_SAMPLE = jax.jit(functools.partial(samplers.ddim_sample, _fake_eps_jax, max_steps=MAX_STEPS))


@functools.partial(jax.jit, static_argnums=2)
def _step_noise(rng, i, shape):
  return jax.random.normal(jax.random.fold_in(rng, i), shape, jnp.float32)


def _reference_ddim(z_T, c, c_null, num_steps, guidance_scale, eta, rng):
  """diffusers' DDIMScheduler loop, fed our per-step η-noise as ``variance_noise``."""
  sched = _diffusers_ddim()
  sched.set_timesteps(num_steps)
  z = torch.from_numpy(np.array(z_T))
  for i, t in enumerate(sched.timesteps):
    eps = _fake_eps_torch(z, t, c)
    if c_null is not None:
      eps_u = _fake_eps_torch(z, t, c_null)
      eps = eps_u + guidance_scale * (eps - eps_u)
    noise = _step_noise(rng, i, z_T.shape)  # The sampler's η-noise for step i.
    z = sched.step(eps, t, z, eta=eta, variance_noise=torch.from_numpy(np.array(noise))).prev_sample
  return z.numpy()


def test_schedules_match_diffusers():
  cases = [
      (schedules.linear_schedule(), "linear"),
      (schedules.cosine_schedule(), "squaredcos_cap_v2"),
  ]
  for ours, kind in cases:
    ref = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule=kind, beta_start=1e-4, beta_end=0.02
    )
    np.testing.assert_allclose(np.asarray(ours.betas), ref.betas.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(), rtol=2e-5
    )
    assert float(ours.final_alpha_cumprod) == 1.0


def test_ddim_timesteps_match_diffusers():
  for n in (1, 7, 50, 1000):
    sched = _diffusers_ddim()
    sched.set_timesteps(n)
    np.testing.assert_array_equal(samplers.ddim_timesteps(n), sched.timesteps.numpy())
  padded = samplers.ddim_timesteps(20, max_steps=25)
  assert padded.shape == (25,) and (padded[20:] == -1).all() and padded[19] == 0
  grid = jax.jit(samplers.ddim_grid, static_argnums=(1, 2))  # the sampler's own, traced steps
  for n in (1, 7, 20, 50, 64):
    np.testing.assert_array_equal(
        grid(np.int32(n), 1000, 64), samplers.ddim_timesteps(n, max_steps=64)
    )


@pytest.mark.parametrize("guidance_scale,eta", [(None, 0.0), (7.5, 0.0), (7.5, 0.7)])
def test_ddim_parity_with_diffusers(guidance_scale, eta):
  z_T = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
  c, c_null = np.array([0.5, -0.2], np.float32), np.array([-0.3, -0.3], np.float32)
  c_null = None if guidance_scale is None else c_null
  s = _settings(50, guidance_scale or 1.0, eta, seed=3)
  # 50 steps inside a 64-long scan: the steps past them must be no-ops.
  ours = _SAMPLE(
      schedules.linear_schedule(),
      z_T,
      {"c": c},
      None if c_null is None else {"c": c_null},
      s,
      start_index=0,
  )
  ref = _reference_ddim(z_T, c, c_null, 50, guidance_scale, eta, s.seed)
  # This fake model is no denoiser: final latents reach |z| ~ 200, so the bound is relative to
  # max|ref|.
  err = np.abs(np.asarray(ours) - ref).max() / max(1.0, np.abs(ref).max())
  assert err <= 1e-5, f"DDIM parity error {err:.2e} (guidance_scale={guidance_scale}, eta={eta})"


def test_ddim_does_not_recompile():
  sched = schedules.linear_schedule()
  z = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
  cond, uncond = {"c": np.full((2,), 0.5, np.float32)}, {"c": np.full((2,), -0.3, np.float32)}

  def run(
      n, guidance_scale, eta, seed, start_index
  ):  # Python floats/ints, as a caller passes them.
    s = _settings(n, guidance_scale, eta, seed)
    return _SAMPLE(sched, z, cond, uncond, s, start_index=start_index)

  first = run(50, 7.5, 0.0, 0, 0)  # Compiles, unless an earlier test already did.
  traces = len(_TRACES)
  cache_size = getattr(
      _SAMPLE, "_cache_size", lambda: None
  )  # Private jax API: a second witness, if present.
  cache = cache_size()
  outs = [
      run(10, 7.5, 0.0, 0, 0),
      run(25, 3.0, 0.5, 1, 0),
      run(50, 1.0, 1.0, 2, 30),
      run(64, 7.5, 0.3, 0, 0),
      run(10, 5.0, 0.0, 0, 10),
  ]
  assert (
      len(_TRACES) == traces
  ), "a sampler argument change retraced (and so recompiled) ddim_sample"
  assert cache_size() == cache
  assert not np.allclose(first, outs[0]) and not np.allclose(outs[1], outs[2])
  np.testing.assert_array_equal(
      outs[-1], z
  )  # start_index == num_steps (SDEdit strength 0): input unchanged.


# ---- Samplers against hand-written reference loops ------------------------------------------
# The model is exact for Gaussian data N(m, S²) per element, m per example from the condition, so
# its prediction depends on z, t and the condition (cond and uncond are different models): a wrong
# grid, reset timestep, re-noise coefficient or guidance formula moves the result. The references
# below are numpy loops written from the equations (DESIGN.md §1, the sampler docstrings), float64,
# one Python iteration per step; only the RePaint noise is drawn with the sampler's documented keys.
S = 0.5  # data std
# ᾱ_t = Π_{s≤t} (1 − β_s)
_ABAR = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
_M_C, _M_U = np.array([0.8, -0.4], np.float32), np.array(
    [0.1, 0.3], np.float32
)  # cond / uncond means
_SCALE = 3.0  # guidance scale


def _gauss_eps(z, t, cond):
  """E[ε | z_t] for z0 ~ N(m, S²): √(1−ᾱ)(z − √ᾱ m) / (ᾱ S² + 1 − ᾱ)."""
  a = schedules.alpha_cumprod_at(schedules.linear_schedule(), t.astype(jnp.int32))[
      :, None, None, None
  ]
  m = cond["m"][:, None, None, None]
  return jnp.sqrt(1.0 - a) * (z - jnp.sqrt(a) * m) / (a * S**2 + 1.0 - a)


def _gauss_v(z, t_model, cond):
  """E[ε − z0 | z_t] for z_t = (1 − t) z0 + t ε, z0 ~ N(m, S²)."""
  t = (t_model / 1000.0)[:, None, None, None]
  m = cond["m"][:, None, None, None]
  var = (1.0 - t) ** 2 * S**2 + t**2
  return (t - (1.0 - t) * S**2) * (z - (1.0 - t) * m) / var - m


def _np_abar(t):
  return 1.0 if t < 0 else _ABAR[t]


def _np_eps(z, t, m):
  a = _np_abar(t)
  return np.sqrt(1 - a) * (z - np.sqrt(a) * m) / (a * S**2 + 1 - a)


def _np_v(z, t, m):
  var = (1 - t) ** 2 * S**2 + t**2
  return (t - (1 - t) * S**2) * (z - (1 - t) * m) / var - m


def _bc(m):
  return np.asarray(m, np.float64)[:, None, None, None]


def _repaint_noise(key, i, j):
  """The sampler's j-th re-noising draw at step i (samplers._resampled)."""
  return np.asarray(
      jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), j), SHAPE), np.float64
  )


def _reference_ddim_inpaint(z, n, *, known, mask, noise, resample, start, key):
  """DDIM (η = 0), CFG, known-region reset to q_sample(known, t_prev),
  RePaint re-noise t_prev → t."""
  z, known, mask, noise = (np.asarray(x, np.float64) for x in (z, known, mask, noise))
  ratio = 1000 // n
  timesteps = [k * ratio for k in range(n)][::-1]
  for i, t in enumerate(timesteps):
    if i < start:
      continue
    a, a_prev = _np_abar(t), _np_abar(t - ratio)

    def step(z):
      e_c, e_u = _np_eps(z, t, _bc(_M_C)), _np_eps(z, t, _bc(_M_U))
      e = e_u + _SCALE * (e_c - e_u)
      z0 = (z - np.sqrt(1 - a) * e) / np.sqrt(a)
      z = np.sqrt(a_prev) * z0 + np.sqrt(1 - a_prev) * e
      return mask * z + (1 - mask) * (np.sqrt(a_prev) * known + np.sqrt(1 - a_prev) * noise)

    z = step(z)
    for j in range(resample):
      r = a / a_prev
      z = step(np.sqrt(r) * z + np.sqrt(1 - r) * _repaint_noise(key, i, j))
  return z


def _reference_euler(
    z, n, shift, *, known=None, mask=None, noise=None, resample=0, start=0, key=None
):
  """Euler on t_i = shift(1 − i/n), CFG, known-region reset to (1 − t′) known + t′ noise,
  RePaint."""
  z = np.asarray(z, np.float64)
  sh = lambda u: shift * u / (1 + (shift - 1) * u)
  for i in range(start, n):
    t, t_next = sh(1 - i / n), sh(1 - (i + 1) / n)

    def step(z):
      v_c, v_u = _np_v(z, t, _bc(_M_C)), _np_v(z, t, _bc(_M_U))
      z = z + (t_next - t) * (v_u + _SCALE * (v_c - v_u))
      if mask is None:
        return z
      return mask * z + (1 - mask) * ((1 - t_next) * known + t_next * noise)

    z = step(z)
    for j in range(resample):
      r = (1 - t) / (1 - t_next)
      z = step(r * z + np.sqrt(t**2 - (r * t_next) ** 2) * _repaint_noise(key, i, j))
  return z


_INPAINT_CASES = [(0, 0), (2, 0), (0, 4)]  # (RePaint jumps, SDEdit start index)
_INPAINT_IDS = ["reset", "repaint", "sdedit"]


def _inpaint_inputs():
  rng = np.random.default_rng(11)
  known = (0.3 + S * rng.standard_normal(SHAPE)).astype(np.float32)
  noise = rng.standard_normal(SHAPE).astype(np.float32)
  mask = np.zeros(SHAPE, np.float32)
  mask[:, :, 2:] = 1.0  # regenerate the right half
  return known, mask, noise


_DDIM_INPAINT = jax.jit(functools.partial(samplers.ddim_sample, _gauss_eps, max_steps=10))


@pytest.mark.parametrize("resample,start", _INPAINT_CASES, ids=_INPAINT_IDS)
def test_ddim_inpaint_matches_reference(resample, start):
  """DDIM with CFG, known-region reset at t_prev,
  RePaint jumps and an SDEdit start (one compile)."""
  known, mask, noise = _inpaint_inputs()
  sched, n = schedules.linear_schedule(), 10
  s = _settings(n, _SCALE, seed=5, resample=resample)
  ts = samplers.ddim_timesteps(n)
  z_start = np.asarray(samplers.ddim_start_latents(sched, known, ts, start, noise))
  if start:  # SDEdit: q_sample(z0, t_start) at the start step's timestep
    a = _ABAR[ts[start]]
    np.testing.assert_allclose(z_start, np.sqrt(a) * known + np.sqrt(1 - a) * noise, atol=1e-6)
  out = _DDIM_INPAINT(
      sched, z_start, {"m": _M_C}, {"m": _M_U}, s, start_index=start, inpaint=(known, mask, noise)
  )
  ref = _reference_ddim_inpaint(
      z_start,
      n,
      known=known,
      mask=mask,
      noise=noise,
      resample=resample,
      start=start,
      key=jax.random.fold_in(s.seed, 1 << 30),
  )
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out)[:, :, :2], known[:, :, :2], atol=1e-6)  # ᾱ_{-1} = 1


_EULER = jax.jit(functools.partial(samplers.euler_sample, _gauss_v, max_steps=12))


def test_euler_grid_shift_and_guidance_match_reference():
  """The exact shifted grid (traced steps and shift: one compile) and CFG with cond ≠ uncond."""
  z_1 = np.random.default_rng(6).standard_normal(SHAPE).astype(np.float32)
  t, t_next = samplers.flow_time_grid(7, 3.0, 12)
  u = np.arange(12) / 7
  sh = lambda x: 3 * x / (1 + 2 * x)
  np.testing.assert_allclose(t, sh(np.clip(1 - u, 0, 1)), atol=1e-6)
  np.testing.assert_allclose(t_next, sh(np.clip(1 - u - 1 / 7, 0, 1)), atol=1e-6)
  for n, shift in [(12, 1.0), (7, 3.0)]:
    out = _EULER(z_1, {"m": _M_C}, {"m": _M_U}, _settings(n, _SCALE, shift=shift))
    np.testing.assert_allclose(np.asarray(out), _reference_euler(z_1, n, shift), atol=1e-5)


_EULER_INPAINT = jax.jit(functools.partial(samplers.euler_sample, _gauss_v, max_steps=10))


@pytest.mark.parametrize("resample,start", _INPAINT_CASES, ids=_INPAINT_IDS)
def test_euler_inpaint_matches_reference(resample, start):
  """Euler with CFG, known-region reset at t_next,
  RePaint jumps and an SDEdit start (one compile)."""
  known, mask, noise = _inpaint_inputs()
  n, shift = 10, 2.0
  s = _settings(n, _SCALE, seed=7, shift=shift, resample=resample)
  z_start = np.asarray(samplers.euler_start_latents(known, noise, n, start, shift))
  t0 = shift * (1 - start / n) / (1 + (shift - 1) * (1 - start / n))
  np.testing.assert_allclose(z_start, (1 - t0) * known + t0 * noise, atol=1e-6)
  out = _EULER_INPAINT(
      z_start, {"m": _M_C}, {"m": _M_U}, s, start_index=start, inpaint=(known, mask, noise)
  )
  ref = _reference_euler(
      z_start,
      n,
      shift,
      known=known,
      mask=mask,
      noise=noise,
      resample=resample,
      start=start,
      key=s.seed,
  )
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out)[:, :, :2], known[:, :, :2], atol=1e-6)


@jax.jit
def _objective_draws(noise, k_eps, k_flow):
  sched = schedules.linear_schedule()
  z0 = jnp.full(noise.shape, 1.5)
  z_500 = schedules.q_sample(sched, z0, jnp.full(noise.shape[:1], 500), noise)
  z_before_0 = schedules.q_sample(sched, z0[:2], -1, noise[:2])
  t_eps = objectives.EpsilonObjective(sched).sample_t(k_eps, (5000,))
  t_flow = objectives.FlowObjective(shift=1.0).sample_t(k_flow, (20000,))
  t_shifted = objectives.FlowObjective(shift=3.0).sample_t(k_flow, (20000,))
  return z_500, z_before_0, t_eps, t_flow, t_shifted


@pytest.fixture(scope="module")
def draws():
  noise = np.random.default_rng(8).standard_normal((20000, 1, 1, 2)).astype(np.float32)
  return jax.tree.map(np.asarray, _objective_draws(noise, _key(1), _key(2)))


def test_q_sample_statistics(draws):
  z, z_before_0, t_eps, _, _ = draws
  a = float(schedules.linear_schedule().alphas_cumprod[500])
  np.testing.assert_allclose(z.mean(), np.sqrt(a) * 1.5, atol=0.02)
  np.testing.assert_allclose(z.std(), np.sqrt(1 - a), rtol=0.02)
  np.testing.assert_allclose(z_before_0, 1.5)  # t < 0: ᾱ = final_alpha_cumprod = 1, no noise.
  assert t_eps.dtype == np.float32 and (t_eps == np.round(t_eps)).all()
  assert t_eps.min() == 0 and t_eps.max() == 999


def test_flow_objective_target_and_interpolation():
  obj = objectives.FlowObjective(shift=3.0)
  rng = np.random.default_rng(7)
  x0, noise = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
  np.testing.assert_allclose(obj.target(x0, noise, None), noise - x0, atol=1e-6)
  t = np.array([0.0, 1.0], np.float32)
  np.testing.assert_allclose(obj.sample_x_t(x0, t, noise), np.stack([x0[0], noise[1]]), atol=1e-6)
  t = np.array([0.25, 0.5], np.float32)
  expected = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
  np.testing.assert_allclose(obj.sample_x_t(x0, t, noise), expected, atol=1e-6)
  np.testing.assert_allclose(obj.model_time(t), t * 1000)


def test_flow_shift_formula(draws):
  t = np.linspace(0.0, 1.0, 11)
  np.testing.assert_allclose(objectives.shift_time(t, 1.0), t)
  np.testing.assert_allclose(objectives.shift_time(0.5, 3.0), 0.75)
  np.testing.assert_allclose(objectives.shift_time(t, 3.0), 3 * t / (1 + 2 * t))
  _, _, _, t_flow, t_shifted = draws
  assert 0 < t_flow.min() and t_flow.max() < 1
  np.testing.assert_allclose(
      np.median(t_flow), 0.5, atol=0.02
  )  # Logit-normal(0, 1) has median 0.5.
  np.testing.assert_allclose(t_shifted, objectives.shift_time(t_flow, 3.0), atol=1e-6)


def test_guidance_rescale_matches_conditional_std():
  """phi = 1 rescales the guided prediction to the conditional prediction's per-sample std."""
  from psvae_jax.diffusion.samplers import _guided  # pylint: disable=g-import-not-at-top

  z = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  model = lambda x, t, c: x * c["s"][:, None, None, None] + 0.1
  cond, uncond = {"s": jnp.array([2.0, 3.0])}, {"s": jnp.array([0.5, 0.5])}
  scale = samplers.SampleSettings(guidance_scale=7.5)
  plain = _guided(model, cond, uncond, scale)(z, 10.0, 0.01)
  full = _guided(model, cond, uncond, scale.replace(guidance_rescale=1.0))(z, 10.0, 0.01)
  cond_out = model(z, None, cond)
  np.testing.assert_allclose(
      jnp.std(full, axis=(1, 2, 3)), jnp.std(cond_out, axis=(1, 2, 3)), rtol=1e-5
  )
  np.testing.assert_allclose(
      _guided(model, cond, uncond, scale.replace(guidance_rescale=0.0))(z, 10.0, 0.01), plain
  )


def test_guidance_interval_applies_cfg_only_inside():
  """Euler with guidance on t in [0.5, 1] equals a hand loop that switches the scale at t = 0.5."""
  z1 = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
  model = lambda x, t, c: 0.3 * x * c["s"][:, None, None, None] + 1e-3 * t[:, None, None, None]
  cond, uncond = {"s": jnp.array([2.0, 3.0])}, {"s": jnp.array([0.5, 0.5])}
  settings = lambda interval: _settings(10, 4.0, guidance_interval=interval)
  run = lambda interval: samplers.euler_sample(
      model, z1, cond, uncond, settings(interval), max_steps=10
  )
  z = z1
  for i in range(10):
    t, t_next = 1.0 - i / 10, 1.0 - (i + 1) / 10
    tm = jnp.full((2,), t * 1000.0)
    vc, vu = model(z, tm, cond), model(z, tm, uncond)
    s = 4.0 if t >= 0.5 else 1.0
    z = z + (t_next - t) * (vu + s * (vc - vu))
  np.testing.assert_allclose(run((0.5, 1.0)), z, rtol=1e-5, atol=1e-6)
  plain = samplers.euler_sample(model, z1, cond, uncond, _settings(10, 4.0), max_steps=10)
  np.testing.assert_allclose(run((0.0, 1.0)), plain, rtol=1e-6)
  assert float(jnp.max(jnp.abs(run((0.5, 1.0)) - plain))) > 1e-3  # the interval changes the result

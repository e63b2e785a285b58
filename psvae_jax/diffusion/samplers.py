"""Diffusion samplers: DDIM (ε-prediction) and Euler (flow matching), each one ``lax.scan`` inside
one jit.

Both samplers take any ``model_fn(z, t, cond) -> prediction`` where ``z`` is (B, ...) latents, ``t``
float32 (B,) model time (0..1000 scale: DDIM timesteps as they are, flow time × 1000) and ``cond``
a pytree whose leaves have the batch as their first axis. Classifier-free guidance runs the
conditional and unconditional halves as ONE batch of 2B:
``pred = pred(∅) + s · (pred(c) − pred(∅))``; pass ``uncond=None`` to sample without
guidance.

Compile once, vary freely: the sampling settings (``settings.SampleSettings``: steps, guidance
scale, eta, rescale, interval, shift, image guidance, seed, resampling) are one traced pytree
(``traced`` gives it stable dtypes), and so is the start index (SDEdit strength). The scan has a
static length ``max_steps``; steps past ``settings.steps`` or before ``start_index`` are skipped
with ``lax.cond`` (no model call). Typical use::

  sample = jax.jit(functools.partial(ddim_sample, model_fn, sched), static_argnames=("max_steps",))
  s = settings.SampleSettings(steps=50, guidance_scale=7.5, seed=0)
  z0 = sample(z_T, cond, uncond, traced(s), max_steps=100)

Static (hashable) arguments: ``model_fn`` (closed over with ``functools.partial``), the schedule,
``max_steps``, ``carry_sharding``, and whether ``uncond`` / ``inpaint`` are ``None``. Pass settings
through ``traced`` (or keep their Python types stable: ``eta=0`` then ``eta=0.5`` is int then
float, a retrace).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from psvae_jax.diffusion import objectives
from psvae_jax.diffusion import schedules
from psvae_jax.diffusion import settings

SampleSettings = settings.SampleSettings
# The settings are a pytree: their fields are the sampler's traced values.
jax.tree_util.register_dataclass(
    SampleSettings, data_fields=SampleSettings.field_names(), meta_fields=[]
)
# The sampler's own randomness (DDIM eta, RePaint) is keyed apart from the initial noise's
# fold_in(key(seed), index): fold_in(key(seed), KEY_OFFSET) (`traced`).
KEY_OFFSET = 1 << 20

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
Inpaint = tuple[
    jax.Array, jax.Array, jax.Array
]  # (z_known, mask: 1 = regenerate, noise), each like z


def ddim_timesteps(
    num_steps: int, T: int = 1000, *, max_steps: int | None = None, steps_offset: int = 0
) -> np.ndarray:
  """DDIM timesteps with diffusers' "leading" spacing, padded to ``max_steps`` with −1.

  As ``DDIMScheduler.set_timesteps``: ratio = T // num_steps; timesteps = (arange(num_steps) ·
  ratio)[::-1] + steps_offset, e.g. 50 steps → [980, 960, ..., 20, 0]. The sampler steps each t to
  t − ratio (the scheduler's ``prev_timestep``); a negative previous timestep uses
  ``sched.final_alpha_cumprod``.

  Returns:
    int32 (max_steps,) array: the timesteps, then −1 padding.
  """
  max_steps = num_steps if max_steps is None else max_steps
  if not 1 <= num_steps <= min(T, max_steps):
    raise ValueError(
        f"num_steps must be in [1, min(T={T}, max_steps={max_steps})], got {num_steps}."
    )
  ratio = T // num_steps
  ts = (np.arange(num_steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
  out = np.full((max_steps,), -1, np.int32)
  out[:num_steps] = ts
  return out


def ddim_grid(num_steps: jax.Array, T: int, max_steps: int) -> jax.Array:
  """``ddim_timesteps(num_steps, T, max_steps=max_steps)`` for a traced ``num_steps``."""
  n = jnp.asarray(num_steps, jnp.int32)
  i = jnp.arange(max_steps, dtype=jnp.int32)
  return jnp.where(i < n, (n - 1 - i) * (T // jnp.maximum(n, 1)), -1)


def traced(s: SampleSettings, impl: str | None = None) -> SampleSettings:
  """Checked host settings -> the sampler's traced form: numpy scalars of fixed dtypes (int32
  counts, float32 numbers, a float32 (2,) interval), so any values share one compile, and `seed`
  replaced by the key of the sampler's own randomness, ``fold_in(key(seed, impl), KEY_OFFSET)``
  (made here, outside the sampler's jit: a threefry hash costs seconds of compile on XLA:CPU)."""
  s = s.validate()
  f32 = np.float32
  return SampleSettings(
      steps=np.int32(s.steps),
      guidance_scale=f32(s.guidance_scale),
      eta=f32(s.eta),
      guidance_rescale=f32(s.guidance_rescale),
      guidance_interval=np.asarray(s.guidance_interval, f32),
      shift=f32(s.shift),
      image_guidance_scale=f32(s.image_guidance_scale),
      seed=jax.random.fold_in(jax.random.key(s.seed, impl=impl), KEY_OFFSET),
      resample=np.int32(s.resample),
  )


def sdedit_start_index(num_steps: int, strength: float) -> int:
  """First step index for SDEdit at ``strength`` (diffusers' img2img rule): 0 runs all steps."""
  init = min(int(num_steps * strength), num_steps)
  return max(num_steps - init, 0)


def ddim_start_latents(
    sched: schedules.Schedule,
    z0: jax.Array,
    timesteps: jax.Array,
    start_index: jax.Array,
    noise: jax.Array,
) -> jax.Array:
  """SDEdit start: q_sample(z0, timesteps[start_index]);
  past the last step (strength 0) it returns z0."""
  timesteps = jnp.asarray(timesteps, jnp.int32)
  idx = jnp.asarray(start_index, jnp.int32)
  t = jnp.where(idx < timesteps.shape[0], timesteps[jnp.minimum(idx, timesteps.shape[0] - 1)], -1)
  return schedules.q_sample(sched, z0, t, noise)


def _guided(
    model_fn: ModelFn, cond: Any, uncond: Any, s: SampleSettings
) -> Callable[..., jax.Array]:
  """(z, scalar model time, noise level) → float32 prediction; CFG as one 2B batch if ``uncond``
  is given.

  Two-condition guidance (InstructPix2Pix, eq. 3: a source image I and an instruction T): with
  ``uncond`` a pair (image-only condition, null condition), the three predictions run as one 3B
  batch and combine as ε(∅,∅) + s_I (ε(I,∅) − ε(∅,∅)) + s_T (ε(I,T) − ε(I,∅)), s_T
  ``s.guidance_scale`` and s_I ``s.image_guidance_scale`` (both inside the guidance interval).

  ``s.guidance_interval`` = (lo, hi) applies the guidance scale only at noise levels lo ≤ level ≤
  hi (level: t/T for DDIM, flow time t; 1 = pure noise) and scale 1 (the conditional prediction)
  elsewhere: guidance in a limited interval (Kynkäänniemi et al. 2024). (0, 1), the default, is
  plain CFG at every step. Traced.

  ``s.guidance_rescale`` = φ > 0 applies guidance rescaling (Lin et al. 2023, "Common diffusion
  noise schedules and sample steps are flawed", eq. 15-16): the guided prediction is scaled towards
  the per-sample standard deviation of the conditional one, which keeps large guidance scales
  from over-saturating. φ = 0 is plain CFG (diffusers' default).
  """
  if uncond is None:

    def pred(z, t, level):
      del level
      t_b = jnp.full((z.shape[0],), t, jnp.float32)  # (B,)
      return model_fn(z, t_b, cond).astype(jnp.float32)

    return pred

  guidance_scale = jnp.asarray(s.guidance_scale, jnp.float32)
  interval = jnp.asarray(s.guidance_interval, jnp.float32)  # (2,)
  if isinstance(uncond, tuple):  # (image-only, null): two-condition guidance
    image_only, null = uncond
    three = jax.tree.map(lambda c, i, u: jnp.concatenate([c, i, u], axis=0), cond, image_only, null)
    s_img = jnp.asarray(s.image_guidance_scale, jnp.float32)

    def pred3(z, t, level):
      z3 = jnp.concatenate([z, z, z], axis=0)  # (3B, ...)
      out = model_fn(z3, jnp.full((z3.shape[0],), t, jnp.float32), three).astype(jnp.float32)
      out_c, out_i, out_u = jnp.split(out, 3, axis=0)
      on = (level >= interval[0]) & (level <= interval[1])
      s_t = jnp.where(on, guidance_scale, 1.0)
      s_i = jnp.where(on, s_img, 1.0)
      return out_u + s_i * (out_i - out_u) + s_t * (out_c - out_i)

    return pred3

  both = jax.tree.map(
      lambda c, u: jnp.concatenate([c, u], axis=0), cond, uncond
  )  # leaves (2B, ...)

  def pred(z, t, level):
    z2 = jnp.concatenate([z, z], axis=0)  # (2B, ...)
    t_b = jnp.full((z2.shape[0],), t, jnp.float32)  # (2B,)
    out = model_fn(z2, t_b, both).astype(jnp.float32)
    out_c, out_u = jnp.split(out, 2, axis=0)
    scale = jnp.where((level >= interval[0]) & (level <= interval[1]), guidance_scale, 1.0)
    guided = out_u + scale * (out_c - out_u)
    axes = tuple(range(1, guided.ndim))
    ratio = jnp.std(out_c, axis=axes, keepdims=True) / (
        jnp.std(guided, axis=axes, keepdims=True) + 1e-8
    )
    phi = jnp.asarray(s.guidance_rescale, jnp.float32)
    return jnp.where(phi > 0, guided * (1.0 - phi + phi * ratio), guided)

  return pred


def _constrain(z: jax.Array, sharding: Any) -> jax.Array:
  return z if sharding is None else jax.lax.with_sharding_constraint(z, sharding)


def _scan_steps(step_fn, z, indices, times, active, carry_sharding):
  """Runs ``z = step_fn(z, i, *times_i)`` where ``active[i]``,
  skipping the rest without a model call."""

  def body(z, xs):
    i, ts, on = xs
    z = jax.lax.cond(on, lambda z: step_fn(z, i, *ts).astype(z.dtype), lambda z: z, z)
    return _constrain(z, carry_sharding), None

  z, _ = jax.lax.scan(body, _constrain(z, carry_sharding), (indices, times, active))
  return z


def _resampled(step_fn, renoise, resample, rng):
  """RePaint resampling (Lugmayr et al. 2022) around an inpainting step t → t′.

  After the step (which resets the known region), the latents are re-noised from t′ back to t with
  fresh noise and the step is taken again, ``resample`` times (traced: a ``fori_loop`` with a traced
  bound), so the generated region is harmonised with the known one. ``resample`` = 0 is the plain
  step.
  """
  resample = jnp.asarray(resample, jnp.int32)

  def run(z, i, *ts):
    z = step_fn(z, i, *ts)

    def again(j, z):
      key = jax.random.fold_in(jax.random.fold_in(rng, i), j)
      return step_fn(renoise(z, key, *ts), i, *ts).astype(z.dtype)

    return jax.lax.fori_loop(0, resample, again, z)

  return run


def ddim_sample(
    model_fn: ModelFn,
    sched: schedules.Schedule,
    z_T: jax.Array,
    cond: Any,
    uncond: Any,
    s: SampleSettings,
    *,
    max_steps: int,
    start_index: int | jax.Array = 0,
    carry_sharding: Any = None,
    inpaint: Inpaint | None = None,
) -> jax.Array:
  """DDIM sampling (Song et al. 2021), step for step as diffusers' ``DDIMScheduler.step``
  (ε-prediction).

  Per step t → t_prev = t − T // num_steps (ᾱ_prev = final_alpha_cumprod when t_prev < 0)::

    ẑ0 = (z − √(1−ᾱ_t) ε̃) / √ᾱ_t
    σ = η · √((1−ᾱ_prev)/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_prev))
    z ← √ᾱ_prev ẑ0 + √(1−ᾱ_prev−σ²) ε̃ + σ · N(0, I; fold_in(rng, i))

  Args:
    model_fn: ``(z, t, cond) -> ε``; t float32 (B,) integer-valued timesteps.
    sched: noise schedule.
    z_T: (B, ...) starting latents (noise, or ``ddim_start_latents`` for SDEdit).
    cond: conditioning pytree, leaves (B, ...).
    uncond: null conditioning pytree like ``cond``, or None for no guidance, or a pair
      (image-only, null) for two-condition guidance (``_guided``).
    s: the settings (traced; ``traced``): s.steps steps on ``ddim_timesteps``' grid, s.eta
      (0 deterministic, 1 DDPM-like), guidance (``_guided``), s.seed (the key ``traced`` made of
      the seed: the η > 0 noise of step i is ``fold_in(key, i)``), s.resample: with
      ``inpaint``, RePaint resampling jumps
      per step (0 = none), see ``_resampled``: z_t = √(ᾱ_t/ᾱ_prev) z_prev + √(1 − ᾱ_t/ᾱ_prev) ε,
      then the step again.
    max_steps: the scan's static length (s.steps ≤ max_steps).
    start_index: first step to run (traced); earlier steps are skipped (SDEdit).
    carry_sharding: optional sharding for the latents carried through the scan.
    inpaint: optional ``(z_known, mask, noise)``: after each step the known region (mask 0) is reset
      to q_sample(z_known, t_prev, noise); mask 1 = regenerate.

  Returns:
    Final latents z_0, like z_T.
  """
  timesteps = ddim_grid(s.steps, sched.num_timesteps, max_steps)  # (S,)
  ratio = sched.num_timesteps // jnp.maximum(jnp.asarray(s.steps, jnp.int32), 1)
  eta = jnp.asarray(s.eta, jnp.float32)
  rng = s.seed  # the key (``traced``)
  pred = _guided(model_fn, cond, uncond, s)

  def step(z, i, t):
    t_prev = t - ratio
    a_t = schedules.alpha_cumprod_at(sched, t)
    a_prev = schedules.alpha_cumprod_at(sched, t_prev)
    z = z.astype(jnp.float32)
    eps = pred(z, t.astype(jnp.float32), t.astype(jnp.float32) / sched.num_timesteps)
    z0_hat = (z - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)
    variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
    sigma = eta * jnp.sqrt(variance)
    noise = jax.random.normal(jax.random.fold_in(rng, i), z.shape, jnp.float32)
    direction = jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma**2, 0.0)) * eps
    z = jnp.sqrt(a_prev) * z0_hat + direction + sigma * noise
    if inpaint is not None:
      z_known, mask, known_noise = inpaint
      z = mask * z + (1.0 - mask) * schedules.q_sample(sched, z_known, t_prev, known_noise)
    return z

  if inpaint is not None:

    def renoise(z, key, t):
      r = schedules.alpha_cumprod_at(sched, t) / schedules.alpha_cumprod_at(sched, t - ratio)
      return jnp.sqrt(r) * z + jnp.sqrt(1.0 - r) * jax.random.normal(key, z.shape, jnp.float32)

    step = _resampled(step, renoise, s.resample, jax.random.fold_in(rng, 1 << 30))

  idx = jnp.arange(timesteps.shape[0], dtype=jnp.int32)
  active = (timesteps >= 0) & (idx >= start_index)
  return _scan_steps(step, z_T, idx, (timesteps,), active, carry_sharding)


def flow_time_grid(
    num_steps: int | jax.Array, shift: float | jax.Array, max_steps: int
) -> tuple[jax.Array, jax.Array]:
  """Euler time grid (t_i, t_{i+1}), i < max_steps: t_i = shift(1 − i/n),
  n = num_steps (traced); 1 → 0."""
  n = jnp.asarray(num_steps, jnp.float32)
  i = jnp.arange(max_steps, dtype=jnp.float32)
  t = objectives.shift_time(jnp.clip(1.0 - i / n, 0.0, 1.0), shift)  # (S,)
  t_next = objectives.shift_time(jnp.clip(1.0 - (i + 1.0) / n, 0.0, 1.0), shift)  # (S,)
  return t, t_next


def euler_start_latents(
    z0: jax.Array,
    noise: jax.Array,
    num_steps: int | jax.Array,
    start_index: int | jax.Array,
    shift: float | jax.Array,
) -> jax.Array:
  """SDEdit start for ``euler_sample``: (1 − t) z0 + t ε at t = shift(1 − start_index /
  num_steps), the grid's time at ``start_index`` (start 0: the noise itself; start = num_steps:
  z0)."""
  u = jnp.clip(1.0 - jnp.asarray(start_index, jnp.float32) / num_steps, 0.0, 1.0)
  t = objectives.shift_time(u, jnp.asarray(shift, jnp.float32))
  return (1.0 - t) * jnp.asarray(z0, jnp.float32) + t * jnp.asarray(noise, jnp.float32)


def euler_sample(
    model_fn: ModelFn,
    z_1: jax.Array,
    cond: Any,
    uncond: Any,
    s: SampleSettings,
    *,
    max_steps: int,
    start_index: int | jax.Array = 0,
    carry_sharding: Any = None,
    inpaint: Inpaint | None = None,
) -> jax.Array:
  """Flow-matching Euler sampler: z ← z + (t_next − t) · v̂(z, t), t from 1 (noise) to 0
  (data).

  Args:
    model_fn: ``(z, t_model, cond) -> v`` with t_model = 1000 · t, float32 (B,).
    z_1: (B, ...) noise (or (1 − t) z0 + t ε at t = grid[start_index] for SDEdit).
    cond: conditioning pytree, leaves (B, ...).
    uncond: null conditioning like ``cond``, or None for no guidance, or a pair (image-only,
      null) for two-condition guidance (``_guided``).
    s: the settings (traced; ``traced``): s.steps Euler steps on t_i = shift(1 − i/steps) with
      s.shift the sampling shift (config ``sample.shift``, not necessarily the training
      ``diffusion.flow_shift``), guidance (``_guided``), s.resample: with ``inpaint``, RePaint
      resampling jumps per step, see ``_resampled``: z_t = ((1 − t)/(1 − t_next)) z_next +
      √(t² − ((1 − t)/(1 − t_next))² t_next²) ε, then the step again (noise from the key
      ``traced`` made of s.seed).
    max_steps: the scan's static length (s.steps ≤ max_steps).
    start_index: first step to run (traced).
    carry_sharding: optional sharding for the carried latents.
    inpaint: optional ``(z_known, mask, noise)``: after each step the known region (mask 0) is reset
      to (1 − t_next) z_known + t_next noise.

  Returns:
    Final latents, like z_1.
  """
  num_steps = jnp.asarray(s.steps, jnp.int32)
  t_grid, t_next_grid = flow_time_grid(num_steps, jnp.asarray(s.shift, jnp.float32), max_steps)
  pred = _guided(model_fn, cond, uncond, s)

  def step(z, i, t, t_next):
    del i
    z = z.astype(jnp.float32)
    z = z + (t_next - t) * pred(z, t * objectives.MODEL_TIME_SCALE, t)
    if inpaint is not None:
      z_known, mask, known_noise = inpaint
      z = mask * z + (1.0 - mask) * ((1.0 - t_next) * z_known + t_next * known_noise)
    return z

  if inpaint is not None:

    def renoise(z, key, t, t_next):
      r = (1.0 - t) / (1.0 - t_next)
      sd = jnp.sqrt(jnp.maximum(t**2 - (r * t_next) ** 2, 0.0))
      return r * z + sd * jax.random.normal(key, z.shape, jnp.float32)

    step = _resampled(step, renoise, s.resample, s.seed)

  idx = jnp.arange(max_steps, dtype=jnp.int32)
  active = (idx < num_steps) & (idx >= start_index)
  return _scan_steps(step, z_1, idx, (t_grid, t_next_grid), active, carry_sharding)

"""Discrete diffusion noise schedules (linear, cosine) and the forward process q(z_t | z_0).

The schedule is a ``flax.struct.dataclass`` of float32 arrays, so it can be passed into ``jax.jit``
as an ordinary argument. Conventions follow diffusers' schedulers so samplers can be checked against
them:

- ``linear_schedule`` equals diffusers' ``beta_schedule="linear"``: betas = linspace(beta_start,
  beta_end, T). (diffusers' ``"scaled_linear"``, linspace(√beta_start, √beta_end, T)², is a
  different schedule.)
- ``cosine_schedule`` equals diffusers' ``"squaredcos_cap_v2"`` (Nichol & Dhariwal 2021, β capped
  at 0.999).
- ``final_alpha_cumprod`` is the ᾱ used "before step 0", i.e. for a DDIM step whose previous
  timestep is negative: 1.0 as diffusers' ``set_alpha_to_one=True`` (default), else ᾱ_0.
"""

from __future__ import annotations

import math

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np


@struct.dataclass
class Schedule:
  """Noise schedule state.

  Attributes:
    betas: (T,) float32 β_t.
    alphas_cumprod: (T,) float32 ᾱ_t = Π_{s<=t} (1 − β_s).
    final_alpha_cumprod: () float32 ᾱ for timesteps < 0 (the end of sampling).
  """

  betas: jax.Array
  alphas_cumprod: jax.Array
  final_alpha_cumprod: jax.Array

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def _from_betas(betas: np.ndarray, set_alpha_to_one: bool) -> Schedule:
  # Products in float64, stored in float32 (diffusers does the cumprod in float32; the difference is
  # ~1e-7).
  alphas_cumprod = np.cumprod(1.0 - betas.astype(np.float64))
  final = 1.0 if set_alpha_to_one else alphas_cumprod[0]
  return Schedule(
      betas=jnp.asarray(betas, jnp.float32),
      alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
      final_alpha_cumprod=jnp.asarray(final, jnp.float32),
  )


def linear_schedule(
    T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, set_alpha_to_one: bool = True
) -> Schedule:
  """Linear β from ``beta_start`` to ``beta_end`` over T steps (DDPM; diffusers' "linear")."""
  betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
  return _from_betas(betas, set_alpha_to_one)


def cosine_schedule(
    T: int = 1000, max_beta: float = 0.999, s: float = 0.008, set_alpha_to_one: bool = True
) -> Schedule:
  """Cosine ᾱ(u) = cos²((u + s)/(1 + s) · π/2), u = t/T;
  β_t = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), max_beta)."""

  def alpha_bar(u: float) -> float:
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

  betas = np.array([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)])
  return _from_betas(betas, set_alpha_to_one)


def alpha_cumprod_at(sched: Schedule, t_int: jax.Array) -> jax.Array:
  """ᾱ_t for integer timesteps of any shape; t < 0 gives ``final_alpha_cumprod``."""
  t_int = jnp.asarray(t_int, jnp.int32)
  a = sched.alphas_cumprod[jnp.clip(t_int, 0, sched.num_timesteps - 1)]
  return jnp.where(t_int < 0, sched.final_alpha_cumprod, a)


def q_sample(sched: Schedule, z0: jax.Array, t_int: jax.Array, noise: jax.Array) -> jax.Array:
  """z_t = √ᾱ_t z0 + √(1−ᾱ_t) ε.

  Args:
    sched: the schedule.
    z0: clean latents, (B, ...).
    t_int: integer timesteps, () or (B,); t < 0 means "no noise" (ᾱ = final_alpha_cumprod, 1.0 by
      default).
    noise: ε, same shape as z0.

  Returns:
    z_t, same shape and dtype as z0.
  """
  a = alpha_cumprod_at(sched, t_int)
  a = a.reshape(a.shape + (1,) * (z0.ndim - a.ndim))  # (B, 1, ..., 1) or ()
  out = jnp.sqrt(a) * z0.astype(jnp.float32) + jnp.sqrt(1.0 - a) * noise.astype(jnp.float32)
  return out.astype(z0.dtype)

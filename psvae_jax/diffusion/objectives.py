"""Diffusion training objectives: ε-prediction (DDPM) and flow matching (rectified flow, velocity).

Each objective is an object separate from the network (as in diffuse_nnx), used by the training task
as::

  t = obj.sample_t(rng_t, (B,))                 # objective time
  z_t = obj.sample_x_t(z0, t, noise)
  pred = model(z_t, obj.model_time(t), cond)    # the network always sees time on a 0..1000 scale
  loss = obj.loss(pred, obj.target(z0, noise, t)).mean()

Time conventions:
- ``EpsilonObjective``: t are integer timesteps in [0, T) returned as float32; model time = t.
- ``FlowObjective``: t ∈ (0, 1), t = 1 is pure noise; z_t = (1 − t) z0 + t ε; target v = ε −
  z0; model time = 1000·t, so a DiT's timestep embedder sees the same range under either objective
  (``t_scale`` = 1). t is drawn logit-normal, then shifted: t' = s·t / (1 + (s − 1)·t) (s > 1
  moves mass towards noise). ``settings.dimension_shift`` gives the dimension-dependent training
  shift s = √(h·w·C / n).
"""

from __future__ import annotations


from flax import struct
import jax
import jax.numpy as jnp

from psvae_jax.diffusion import schedules

MODEL_TIME_SCALE = 1000.0  # flow time t ∈ [0, 1] → model time t · 1000


def shift_time(t: jax.Array, shift: float | jax.Array) -> jax.Array:
  """Timestep shift t' = s·t / (1 + (s − 1)·t): identity at s = 1, fixes 0 and 1,
  monotone for s > 0."""
  return shift * t / (1.0 + (shift - 1.0) * t)


def _bcast(t: jax.Array, x: jax.Array) -> jax.Array:
  """(B,) → (B, 1, ..., 1) matching x's rank."""
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def mse_per_example(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error over all but the batch axis, in float32: (B, ...) → (B,)."""
  err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  return err.reshape(err.shape[0], -1).mean(axis=1)


@struct.dataclass
class EpsilonObjective:
  """DDPM ε-prediction: z_t = √ᾱ_t z0 + √(1−ᾱ_t) ε,
  loss ‖ε − ε_θ(z_t, t)‖²."""

  schedule: schedules.Schedule

  def sample_t(self, rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Integer-uniform timesteps in [0, T), as float32 (what the model takes)."""
    t = jax.random.randint(rng, shape, 0, self.schedule.num_timesteps)
    return t.astype(jnp.float32)

  def sample_x_t(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    return schedules.q_sample(self.schedule, x0, t.astype(jnp.int32), noise)

  def target(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    del x0, t
    return noise

  def model_time(self, t: jax.Array) -> jax.Array:
    return t.astype(jnp.float32)

  def loss(self, pred: jax.Array, target: jax.Array) -> jax.Array:
    """Per-example MSE, (B,)."""
    return mse_per_example(pred, target)


@struct.dataclass
class FlowObjective:
  """Flow matching with velocity target v = ε − z0 on z_t = (1 − t) z0 + t ε (SD3 / RAE
  style).

  Attributes:
    shift: timestep shift s (1.0: none).
    logit_normal_mean: mean of the normal whose sigmoid gives t.
    logit_normal_std: its standard deviation.
  """

  shift: float = struct.field(pytree_node=False, default=1.0)
  logit_normal_mean: float = struct.field(pytree_node=False, default=0.0)
  logit_normal_std: float = struct.field(pytree_node=False, default=1.0)

  def sample_t(self, rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """t = shift(sigmoid(μ + σ·n)), n ~ N(0, 1); float32 in (0, 1)."""
    u = self.logit_normal_mean + self.logit_normal_std * jax.random.normal(rng, shape, jnp.float32)
    return shift_time(jax.nn.sigmoid(u), self.shift)

  def sample_x_t(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    tb = _bcast(t.astype(jnp.float32), x0)
    out = (1.0 - tb) * x0.astype(jnp.float32) + tb * noise.astype(jnp.float32)
    return out.astype(x0.dtype)

  def target(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    del t
    return noise.astype(jnp.float32) - x0.astype(jnp.float32)

  def model_time(self, t: jax.Array) -> jax.Array:
    return t.astype(jnp.float32) * MODEL_TIME_SCALE

  def loss(self, pred: jax.Array, target: jax.Array) -> jax.Array:
    """Per-example MSE, (B,)."""
    return mse_per_example(pred, target)


def make(diff_cfg):
  """The objective of a stage-3 config's `diffusion` fields (eps: its schedule; flow: its
  training shift)."""
  if diff_cfg.objective == "eps":
    sched = (
        schedules.linear_schedule(diff_cfg.num_timesteps, diff_cfg.beta_start, diff_cfg.beta_end)
        if diff_cfg.schedule == "linear"
        else schedules.cosine_schedule(diff_cfg.num_timesteps)
    )
    return EpsilonObjective(sched)
  if diff_cfg.objective == "flow":
    return FlowObjective(shift=diff_cfg.flow_shift)
  raise ValueError(f"Unknown diffusion.objective {diff_cfg.objective!r} (eps | flow).")

"""A stage-3 run's diffusion settings from its config: the training objective, the
dimension-dependent flow shift, and the Euler sampler's shift (what the trainer, the sampler and
the API read alike)."""

from __future__ import annotations

import math

from absl import logging

from psvae_jax.diffusion import objectives
from psvae_jax.diffusion import schedules


def make_objective(diff_cfg):
  if diff_cfg.objective == "eps":
    sched = (
        schedules.linear_schedule(diff_cfg.num_timesteps, diff_cfg.beta_start, diff_cfg.beta_end)
        if diff_cfg.schedule == "linear"
        else schedules.cosine_schedule(diff_cfg.num_timesteps)
    )
    return objectives.EpsilonObjective(sched)
  if diff_cfg.objective == "flow":
    return objectives.FlowObjective(shift=diff_cfg.flow_shift)
  raise ValueError(f"Unknown diffusion.objective {diff_cfg.objective!r} (eps | flow).")


def resolve_flow_shift(config, latent_shape: tuple[int, ...]) -> float:
  """Sets config.diffusion.flow_shift from the latent's size when flow_shift_base_dim > 0.

  The dimension-dependent training shift √(h·w·C / flow_shift_base_dim)
  (objectives.dimension_shift; SD3 §5.3.2, RAE). Called at stage-3 start before config.json is
  written, so the resolved number is what the workdir's config records and sampling reads.
  Returns the training shift in use.
  """
  d = config.diffusion
  base = int(d.get("flow_shift_base_dim", 0))
  if base > 0 and d.objective == "flow":
    d.flow_shift = objectives.dimension_shift(latent_shape, base)
    logging.info(
        "diffusion.flow_shift = sqrt(%s / %d) = %.4f (dimension-dependent training shift)",
        "x".join(str(v) for v in latent_shape),
        base,
        d.flow_shift,
    )
  return float(d.flow_shift)


def sampling_shift(config) -> float:
  """The Euler sampler's timestep shift: sample.shift,
  else (an older workdir) diffusion.flow_shift."""
  shift = config.sample.get("shift", None)
  return float(config.diffusion.flow_shift if shift is None else shift)


def check_shift(shift) -> float:
  """A sampling shift must be a finite number > 0 (ValueError naming it otherwise)."""
  try:
    value = float(shift)
  except (TypeError, ValueError):
    value = float("nan")
  if not (math.isfinite(value) and value > 0):
    raise ValueError(f"shift must be a number > 0, got {shift!r}.")
  return value

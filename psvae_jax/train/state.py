"""Train state: trainable params, optimizer state, EMA, frozen params and counters."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds besides the data iterator and config.

  Attributes:
    step: number of optimizer steps taken (skipped non-finite steps included).
    params: trainable parameter tree (frozen parts are masked in the optimizer).
    opt_state: optax state.
    ema_params: exponential moving average of `params`, used for eval and sampling.
    frozen: parameters that never train (e.g. stage 2's frozen encoder copy).
    skipped: number of steps skipped because the loss or gradients were not finite.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  frozen: Any
  skipped: jax.Array


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay with a warm-up, so short runs are not dominated by the init."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update_ema(ema: Any, params: Any, decay: jax.Array) -> Any:
  return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)

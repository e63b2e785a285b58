"""The task interface: what psvae_jax/train/loop.py calls on a stage-specific task.

A task (AutoencoderTask for stages 1-2, DiTTask for stage 3) says what a stage trains and
how; the loop knows nothing else about it. Tasks satisfy `Task` structurally (they do not
subclass it); tests/test_tasks.py checks that every task class has every member.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

import jax
import numpy as np

from psvae_jax.train.state import TrainState

PyTree = Any


@runtime_checkable
class Task(Protocol):
  """One training stage, as the loop sees it."""

  param_groups: Mapping[str, str]
  """{regex over "/"-joined param paths: optimizer group label}; "frozen" is never updated."""

  grid_notes: Mapping[str, str]
  """{image name of the last `evaluate`: what made it} (a sample grid's prompts or labels per
  tile, row-major, and the sampling settings); written beside the PNG and as TensorBoard text."""

  def init(self, rng: jax.Array) -> tuple[PyTree, PyTree]:
    """(params, frozen) from scratch; pure: traced by jax.eval_shape and jax.jit."""

  def make_frozen(self, params: PyTree) -> PyTree:
    """The non-trained copy derived from params (e.g. stage 2's frozen encoder), or {}."""

  def constants(self) -> PyTree:
    """Fixed arrays the loss needs, not checkpointed (LPIPS weights, the frozen PS-VAE...)."""

  def loss(
      self,
      params: PyTree,
      frozen: PyTree,
      consts: PyTree,
      batch: Mapping[str, jax.Array],
      rng: jax.Array,
      step: jax.Array | int = 0,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar loss, {name: scalar metric}) of one global batch; differentiated w.r.t. params.
    `step`: the optimizer steps taken so far (schedules inside the loss: adv.start_step)."""

  def warm_start(self, params: PyTree) -> PyTree | None:
    """Params to start from instead of init's (e.g. stage 1's weights), or None to keep them."""

  def evaluate(
      self, state: TrainState, consts: PyTree, mesh: jax.sharding.Mesh, step: int
  ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """({name: scalar}, {name: uint8 (H, W, 3) image}) of the current state."""

  def finish(
      self,
      state: TrainState,
      consts: PyTree,
      mesh: jax.sharding.Mesh,
      workdir: str,
      train_iter: Iterator[dict[str, np.ndarray]],
  ) -> None:
    """Runs once after the last step (e.g. stage 2 writes latent_stats.npz for stage 3)."""

"""Orbax checkpointing: train state, per-process data-iterator state and config, async, keep-N.

Items of a step: "state" (the sharded TrainState), "data" (one JSON file per process with
its input iterator's state, captured at save time) and "config" (the resolved config).
Orbax writes each step to a temporary directory (`<step>.orbax-checkpoint-tmp-*`) and renames
it when complete (on GCS, where renames are not atomic, it writes a commit marker), so a
crash or kill -9 during a save leaves the previous step as the latest: `latest_step()`
considers finalized steps only, and opening a workdir deletes the partial ones before the
manager is built (synchronously, on process 0, then a barrier: Orbax's own
`cleanup_tmp_directories` runs in a background future that only a later save awaits, so a
resumed run could still see the partial directory). A state with non-finite parameters is
never saved.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils


class DataStateHandler(ocp.CheckpointHandler):
  """Saves a snapshot of each process's input-iterator state as JSON."""

  def _file(self, directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

  def save(self, directory: epath.Path, args: "DataStateSave"):
    state = args.state
    if isinstance(state, bytes):
      state = {"__bytes__": state.decode()}
    self._file(epath.Path(directory)).write_text(json.dumps(state))

  def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None):
    del args
    path = self._file(epath.Path(directory))
    if not path.exists():
      raise ValueError(
          f"No data-iterator state for this process in {directory} (was the "
          "checkpoint written with another process count?)"
      )
    state = json.loads(path.read_text())
    if isinstance(state, dict) and "__bytes__" in state:
      return state["__bytes__"].encode()
    return state

  def metadata(self, directory):
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [
      jnp.all(jnp.isfinite(x))
      for x in jax.tree.leaves(tree)
      if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _abstract(tree: Any) -> Any:
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
  )


def check_compatible(saved_meta: Any, target: Any, what: str) -> None:
  """Raises ValueError naming entries whose saved shape differs from the target's."""

  def flat(tree):
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      out["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)] = leaf
    return out

  saved, want = flat(saved_meta), flat(target)
  missing = sorted(set(want) - set(saved))
  unexpected = sorted(set(saved) - set(want))
  mismatched = sorted(
      f"{k}: saved {tuple(saved[k].shape)}, expected {tuple(want[k].shape)}"
      for k in set(saved) & set(want)
      if hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(want[k].shape)
  )
  if missing or unexpected or mismatched:
    parts = [f"Checkpoint {what} does not match this config (another stage or model size?):"]
    for title, items in (
        ("missing in checkpoint", missing),
        ("not in this model", unexpected),
        ("shape mismatch", mismatched),
    ):
      if items:
        parts.append(
            f"  {title} ({len(items)}): "
            + "; ".join(items[:20])
            + (" ..." if len(items) > 20 else "")
        )
    raise ValueError("\n".join(parts))


class Checkpointer:
  """One CheckpointManager for a workdir's `checkpoints/`."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = epath.Path(directory)
    self._remove_partial_steps()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
    )
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_names=("state", "data", "config"),
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": DataStateHandler(),
            "config": ocp.JsonCheckpointHandler(),
        },
        options=options,
    )

  def latest_step(self) -> int | None:
    """The newest finalized step (a step killed mid-save is never returned)."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      path = self.directory / str(step)
      if ocp.step.is_path_finalized(path):
        return step
      logging.warning("Ignoring incomplete checkpoint %s (interrupted save).", path)
    return None

  def partial_steps(self) -> list[epath.Path]:
    """Temporary (unfinished) step directories left by an interrupted save."""
    if not self.directory.exists():
      return []
    return sorted(p for p in self.directory.iterdir() if ocp.step.is_tmp_checkpoint(p))

  def _remove_partial_steps(self):
    """Deletes what an interrupted save left, before anything reads the directory."""
    if jax.process_index() == 0:
      for path in self.partial_steps():
        logging.warning("Removing incomplete checkpoint %s (interrupted save).", path)
        path.rmtree()
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_cleanup:{self.directory}")

  def save(
      self,
      step: int,
      state: Any,
      *,
      data_state: Any = None,
      config: dict | None = None,
      force: bool = True,
  ) -> bool:
    """Saves asynchronously; refuses (returns False) when params are not finite."""
    if not bool(_all_finite((state.params, state.ema_params))):
      logging.error("Not saving step %d: parameters contain NaN/Inf.", step)
      return False
    args = {
        "state": ocp.args.StandardSave(state),
        "data": DataStateSave(data_state if data_state is not None else {}),
        "config": ocp.args.JsonSave(config or {}),
    }
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
    """Restores (state, data_state) into the abstract sharded target."""
    meta = self.manager.item_metadata(step)
    if meta is not None and meta.get("state") is not None:
      saved = meta["state"]
      saved = getattr(saved, "tree", saved)
      check_compatible(saved, _as_dict(abstract_state), f"{self.directory}/{step}")
    restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=DataStateRestore()
        ),
    )
    return restored["state"], restored["data"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _as_dict(state: Any) -> Any:
  if dataclasses.is_dataclass(state):
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  return state


def restore_params(
    workdir: str, target: Any, *, key: str = "ema_params", step: int | None = None
) -> Any:
  """Restores one entry (e.g. the EMA params) of another run's latest checkpoint.

  Args:
    workdir: the other run's workdir (holding `checkpoints/`).
    target: abstract (ShapeDtypeStruct with sharding) or concrete tree to restore into.
    key: the TrainState field to read.
    step: the step to read (default: latest).
  """
  directory = epath.Path(workdir) / "checkpoints"
  mngr = ocp.CheckpointManager(
      directory, item_names=("state",), item_handlers={"state": ocp.PyTreeCheckpointHandler()}
  )
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint found under {directory}.")
  target = _abstract(target)
  meta = mngr.item_metadata(step)["state"]
  meta = getattr(meta, "tree", meta)
  if key not in meta:
    raise ValueError(f"Checkpoint {directory}/{step} has no '{key}' (has {sorted(meta)}).")
  check_compatible(meta[key], target, f"{directory}/{step}/{key}")
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  out = mngr.restore(
      step,
      args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              item={key: target}, restore_args={key: restore_args}, partial_restore=True
          )
      ),
  )
  mngr.close()
  return out["state"][key]

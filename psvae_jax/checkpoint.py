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
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from psvae_jax import workdir as workdir_lib


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


class IncompatibleCheckpointError(ValueError):
  """A readable checkpoint of another model (entries or shapes differ): not damage."""


def describe_error(e: BaseException) -> str:
  """One line about why a checkpoint step did not restore."""
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def newest_restorable(steps, restore, what: str, on_damaged=None):
  """restore(step) for the newest of `steps` (newest first) that restores; each damaged step is
  skipped with one warning line and never deleted (`on_damaged(step)` may set it aside). An
  IncompatibleCheckpointError is raised (a config problem, not damage); RuntimeError when no
  step restores."""
  failures = []
  for step in steps:
    try:
      return step, restore(step)
    except IncompatibleCheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-exception-caught  (damage of any kind)
      failures.append(f"step {step} ({describe_error(e)})")
      kept = on_damaged(step) if on_damaged is not None else "left on disk"
      logging.warning(
          "%s: step %d does not restore (%s); trying an earlier step (the damaged one is %s).",
          what,
          step,
          describe_error(e),
          kept,
      )
  raise RuntimeError(f"{what}: no checkpoint step restores: {'; '.join(failures) or 'none'}.")


def check_compatible(saved_meta: Any, target: Any, what: str) -> None:
  """Raises IncompatibleCheckpointError naming entries whose saved shape differs."""

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
    raise IncompatibleCheckpointError("\n".join(parts))


class Checkpointer:
  """One CheckpointManager for a workdir's `checkpoints/`."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = absolute(directory)
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
    steps = self.finalized_steps()
    return steps[0] if steps else None

  def finalized_steps(self) -> list[int]:
    """Finalized steps, newest first."""
    out = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      path = self.directory / str(step)
      if ocp.step.is_path_finalized(path):
        out.append(step)
      else:
        logging.warning("Ignoring incomplete checkpoint %s (interrupted save).", path)
    return out

  def set_aside(self, step: int) -> str:
    """Renames a damaged step to `<step>.damaged` (kept for inspection, out of the way of the
    step numbers training saves again); returns where it went."""
    src = self.directory / str(step)
    dst = self.directory / f"{step}.damaged"
    n = 1
    while dst.exists():
      dst, n = self.directory / f"{step}.damaged{n}", n + 1
    if jax.process_index() == 0:
      src.rename(dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_set_aside:{self.directory}:{step}")
    self.manager.reload()
    return f"moved to {dst}"

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


EXPORTED_PARAMS = "ema_params.safetensors"  # an exported run (psvae_jax/export.py)


def flat_key(path) -> str:
  """ "a/b/kernel" of a pytree key path (dict keys joined by "/"): the safetensors tensor name."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def restore_exported(path: str, target: Any) -> Any:
  """The params of an exported EMA file (safetensors, one tensor per "a/b/kernel" leaf) in the
  structure, dtypes and shardings of `target`; names or shapes that differ raise with both."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  tensors = load_file(path)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
  want = {flat_key(p): leaf for p, leaf in leaves}
  missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
  if missing or extra:
    raise IncompatibleCheckpointError(
        f"{path} does not match the model: missing {missing[:5]} ({len(missing)}), "
        f"unexpected {extra[:5]} ({len(extra)})."
    )
  out = []
  for p, leaf in leaves:
    name, value = flat_key(p), tensors[flat_key(p)]
    if tuple(value.shape) != tuple(leaf.shape):
      raise IncompatibleCheckpointError(
          f"{path}: {name} has shape {value.shape}, the model wants {tuple(leaf.shape)}."
      )
    value = value.astype(leaf.dtype)
    sharding = getattr(leaf, "sharding", None)
    out.append(jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value))
  return jax.tree_util.tree_unflatten(treedef, out)


def absolute(path) -> epath.Path:
  """A local path made absolute (Orbax refuses relative ones: "Checkpoint path should be
  absolute"); cloud paths (gs://...) as they are."""
  text = str(path)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def is_export(workdir: str) -> bool:
  """Whether DIR is an export (psvae_jax/export.py: EMA params as safetensors, no checkpoints/)."""
  d = epath.Path(workdir)
  return (d / EXPORTED_PARAMS).exists() and not (d / workdir_lib.CHECKPOINTS).exists()


def restore_params(
    workdir: str, target: Any, *, key: str = "ema_params", step: int | None = None
) -> Any:
  """Restores one entry (e.g. the EMA params) of another run's latest checkpoint, or the
  EMA params of an exported run (DIR/ema_params.safetensors, no checkpoints/).

  Args:
    workdir: the other run's workdir (holding `checkpoints/`), or an export's directory.
    target: abstract (ShapeDtypeStruct with sharding) or concrete tree to restore into.
    key: the TrainState field to read.
    step: the step to read (default: latest).
  """
  exported = epath.Path(workdir) / EXPORTED_PARAMS
  if is_export(workdir):
    if key != "ema_params" or step is not None:
      raise IncompatibleCheckpointError(
          f"{workdir} is an export: it holds the EMA params only, not {key!r} at step {step}."
      )
    return restore_exported(str(exported), target)
  directory = absolute(epath.Path(workdir) / workdir_lib.CHECKPOINTS)
  mngr = ocp.CheckpointManager(  # every item the training wrote, so none is "unknown"
      directory,
      item_names=("state", "data", "config"),
      item_handlers={
          "state": ocp.PyTreeCheckpointHandler(),
          "data": DataStateHandler(),
          "config": ocp.JsonCheckpointHandler(),
      },
  )
  steps = sorted(mngr.all_steps(), reverse=True) if step is None else [step]
  if not steps:
    raise FileNotFoundError(f"No checkpoint found under {directory}.")
  target = _abstract(target)
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)

  def one(step):
    meta = mngr.item_metadata(step)
    meta = meta["state"] if meta is not None else None
    meta = getattr(meta, "tree", meta)
    if not meta:
      raise FileNotFoundError(f"{directory}/{step} has no readable metadata")
    if key not in meta:
      raise IncompatibleCheckpointError(
          f"Checkpoint {directory}/{step} has no '{key}' (has {sorted(meta)})."
      )
    check_compatible(meta[key], target, f"{directory}/{step}/{key}")
    out = mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item={key: target}, restore_args={key: restore_args}, partial_restore=True
            )
        ),
    )
    return out["state"][key]

  try:
    _, params = newest_restorable(steps, one, str(directory))
  finally:
    mngr.close()
  return params

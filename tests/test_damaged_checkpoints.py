"""A damaged latest checkpoint: the newest step that restores is used, the damaged one is named
in one warning line and set aside (never deleted); a checkpoint of another model still fails."""

import logging as std_logging
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from psvae_jax import checkpoint
from psvae_jax.train.state import TrainState


def _state(value):
  w = np.random.default_rng(int(value * 10)).normal(size=(64, 64)).astype(np.float32)
  w[0, 0] = value  # random (incompressible) data, with the step readable at [0, 0]
  params = {"w": jnp.asarray(w), "b": jnp.full((3,), value)}
  return TrainState(
      step=jnp.asarray(int(value), jnp.int32),
      params=params,
      opt_state={},
      ema_params=params,
      frozen={},
      skipped=jnp.zeros((), jnp.int32),
  )


def _ckpt(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), async_save=False, max_to_keep=5)
  for step in (1, 2, 3):
    ckpt.save(step, _state(step), data_state={"pos": step}, config={"c": step})
  ckpt.wait()
  return ckpt


def _truncate_largest(step_dir):
  files = sorted((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = files[-1].read_bytes()
  files[-1].write_bytes(data[: len(data) // 3])


def _resume(ckpt):
  abstract = _state(0)
  return checkpoint.newest_restorable(
      ckpt.finalized_steps(), lambda s: ckpt.restore(s, abstract), "run", ckpt.set_aside
  )


def test_truncated_and_metadata_less_steps_fall_back(tmp_path, caplog):
  ckpt = _ckpt(tmp_path)
  root = tmp_path / "checkpoints"
  _truncate_largest(root / "3")
  with caplog.at_level(std_logging.WARNING):
    step, (state, data) = _resume(ckpt)
  assert step == 2 and float(state.params["w"][0, 0]) == 2.0 and data == {"pos": 2}
  assert (root / "3.damaged").is_dir() and not (root / "3").exists()  # kept, set aside
  assert any("step 3 does not restore" in r.getMessage() for r in caplog.records)
  # Training on saves step 3 again (the damaged copy is out of the way).
  assert ckpt.save(3, _state(3.5), data_state={}, config={})
  ckpt.wait()
  assert _resume(ckpt)[0] == 3
  ckpt.close()


def test_deleted_data_or_metadata(tmp_path):
  ckpt = _ckpt(tmp_path)
  root = tmp_path / "checkpoints"
  shutil.rmtree(root / "3" / "state" / "ocdbt.process_0")  # the array data
  for name in ("_METADATA", "manifest.ocdbt"):  # the tree's metadata and the data's index
    (root / "2" / "state" / name).unlink()
  step, (state, _) = _resume(ckpt)
  assert step == 1 and float(state.params["b"][0]) == 1.0
  assert (root / "3.damaged").is_dir() and (root / "2.damaged").is_dir()
  ckpt.close()


def test_restore_params_falls_back_too(tmp_path):
  ckpt = _ckpt(tmp_path)
  ckpt.close()
  # Every data file of step 3: the largest alone may hold only the optimizer state (the file
  # layout varies), which restore_params never reads, so it would not see the damage.
  for f in (tmp_path / "checkpoints" / "3").rglob("*"):
    if f.is_file() and f.stat().st_size > 4096:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
  target = {"w": jnp.zeros((64, 64)), "b": jnp.zeros((3,))}
  params = checkpoint.restore_params(str(tmp_path), target, key="ema_params")
  assert float(params["w"][0, 0]) == 2.0
  assert (tmp_path / "checkpoints" / "3").is_dir()  # reading never moves files


def test_another_model_is_not_damage(tmp_path):
  ckpt = _ckpt(tmp_path)
  other = _state(0).replace(params={"w": jnp.zeros((8, 8)), "b": jnp.zeros((3,))})
  other = other.replace(ema_params=other.params)
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match="shape mismatch"):
    checkpoint.newest_restorable(
        ckpt.finalized_steps(), lambda s: ckpt.restore(s, other), "run", ckpt.set_aside
    )
  assert (tmp_path / "checkpoints" / "3").is_dir()
  np.testing.assert_equal(ckpt.finalized_steps(), [3, 2, 1])
  ckpt.close()

"""Stages 1 and 2 end to end on tiny shapes: warm start, freezing, preemption and resume."""

import functools
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from configs import psvae as psvae_config
from configs import svae as svae_config
from psvae_jax import checkpoint
from psvae_jax import writers
from psvae_jax.train import loop
from psvae_jax.train import optim
from psvae_jax.train.tasks import autoencoder

from conftest import ROOT, SMALL_AE, run_main  # pylint: disable=g-bad-import-order


def _small(config):
  config.model.encoder.num_layers = 1
  config.model.pixel_decoder.num_layers = 1
  config.batch_size = 8
  return config


def _popen(workdir, stage, *extra):
  cmd = [
      sys.executable,
      "-m",
      "psvae_jax.main",
      f"--config=configs/{stage}.py:tiny",
      f"--workdir={workdir}",
      *SMALL_AE,
      *extra,
  ]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return subprocess.Popen(
      cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def test_stage1_workdir_contract(svae_dir):
  stage1_dir = svae_dir
  assert (stage1_dir / "config.json").exists()
  assert (stage1_dir / "metrics.json").exists()
  assert (stage1_dir / "checkpoints" / "6").exists()
  assert any(p.name.startswith("events.out.tfevents") for p in stage1_dir.iterdir())
  assert list((stage1_dir / "samples").glob("reconstructions_*.png"))
  assert (stage1_dir / "data.json").exists()  # the splits it trained on (resume checks them)
  assert (stage1_dir / "latent_stats.npz").exists()  # a DiT can train on the S-VAE latent too
  history = writers.read_eval_history(str(stage1_dir))  # every periodic eval, for curves
  assert list(history) == [6] and "psnr" in history[6], history
  events = event_accumulator.EventAccumulator(str(stage1_dir))
  events.Reload()
  tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
  assert {"train/lr", "perf/eta_seconds", "train/loss"} <= tags, sorted(tags)


def test_stage2_sigterm_then_resume(svae_dir, tmp_path):
  stage1_dir = svae_dir
  args = (
      "--config.num_train_steps=40",
      "--config.eval_every=40",
      "--config.ckpt_every=1000",
      f"--config.init_from={stage1_dir}",
  )
  proc = _popen(tmp_path, "psvae", *args)
  lines = []
  deadline = time.time() + 300
  for line in proc.stdout:  # wait until training is under way, then preempt
    lines.append(line)
    if "step 4:" in line:
      proc.send_signal(signal.SIGTERM)
      break
    assert time.time() < deadline, "".join(lines[-50:])
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  assert "Initialising from stage-1 workdir" in "".join(lines)
  saved = checkpoint.Checkpointer(str(tmp_path / "checkpoints")).latest_step()
  assert saved is not None and 4 <= saved < 40, saved

  out = run_main(tmp_path, "configs/psvae.py:tiny", *SMALL_AE, *args)
  assert f"Resuming from {tmp_path}/checkpoints/{saved}" in out
  assert f"step {saved}:" not in out and f"step {saved + 2 - saved % 2}:" in out
  assert checkpoint.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 40
  stats = np.load(tmp_path / "latent_stats.npz")
  assert stats["mean"].shape == (16,) and np.all(stats["std"] > 0)


def test_mismatched_checkpoint_is_named(svae_dir):
  stage1_dir = svae_dir
  config = svae_config.get_config("tiny")
  config.model.latent_channels = 4  # stage 1 was trained with 16
  task = autoencoder.AutoencoderTask(_small(config))
  tx = optim.make_optimizer(
      config.optim, 10, functools.partial(optim.label_params, groups=task.param_groups)
  )
  abstract = jax.eval_shape(
      functools.partial(loop.create_train_state, task=task, tx=tx), jax.random.key(0)
  )
  with pytest.raises(ValueError, match="to_moments"):
    checkpoint.Checkpointer(str(stage1_dir / "checkpoints")).restore(6, abstract)


def test_frozen_encoder_and_nonfinite_skip():
  config = _small(svae_config.get_config("tiny"))
  task = autoencoder.AutoencoderTask(config)
  tx = optim.make_optimizer(
      config.optim, 10, functools.partial(optim.label_params, groups=task.param_groups)
  )
  state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(jax.random.key(0))
  step = jax.jit(functools.partial(loop.train_step, task=task, tx=tx, config=config))
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)), jnp.float32)
  for _ in range(2):  # lr is 0 at step 0 of the warmup
    new, metrics = step(state, {"image": images}, {})
    state, before = new, state
  enc_same = jax.tree.map(
      lambda a, b: bool(jnp.all(a == b)), state.params["encoder"], before.params["encoder"]
  )
  assert all(jax.tree.leaves(enc_same)), "stage 1 must not change the encoder"
  dec_same = jax.tree.map(
      lambda a, b: bool(jnp.all(a == b)), state.params["sem_dec"], before.params["sem_dec"]
  )
  assert not all(jax.tree.leaves(dec_same))
  assert float(metrics["nonfinite"]) == 0.0

  bad = images.at[0, 0, 0, 0].set(jnp.nan)
  after, metrics = step(state, {"image": bad}, {})
  assert float(metrics["nonfinite"]) == 1.0 and int(after.skipped) == 1
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), after.params, state.params)
  assert all(jax.tree.leaves(same)), "a non-finite step must leave params unchanged"


def test_stage2_starts_from_stage1_sem_encoder(svae_dir):
  """Stage 2's warm start keeps stage 1's trained E_s (no re-copy from the encoder)."""
  config = _small(psvae_config.get_config("tiny"))
  config.init_from = str(svae_dir)
  config.model.sem_init_from_encoder = True  # must not override what stage 1 trained
  task = autoencoder.AutoencoderTask(config)
  tx = optim.make_optimizer(
      config.optim, 10, functools.partial(optim.label_params, groups=task.param_groups)
  )
  state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(jax.random.key(0))
  state = jax.jit(functools.partial(loop.reset_params, task=task))(
      state, task.warm_start(state.params)
  )
  stage1 = checkpoint.restore_params(str(svae_dir), state.params, key="ema_params")
  jax.tree.map(np.testing.assert_array_equal, state.params["sem_enc"], stage1["sem_enc"])
  jax.tree.map(np.testing.assert_array_equal, state.frozen["encoder"], stage1["encoder"])

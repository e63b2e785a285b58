"""Crash safety: a process killed (SIGKILL) in the middle of an async checkpoint save.

The previous checkpoint must be what `latest_step()` and a resume see; the partial step
directory is ignored and removed when the checkpoint directory is opened again.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp

from psvae_jax import checkpoint

from conftest import ROOT  # pylint: disable=g-bad-import-order

# Restores stage 1's step 6, starts an async save of it as step 7, and kills itself with
# SIGKILL once Orbax's temporary directory for step 7 exists but before it is finalized.
_KILL_DURING_SAVE = textwrap.dedent("""
    import functools, os, signal, sys, time
    import jax
    from configs import svae as svae_config
    from psvae_jax import checkpoint
    from psvae_jax.train import loop, optim
    from psvae_jax.train.tasks import autoencoder
    config = svae_config.get_config("tiny")
    config.model.encoder.num_layers = 1
    config.model.pixel_decoder.num_layers = 1
    task = autoencoder.AutoencoderTask(config)
    tx = optim.make_optimizer(config.optim, 10, functools.partial(
        optim.label_params, groups=task.param_groups))
    abstract = jax.eval_shape(functools.partial(loop.create_train_state, task=task, tx=tx),
                              jax.random.key(0))
    ckpt = checkpoint.Checkpointer(sys.argv[1], async_save=True)
    state, data = ckpt.restore(6, abstract)
    ckpt.save(7, state, data_state=data, config={})
    while True:  # the background thread is writing step 7
      if any(ocp_tmp in p for p in os.listdir(sys.argv[1]) \
for ocp_tmp in ("7.orbax-checkpoint-tmp",)):
        break
      time.sleep(0.0005)
    print("KILLING", os.listdir(sys.argv[1]), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_kill9_during_async_save_keeps_previous(svae_dir, tmp_path):
  ckdir = tmp_path / "checkpoints"
  shutil.copytree(svae_dir / "checkpoints", ckdir)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  r = subprocess.run(
      [sys.executable, "-c", _KILL_DURING_SAVE, str(ckdir)],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == -signal.SIGKILL, r.stdout[-2000:] + r.stderr[-3000:]
  assert "KILLING" in r.stdout
  partial = [p for p in os.listdir(ckdir) if ocp.step.is_tmp_checkpoint(ckdir / p)]
  assert partial and not (ckdir / "7").exists(), os.listdir(ckdir)  # a real partial save

  ckpt = checkpoint.Checkpointer(str(ckdir))  # what a resumed run opens
  assert ckpt.latest_step() == 6
  ckpt.wait()
  assert not ckpt.partial_steps(), os.listdir(ckdir)  # cleaned, never loaded
  meta = ckpt.manager.item_metadata(6)["state"]
  meta = getattr(meta, "tree", meta)
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta)
  restored = ocp.PyTreeCheckpointer().restore(
      str(ckdir / "6" / "state"),
      restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target),
  )
  assert int(restored["step"]) == 6
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored["params"]))
  ckpt.close()

"""Process start-up: hide GPUs from TensorFlow, JAX config, optional multi-host init.

Call `initialize()` first thing in every entry point, before any other JAX call.
"""

from __future__ import annotations

import os

from absl import logging


def _cluster_detected() -> bool:
  env = os.environ
  return bool(env.get("JAX_COORDINATOR_ADDRESS") or env.get("SLURM_JOB_ID") and
              int(env.get("SLURM_NTASKS", "1")) > 1 or env.get("TPU_WORKER_HOSTNAMES")
              and "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def initialize(distributed: str = "auto") -> None:
  """Sets JAX options and, for multi-process runs, calls jax.distributed.initialize()."""
  import jax  # pylint: disable=g-import-not-at-top
  if distributed == "on" or (distributed == "auto" and _cluster_detected()):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize()
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
  jax.config.update("jax_threefry_partitionable", True)
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
  hide_gpus_from_tf()


def hide_gpus_from_tf() -> None:
  """TensorFlow is imported by CLU's writers; it must not reserve accelerator memory."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
  except Exception:  # pylint: disable=broad-except
    pass

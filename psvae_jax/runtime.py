"""Process start-up: hide GPUs from TensorFlow, JAX config, optional multi-host init.

Call `initialize()` first thing in every entry point, before any other JAX call.

Multi-process runs (TPU pod slices, multi-node GPUs, `launch/cpu_multiprocess.sh`) call
`jax.distributed.initialize()`. Its parameters come from, in order: explicit arguments
(main's flags), the environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID`), then JAX's cluster auto-detection (Cloud TPU, SLURM, Open MPI, k8s).
A process that dies stops sending heartbeats; after `heartbeat_timeout_s` the coordination
service aborts every other process with "another task died" instead of letting them hang
in a collective.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

from absl import logging


def _cluster_detected() -> bool:
  env = os.environ
  return bool(
      env.get("JAX_COORDINATOR_ADDRESS")
      or env.get("SLURM_JOB_ID")
      and int(env.get("SLURM_NTASKS", "1")) > 1
      or env.get("TPU_WORKER_HOSTNAMES")
      and "," in env.get("TPU_WORKER_HOSTNAMES", "")
  )


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "")
  return int(value) if value.strip() else None


def initialize(
    distributed: str = "auto",
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout_s: int | None = None,
    initialization_timeout_s: int | None = None,
) -> None:
  """Sets JAX options and, for multi-process runs, calls jax.distributed.initialize().

  Args:
    distributed: "on" always initializes, "off" never, "auto" when a cluster or a
      coordinator address is detected.
    coordinator_address: "host:port" of process 0 (default $JAX_COORDINATOR_ADDRESS).
    num_processes: process count (default $JAX_NUM_PROCESSES or auto-detected).
    process_id: this process (default $JAX_PROCESS_ID or auto-detected).
    heartbeat_timeout_s: seconds without heartbeats after which a process counts as dead
      and the others abort (default $PSVAE_HEARTBEAT_TIMEOUT_S, else JAX's 100).
    initialization_timeout_s: seconds to wait for all processes to connect (default
      $PSVAE_INIT_TIMEOUT_S, else JAX's 300).
  """
  import jax  # pylint: disable=g-import-not-at-top

  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if distributed == "on" or (
      distributed == "auto" and (coordinator_address or _cluster_detected())
  ):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    for key, value, env in (
        ("heartbeat_timeout_seconds", heartbeat_timeout_s, "PSVAE_HEARTBEAT_TIMEOUT_S"),
        ("initialization_timeout", initialization_timeout_s, "PSVAE_INIT_TIMEOUT_S"),
    ):
      value = value if value is not None else _env_int(env)
      if value is not None:
        kwargs[key] = int(value)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES"),
        process_id=process_id if process_id is not None else _env_int("JAX_PROCESS_ID"),
        **kwargs,
    )
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices (%s).",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        kwargs or "default timeouts",
    )
  jax.config.update("jax_threefry_partitionable", True)
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
  hide_gpus_from_tf()


def preemption_service_active() -> bool:
  """True when jax.distributed runs a preemption sync manager (it handles SIGTERM)."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top

  return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


def no_grad_compiler_options() -> dict[str, str]:
  """XLA options of a program without gradients on this process's backend: on XLA:CPU, each dot
  its own YNNPACK call (psvae_jax.CPU_NO_GRAD_OPTIONS; the package docstring has the figures),
  unless the environment set that flag itself or turned the package's defaults off; {} on GPU
  and TPU."""
  import jax  # pylint: disable=g-import-not-at-top

  import psvae_jax  # pylint: disable=g-import-not-at-top

  if jax.default_backend() != "cpu":
    return {}
  return {k: v for k, v in psvae_jax.CPU_NO_GRAD_OPTIONS.items() if k in psvae_jax.CPU_FLAGS_ADDED}


class _NoGradJit:
  """jax.jit whose compiler options are chosen at the first call or lower (not at import: the
  backend is not known then). A descriptor, so it decorates methods as jax.jit does."""

  def __init__(self, fun: Callable[..., Any], jit_kwargs: dict[str, Any]):
    functools.update_wrapper(self, fun)
    self._fun, self._kwargs, self._jitted = fun, jit_kwargs, None

  def jitted(self):
    if self._jitted is None:
      options = no_grad_compiler_options()
      extra = {"compiler_options": options} if options else {}
      self._jitted = __import__("jax").jit(self._fun, **self._kwargs, **extra)
    return self._jitted

  def __call__(self, *args, **kwargs):
    return self.jitted()(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self.jitted().lower(*args, **kwargs)

  def __get__(self, obj, objtype=None):
    if obj is None:
      return self
    return _BoundNoGradJit(self, obj)


class _BoundNoGradJit:

  def __init__(self, fn: _NoGradJit, obj: Any):
    self._fn, self._obj = fn, obj

  def __call__(self, *args, **kwargs):
    return self._fn(self._obj, *args, **kwargs)

  def lower(self, *args, **kwargs):
    return self._fn.lower(self._obj, *args, **kwargs)


def no_grad_jit(fun: Callable[..., Any] | None = None, **jit_kwargs):
  """`jax.jit` for a program without gradients (sampling, decoding, evaluation): on XLA:CPU it
  compiles with `no_grad_compiler_options()`; elsewhere it is jax.jit. Programs whose outputs a
  run trains on (a latent cache's encoder, latent statistics) and every train step use plain
  jax.jit, so training numerics do not depend on this setting. Usable as `no_grad_jit(f, **kw)`,
  `@no_grad_jit` and `@functools.partial(no_grad_jit, static_argnums=0)`."""
  if fun is None:
    return functools.partial(no_grad_jit, **jit_kwargs)
  return _NoGradJit(fun, jit_kwargs)


def hide_gpus_from_tf() -> None:
  """TensorFlow is imported by CLU's writers; it must not reserve accelerator memory."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.config.set_visible_devices([], "GPU")
  except Exception:  # pylint: disable=broad-except
    pass


class CompileCounter:
  """Counts XLA backend compiles from its creation on (jax.monitoring events).

  Used by the tests and benchmarks that check "compiles once": e.g. `first = c.count` after a
  warm-up call, then `c.count == first` after calls with other traced values.
  """

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top

    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      self.count += 1

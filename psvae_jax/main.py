"""Trains one stage: `python -m psvae_jax.main --config=configs/<stage>.py[:variant] --workdir=DIR`.

Re-running the same command on the same workdir resumes from the latest checkpoint.
Unknown config keys (`--config.optim.lrr=1`) fail at flag parsing, before any compute; a
config that cannot do what it says (a paper-size run without its weight files) exits with
one line naming the flag, before the workdir is created (psvae_jax/train/preflight.py).
"""

import sys  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from psvae_jax import cli

from psvae_jax.train import preflight  # noqa: E402  (no JAX: checks before anything starts)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "jax.distributed.initialize(): 'on' always, 'off' never, 'auto' when a cluster "
    "(TPU pod, SLURM, or a coordinator address) is detected.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (default $JAX_COORDINATOR_ADDRESS)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Process count (default $JAX_NUM_PROCESSES or detected)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process (default $JAX_PROCESS_ID or detected)."
)
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s",
    None,
    "Seconds of missed heartbeats before the other processes "
    "abort (a dead worker); default $PSVAE_HEARTBEAT_TIMEOUT_S or JAX's 100.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cli.quiet_libraries()  # Orbax / CLU INFO lines only with -v 1
  try:
    preflight.check(_CONFIG.value)
  except preflight.ConfigError as e:
    sys.exit(f"error: {e}")
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top

  runtime.initialize(
      _DISTRIBUTED.value,
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
      heartbeat_timeout_s=_HEARTBEAT.value,
  )
  from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top
  # The demo's shapes world: data.source="shapes", its adherence checker, "proxy" features.
  from psvae_jax import shapes_plugin  # pylint: disable=g-import-not-at-top

  shapes_plugin.register()
  try:
    result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except preflight.ConfigError as e:  # found once the data or the stage-1 run are opened
    sys.exit(f"error: {e}")
  logging.info("Done: %s", result)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("main"))

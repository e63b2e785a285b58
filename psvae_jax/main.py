"""Trains one stage: `python -m psvae_jax.main --config=configs/<stage>.py[:variant] --workdir=DIR`.

Re-running the same command on the same workdir resumes from the latest checkpoint.
Unknown config keys (`--config.optim.lrr=1`) fail at flag parsing, before any compute.
"""



from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed.initialize(): 'on' always, 'off' never, 'auto' when a cluster "
    "(TPU pod, SLURM, or JAX_COORDINATOR_ADDRESS) is detected.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.initialize(_DISTRIBUTED.value)
  from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top
  result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("Done: %s", result)


if __name__ == "__main__":
  app.run(main)

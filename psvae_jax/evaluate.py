"""CLI: FID / rFID / PSNR / SSIM / LPIPS / adherence of a trained workdir, written with CLU writers.

  python -m psvae_jax.evaluate --workdir=runs/demo/dit [--config=configs/eval.py:demo]
      [--config.proxy_weights=runs/demo/fid_proxy.safetensors] [--config.batch_size=32]

A shell over psvae_jax/evals/runner.py, which says what a workdir gets evaluated with and
where the figures go (TensorBoard `eval/<name>/<key>`, DIR/metrics.json).
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir (dit, psvae or svae).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/eval.py:demo", "Eval config.", lock_config=True
)


def main(argv):
  del argv
  # Imported after flag parsing, as in psvae_jax/main.py: a flag error costs no JAX start-up.
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top

  runtime.initialize("auto")
  from psvae_jax.evals import runner  # pylint: disable=g-import-not-at-top
  # The demo's shapes world: its data source, the adherence checker, the "proxy" features.
  from psvae_jax.shapes import plugin as shapes_plugin  # pylint: disable=g-import-not-at-top

  shapes_plugin.register()
  results = runner.evaluate(_WORKDIR.value, _CONFIG.value)
  print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)

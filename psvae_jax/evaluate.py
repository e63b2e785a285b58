"""CLI: FID / rFID / PSNR / SSIM / LPIPS / adherence of a trained workdir, written with CLU writers.

  python -m psvae_jax.evaluate --workdir=runs/demo/dit     (the config chosen from the workdir)
  python -m psvae_jax.evaluate --workdir=runs/demo/dit --config=configs/eval.py:demo \
      [--config.proxy_weights=runs/demo/fid_proxy.safetensors] [--config.batch_size=32]

Without --config the variant follows the workdir: `demo` for the shapes demo, `classes` for a
class-conditioned DiT, else `inception`; name it (--config=configs/eval.py:VARIANT) to override
its fields.
  python -m psvae_jax.evaluate --workdir=runs/fmnist/dit --config=configs/eval.py:classes \
      --config.classifier_weights=runs/fmnist/classifier.safetensors [--data=folder:path=DIR]

--data=KIND:ARGS (psvae_jax/data/specs.py) evaluates on another held-out set (its eval split,
all of it) instead of the workdir's own data. The held-out images every evaluator needs are read
before anything is generated: too few is one line and exit status 1. Each figure comes with the
number of images it used (`<name>/num_samples`, `num_reference`, `num_images`).

A shell over psvae_jax/evals/runner.py, which says what a workdir gets evaluated with and
where the figures go (TensorBoard `eval/<name>/<key>`, DIR/metrics.json).
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
from ml_collections import config_flags

from psvae_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir (dit, psvae or svae).")
_DATA = flags.DEFINE_string(
    "data", "", "Held-out data KIND:ARGS (default: the workdir's own data config)."
)
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Eval config (default: configs/eval.py:demo for the shapes demo, :classes for a class "
    "model, else :inception).",
    lock_config=True,
)


def main(argv):
  del argv
  # Imported after flag parsing, as in psvae_jax/main.py: a flag error costs no JAX start-up.
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top

  runtime.initialize("auto")
  from psvae_jax.evals import runner  # pylint: disable=g-import-not-at-top
  # The demo's shapes world: its data source, the adherence checker, the "proxy" features.
  from psvae_jax import shapes_plugin  # pylint: disable=g-import-not-at-top

  shapes_plugin.register()
  config = _CONFIG.value
  try:
    if config is None:
      from configs import eval as eval_config  # pylint: disable=g-import-not-at-top

      variant = runner.default_variant(_WORKDIR.value)
      print(f"evaluate: --config=configs/eval.py:{variant} (from the workdir)", flush=True)
      config = eval_config.get_config(variant)
    results = runner.evaluate(
        _WORKDIR.value,
        config,
        _DATA.value,
        progress=lambda line: print(f"evaluate: {line}", flush=True),
    )
  except (runner.EvalInputError, OSError) as e:
    raise SystemExit(f"evaluate: error: {e}") from None
  print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  cli.quiet_by_default()  # -v / --verbosity=0 for the library's INFO logs
  app.run(main, flags_parser=cli.flags_parser("evaluate"))

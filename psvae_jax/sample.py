"""Generates images from a trained stage-3 workdir (DESIGN.md section 3, sampling contract).

  python -m psvae_jax.sample --workdir=runs/demo/dit \
      --prompt="a red circle on the left and a blue square on the right" \
      --num_images=4 --steps=50 --cfg=7.5 --seed=0 --out=grid.png
  ... --out_dir=DIR   writes one PNG per image instead of a grid.

Same seed, same images. The sampler compiles once per batch size; steps, cfg, eta, seed
and prompt do not recompile.
"""

import os

from absl import app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Stage-3 (dit) workdir.")
_PROMPT = flags.DEFINE_string("prompt", None, "Text prompt (text-conditioned models).")
_LABEL = flags.DEFINE_integer("label", None, "Class label (class-conditioned models).")
_NUM = flags.DEFINE_integer("num_images", 4, "Images to generate.")
_STEPS = flags.DEFINE_integer("steps", 50, "Sampler steps.")
_CFG = flags.DEFINE_float("cfg", 7.5, "Classifier-free guidance scale.")
_ETA = flags.DEFINE_float("eta", 0.0, "DDIM eta (0 = deterministic).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUT = flags.DEFINE_string("out", None, "Output grid PNG.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Write one PNG per image here instead.")


def main(argv):
  del argv
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required.")
  if not (_OUT.value or _OUT_DIR.value):
    raise app.UsageError("Give --out=GRID.png or --out_dir=DIR.")
  if _PROMPT.value is None and _LABEL.value is None:
    raise app.UsageError("Give --prompt (text models) or --label (class models).")
  if _NUM.value < 1:
    raise app.UsageError("--num_images must be >= 1.")
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.initialize("auto")
  from psvae_jax import api  # pylint: disable=g-import-not-at-top
  from psvae_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  pipe = api.load(_WORKDIR.value)
  n = _NUM.value
  images = pipe.generate(prompts=None if _PROMPT.value is None else [_PROMPT.value] * n,
                         labels=None if _LABEL.value is None else [_LABEL.value] * n,
                         steps=_STEPS.value, cfg=_CFG.value, eta=_ETA.value, seed=_SEED.value)
  if _OUT_DIR.value:
    for i, im in enumerate(images):
      metrics_lib.save_png(os.path.join(_OUT_DIR.value, f"{i:04d}.png"), im)
    logging.info("Wrote %d images to %s", n, _OUT_DIR.value)
  if _OUT.value:
    metrics_lib.save_png(_OUT.value, metrics_lib.grid(images))
    logging.info("Wrote %s", _OUT.value)


if __name__ == "__main__":
  app.run(main)

"""Generates images from a trained stage-3 workdir (DESIGN.md section 3, sampling contract).

  python -m psvae_jax.sample --workdir=runs/demo/dit \
      --prompt="a red circle on the left and a blue square on the right" \
      --num_images=4 --steps=50 --guidance_scale=7.5 --seed=0 --out=grid.png
  ... --out_dir=DIR   writes one PNG per image instead of a grid.
  ... --shift=3       the Euler sampler's timestep shift (flow models; default: the model
                      config's sample.shift), separate from the training shift
  ... --init_image=IMG --strength=0.6         SDEdit: edit IMG towards the prompt
  ... --init_image=IMG --mask=MASK.png        inpaint the white (>= 0.5) part of MASK
      [--dilation=1 --feather=1.0 --fit=crop|pad]
An edited image is written at the input image's size. Bad inputs (missing files, strength
outside [0, 1], a mask without an image, a shift <= 0) exit with a one-line message.

Same seed, same images. The sampler compiles once per batch size; steps, guidance_scale, eta,
shift, seed and prompt do not recompile. `--cfg` is an alias of `--guidance_scale` (its old name).
Defaults: configs/common.py SAMPLE.
"""

import math
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

from configs import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Stage-3 (dit) workdir.")
_PROMPT = flags.DEFINE_string("prompt", None, "Text prompt (text-conditioned models).")
_LABEL = flags.DEFINE_string(
    "label", None, "Class (class-conditioned models): an id (7) or a class name (sneaker)."
)
_NUM = flags.DEFINE_integer("num_images", 4, "Images to generate.")
_STEPS = flags.DEFINE_integer("steps", common.SAMPLE.steps, "Sampler steps.")
_GUIDANCE_SCALE = flags.DEFINE_float(
    "guidance_scale",
    common.SAMPLE.guidance_scale,
    "Classifier-free guidance scale (1 = no guidance).",
)
flags.DEFINE_alias("cfg", "guidance_scale")  # the flag's old name
_ETA = flags.DEFINE_float("eta", common.SAMPLE.eta, "DDIM eta (0 = deterministic).")
_INTERVAL = flags.DEFINE_list(
    "guidance_interval",
    None,
    "lo,hi: apply the guidance scale only at noise levels in [lo, hi] "
    "(1 = pure noise), scale 1 elsewhere; 0,1 = every step. Default: the model config's "
    "sample.guidance_interval.",
)
_SHIFT = flags.DEFINE_float(
    "shift",
    None,
    "Sampling timestep shift s > 0 of the Euler grid "
    "(flow models): t' = s*t / (1 + (s-1)*t). Default: the model config's "
    "sample.shift (its training diffusion.flow_shift if it has none).",
)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUT = flags.DEFINE_string("out", None, "Output grid PNG.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Write one PNG per image here instead.")
_INIT = flags.DEFINE_string("init_image", None, "Edit this image (SDEdit / inpainting).")
_STRENGTH = flags.DEFINE_float(
    "strength", None, "SDEdit strength in [0, 1] (default 0.6 for edits, 1.0 with --mask)."
)
_MASK = flags.DEFINE_string(
    "mask",
    None,
    "Inpainting mask PNG: white (>= 0.5) = regenerate; resized to the image if needed.",
)
_DILATION = flags.DEFINE_integer("dilation", 1, "Latent-grid dilation of the mask (cells).")
_RESAMPLE = flags.DEFINE_integer(
    "resample",
    0,
    "Inpainting: RePaint resampling jumps per step "
    "(0 = none; N costs N + 1 model calls per step).",
)
_FEATHER = flags.DEFINE_float("feather", 1.0, "Composite edge softness (Gaussian sigma, px).")
_FIT = flags.DEFINE_enum(
    "fit",
    "crop",
    ["crop", "pad"],
    "How a non-square / other-size input is fitted to the model: center crop or pad.",
)


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
  if _SHIFT.value is not None and not (math.isfinite(_SHIFT.value) and _SHIFT.value > 0):
    raise app.UsageError(f"--shift must be a number > 0, got {_SHIFT.value:g}.")
  from psvae_jax import editing  # pylint: disable=g-import-not-at-top

  init = mask = None
  try:
    if _MASK.value and not _INIT.value:
      raise editing.EditInputError("--mask needs --init_image (the image to inpaint).")
    if _STRENGTH.value is not None and not _INIT.value:
      raise editing.EditInputError("--strength needs --init_image (the image to edit).")
    if _INIT.value:
      default = 1.0 if _MASK.value else 0.6
      strength = editing.check_strength(default if _STRENGTH.value is None else _STRENGTH.value)
      init = editing.load_image(_INIT.value)
      mask = editing.load_mask(_MASK.value) if _MASK.value else None
      if _PROMPT.value is None:
        raise editing.EditInputError("Editing needs --prompt (a text-conditional model).")
  except editing.EditInputError as e:
    raise app.UsageError(str(e)) from None
  interval = None
  if _INTERVAL.value is not None:
    try:
      interval = tuple(float(v) for v in _INTERVAL.value)
    except ValueError:
      interval = ()
    if len(interval) != 2 or not 0.0 <= interval[0] <= interval[1] <= 1.0:
      raise app.UsageError(
          f"--guidance_interval wants lo,hi with 0 <= lo <= hi <= 1, got "
          f"{','.join(_INTERVAL.value)}."
      )
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top

  runtime.initialize("auto")
  from psvae_jax import api  # pylint: disable=g-import-not-at-top
  from psvae_jax import writers  # pylint: disable=g-import-not-at-top

  pipe = api.load(_WORKDIR.value)
  n = _NUM.value
  label = None
  if _LABEL.value is not None:
    try:
      label = pipe.label_id(_LABEL.value)
    except ValueError as e:
      raise app.UsageError(f"--label: {e}") from None
  if init is not None:
    kw = dict(
        steps=_STEPS.value,
        guidance_scale=_GUIDANCE_SCALE.value,
        eta=_ETA.value,
        seed=_SEED.value,
        fit=_FIT.value,
        guidance_interval=interval,
        shift=_SHIFT.value,
    )
    try:
      if mask is None:
        images = pipe.edit([init] * n, [_PROMPT.value] * n, strength=strength, **kw)
      else:
        images = pipe.inpaint(
            [init] * n,
            [mask] * n,
            [_PROMPT.value] * n,
            strength=strength,
            dilation=_DILATION.value,
            feather=_FEATHER.value,
            resample=_RESAMPLE.value,
            **kw,
        )
    except editing.EditInputError as e:
      raise app.UsageError(str(e)) from None
    images = np.stack(images)
  else:
    images = pipe.generate(
        prompts=None if _PROMPT.value is None else [_PROMPT.value] * n,
        labels=None if label is None else [label] * n,
        steps=_STEPS.value,
        guidance_scale=_GUIDANCE_SCALE.value,
        eta=_ETA.value,
        seed=_SEED.value,
        guidance_interval=interval,
        shift=_SHIFT.value,
    )
  if _OUT_DIR.value:
    for i, im in enumerate(images):
      writers.save_png(os.path.join(_OUT_DIR.value, f"{i:04d}.png"), im)
    logging.info("Wrote %d images to %s", n, _OUT_DIR.value)
  if _OUT.value:
    writers.save_png(_OUT.value, writers.grid(images))
    logging.info("Wrote %s", _OUT.value)


if __name__ == "__main__":
  app.run(main)

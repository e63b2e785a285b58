"""Generates images from a trained stage-3 workdir (DESIGN.md section 3, sampling contract).

  python -m psvae_jax.sample --workdir=runs/demo/dit \
      --prompt="a red circle on the left and a blue square on the right" \
      --num_images=4 --steps=50 --seed=0 --out=grid.png
  ... --out_dir=DIR   writes one PNG per image instead of a grid.
  ... --shift=3       the Euler sampler's timestep shift (flow models; default: the model
                      config's sample.shift), separate from the training shift
  ... --init_image=IMG --strength=0.6         SDEdit: edit IMG towards the prompt
  ... --init_image=IMG --mask=MASK.png        inpaint the white (>= 0.5) part of MASK
      [--dilation=1 --feather=1.0 --fit=crop|pad]
  ... --init_image=IMG --instruction="make the circle blue" [--image_guidance_scale=1.5]
                      instruction editing (a model trained with model.source_condition,
                      configs/dit.py:tiny_instruct); no --prompt
An edited image is written at the input image's size. Bad inputs (missing files, strength
outside [0, 1], a mask without an image, a shift <= 0) exit with a one-line message.

Same seed, same images. The sampler compiles once per batch size; steps, guidance_scale, eta,
shift, seed and prompt do not recompile. `--cfg` is an alias of `--guidance_scale` (its old name).
An unset sampling flag is the model's own: its config's sample settings (what was chosen for that
model; psvae_jax/diffusion/settings.py SampleSettings has the defaults), checked with the other
flags before JAX loads; the settings used are written beside the images.
"""

import dataclasses
import json
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from psvae_jax import cli
from psvae_jax import workdir as workdir_lib

from configs import common
from psvae_jax.data import labels
from psvae_jax.diffusion import settings as settings_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Stage-3 (dit) workdir.")
_PROMPT = flags.DEFINE_string("prompt", None, "Text prompt (text-conditioned models).")
_LABEL = flags.DEFINE_string(
    "label", None, "Class (class-conditioned models): an id (7) or a class name (sneaker)."
)
_NUM = flags.DEFINE_integer("num_images", 4, "Images to generate.")
_STEPS = flags.DEFINE_integer(
    "steps", None, "Sampler steps. Default: the model config's sample.steps (50)."
)
_GUIDANCE_SCALE = flags.DEFINE_float(
    "guidance_scale",
    None,
    "Classifier-free guidance scale (1 = no guidance). Default: the model config's "
    "sample.guidance_scale.",
)
flags.DEFINE_alias("cfg", "guidance_scale")  # the flag's old name
_ETA = flags.DEFINE_float(
    "eta", None, "DDIM eta (0 = deterministic). Default: the model config's sample.eta (0)."
)
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
_AUTOENCODER = flags.DEFINE_string(
    "autoencoder", None, "The PS-VAE workdir (default: the one the DiT trained with)."
)
_TEXT_ENCODER = flags.DEFINE_string(
    "text_encoder", None, "The text encoder directory (default: the one the DiT trained with)."
)
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
_INSTRUCTION = flags.DEFINE_string(
    "instruction",
    None,
    "Instruction editing of --init_image (models trained with model.source_condition), e.g. "
    '"make the circle blue".',
)
_IMAGE_GUIDANCE = flags.DEFINE_float(
    "image_guidance_scale",
    None,
    "--instruction: the source image's guidance scale s_I (higher keeps more of the source). "
    "Default: the model config's sample.image_guidance_scale.",
)
_FIT = flags.DEFINE_enum(
    "fit",
    "crop",
    ["crop", "pad"],
    "How a non-square / other-size input is fitted to the model: center crop or pad.",
)


class _Usage(Exception):
  """A bad flag or input: one line, exit status 1, before any model is loaded."""


def _run_config(workdir: str) -> dict:
  """The workdir's config.json as a dict (no JAX), checked to be a stage-3 run."""
  if not os.path.isdir(workdir):
    raise _Usage(f"--workdir={workdir} does not exist.")
  try:
    config = workdir_lib.read_config_dict(workdir)
  except (OSError, ValueError) as e:
    path = os.path.join(workdir, workdir_lib.CONFIG)
    raise _Usage(f"--workdir={workdir} is not a training workdir ({path}: {e}).") from None
  if config.get("stage") != "dit":
    raise _Usage(
        f"--workdir={workdir} holds a {config.get('stage')!r} run; sampling needs a stage-3 "
        "(dit) workdir."
    )
  return config


def _check_flags() -> tuple[dict, int | None, settings_lib.SampleSettings]:
  """Every check that needs no model: (the run's config, the class id or None, the sampling
  settings: the flags over the model's own)."""
  if not _WORKDIR.value:
    raise _Usage("--workdir is required.")
  if not (_OUT.value or _OUT_DIR.value):
    raise _Usage("give --out=GRID.png or --out_dir=DIR.")
  if _OUT.value:
    ext = os.path.splitext(_OUT.value)[1].lower()
    if ext not in Image.registered_extensions():
      raise _Usage(
          f"--out={_OUT.value}: no image format for {ext or 'no extension'!r} (.png, .jpg)."
      )
  if _PROMPT.value is None and _LABEL.value is None and _INSTRUCTION.value is None:
    raise _Usage(
        "give --prompt (text models), --label (class models) or --init_image with --instruction "
        "(instruction-editing models)."
    )
  if _NUM.value < 1:
    raise _Usage(f"--num_images={_NUM.value} must be >= 1.")
  overrides = dict(
      steps=_STEPS.value,
      guidance_scale=_GUIDANCE_SCALE.value,
      eta=_ETA.value,
      guidance_interval=_interval(),
      shift=_SHIFT.value,
      image_guidance_scale=_IMAGE_GUIDANCE.value,
      seed=_SEED.value,
      resample=_RESAMPLE.value,
  )
  try:
    settings_lib.SampleSettings.resolve(None, **overrides)  # the flags alone: name the bad one
  except ValueError as e:
    raise _Usage(f"--{e}") from None
  config = _run_config(_WORKDIR.value)
  _check_instruction(config)
  settings = settings_lib.SampleSettings.resolve(config, **overrides)
  cond = config.get("model", {}).get("cond_type", "text")
  label = None
  if cond == "class":
    if _PROMPT.value is not None:
      raise _Usage("this is a class-conditioned model: give --label (an id or a class name).")
    names = workdir_lib.class_names(_WORKDIR.value)
    num_classes = int(config.get("model", {}).get("num_classes", 0)) or len(names)
    try:
      label = labels.resolve_label(_LABEL.value, names)
    except ValueError as e:
      raise _Usage(f"--label: {e}") from None
    if num_classes and not 0 <= label < num_classes:
      raise _Usage(f"--label={_LABEL.value}: class ids are 0..{num_classes - 1}.")
  elif _LABEL.value is not None:
    raise _Usage("--label is for class-conditioned models; this one takes --prompt.")
  return config, label, settings


def _check_instruction(config: dict) -> None:
  """--instruction against the model: only for models trained on pairs, which need it."""
  source_model = common.edits_by_instruction(config)
  if _INSTRUCTION.value is not None:
    if not source_model:
      raise _Usage(
          "--instruction: this model was not trained for instruction editing "
          "(model.source_condition is off); edit with --init_image and --prompt (SDEdit)."
      )
    if not _INIT.value:
      raise _Usage("--instruction needs --init_image (the image to edit).")
    for name, value in (("prompt", _PROMPT.value), ("mask", _MASK.value)):
      if value is not None:
        raise _Usage(f"--instruction edits the whole image from --init_image: drop --{name}.")
    if _STRENGTH.value is not None:
      raise _Usage("--strength is SDEdit's; instruction editing starts from noise: drop it.")
  elif source_model:
    raise _Usage('this model edits by instruction: give --init_image=IMG and --instruction="...".')
  elif _IMAGE_GUIDANCE.value is not None:
    raise _Usage("--image_guidance_scale is for --instruction (instruction-editing models).")
  if _RESAMPLE.value and not _MASK.value:
    raise _Usage("--resample (RePaint jumps) is for inpainting: give --mask, or drop it.")


def main(argv):
  del argv
  try:
    _, label, settings = _check_flags()
    init, mask, strength = _edit_inputs()
  except _Usage as e:
    sys.exit(f"sample: error: {e} (--help lists the flags)")
  _generate(label, init, mask, strength, settings)


def _edit_inputs():
  """(init image or None, mask or None, strength) of an edit / inpaint; _Usage when bad."""
  from psvae_jax import editing  # pylint: disable=g-import-not-at-top

  init = mask = strength = None
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
      if _PROMPT.value is None and _INSTRUCTION.value is None:
        raise editing.EditInputError("Editing needs --prompt (a text-conditional model).")
  except editing.EditInputError as e:
    raise _Usage(str(e)) from None
  return init, mask, strength


def _interval():
  if _INTERVAL.value is None:
    return None
  try:
    interval = tuple(float(v) for v in _INTERVAL.value)
  except ValueError:
    interval = ()
  if len(interval) != 2 or not 0.0 <= interval[0] <= interval[1] <= 1.0:
    raise _Usage(
        f"--guidance_interval wants lo,hi with 0 <= lo <= hi <= 1, got {','.join(_INTERVAL.value)}."
    )
  return interval


def _settings(label, strength, settings) -> dict:
  """What made the images (written beside them): the flags, and the sampling settings used."""
  out = {
      "workdir": os.path.abspath(_WORKDIR.value),
      "prompt": _PROMPT.value,
      "label": _LABEL.value,
      "class_id": label,
      "num_images": _NUM.value,
      **dataclasses.asdict(settings),
      "init_image": _INIT.value,
      "mask": _MASK.value,
      "strength": None if _INSTRUCTION.value is not None else strength,
      "instruction": _INSTRUCTION.value,
      "order": "row-major, image i from seed and position i",
  }
  if _INSTRUCTION.value is None:
    del out["image_guidance_scale"]  # not used: only instruction-editing models guide on images
  return out


def _generate(label, init, mask, strength, settings):
  from psvae_jax import editing  # pylint: disable=g-import-not-at-top
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top

  runtime.initialize("auto")
  from psvae_jax import api  # pylint: disable=g-import-not-at-top
  from psvae_jax import writers  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  pipe = api.load(_WORKDIR.value, autoencoder=_AUTOENCODER.value, text_encoder=_TEXT_ENCODER.value)
  print(f"sample: loaded {_WORKDIR.value} in {time.time() - t0:.1f} s", flush=True)
  t0 = time.time()
  n = _NUM.value
  if init is not None:
    try:
      if _INSTRUCTION.value is not None:
        images = pipe.instruct([init] * n, [_INSTRUCTION.value] * n, settings, fit=_FIT.value)
      elif mask is None:
        images = pipe.edit([init] * n, [_PROMPT.value] * n, strength, settings, fit=_FIT.value)
      else:
        images = pipe.inpaint(
            [init] * n,
            [mask] * n,
            [_PROMPT.value] * n,
            settings,
            strength=strength,
            dilation=_DILATION.value,
            feather=_FEATHER.value,
            fit=_FIT.value,
        )
    except editing.EditInputError as e:
      sys.exit(f"sample: error: {e}")
    images = np.stack(images)
  else:
    images = pipe.generate(
        None if _PROMPT.value is None else [_PROMPT.value] * n,
        settings,
        labels=None if label is None else [label] * n,
    )
  print(f"sample: {n} images in {time.time() - t0:.1f} s (compile included)", flush=True)
  for w in pipe.warnings:  # unknown words, truncated or empty prompts
    print(f"sample: warning: {w}", file=sys.stderr)
  if _OUT_DIR.value:
    for i, im in enumerate(images):
      writers.save_png(os.path.join(_OUT_DIR.value, f"{i:04d}.png"), im)
    print(f"sample: wrote {n} images to {_OUT_DIR.value}")
  if _OUT.value:
    writers.save_png(_OUT.value, writers.grid(images))
    print(f"sample: wrote {_OUT.value}")
  for path in (_OUT.value, _OUT_DIR.value and os.path.join(_OUT_DIR.value, "settings")):
    if path:  # what made the images, beside them: GRID.png.json, DIR/settings.json
      with open(path + ".json", "w", encoding="utf-8") as f:
        json.dump(_settings(label, strength, settings), f, indent=2)


if __name__ == "__main__":
  cli.quiet_by_default()  # -v / --verbosity=0 for the library's INFO logs
  app.run(main, flags_parser=cli.flags_parser("sample"))

"""A stage-3 run's diffusion settings, JAX-free: the sampling settings (`SampleSettings`: their
defaults, "unset = the model's own", the checks the sample CLI runs before JAX loads), the
dimension-dependent training shift, and the names a stored config used before a rename.

Unset means the model's own everywhere (`SampleSettings.resolve(config, **overrides)`): an
override that is None takes the model config's `sample` value, a field the config lacks takes the
default below. The Euler grid's sampling shift `sample.shift` is a setting of its own, apart from
the training shift `diffusion.flow_shift`; a workdir whose config predates it samples with its
training shift.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from absl import logging

# The most sampler steps (the sampler's scan length: any steps up to it reuse one compile).
MAX_STEPS = 1000
SHIFT_BASE_DIM = (
    4096  # the reference dimension n of `dimension_shift`: 64x64, or 32x32x4 SD latents
)

# Stored configs (a workdir's config.json) written before the rename: old sample key -> new.
LEGACY_SAMPLE_KEYS = {"cfg": "guidance_scale", "cfg_rescale": "guidance_rescale"}


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """How to sample, one object from the API and the CLI down to the scan sampler.

  Every field is a traced value of the sampler (generation.Generator compiles once per batch size
  and resolution; `samplers.traced` turns the fields into arrays, a pytree): any steps, guidance,
  shift, interval, eta, seed or resampling reuse the compile.

  Attributes:
    steps: sampler steps (DDIM or Euler), 1..MAX_STEPS.
    guidance_scale: classifier-free guidance scale s (1 = no guidance).
    eta: DDIM eta (0 = deterministic).
    guidance_rescale: guidance rescale phi (0 = plain classifier-free guidance).
    guidance_interval: (lo, hi) noise levels (t/T or flow t, 1 = pure noise) where guidance_scale
      applies, scale 1 elsewhere ((0, 1): every step).
    shift: the SAMPLING timestep shift of the Euler grid (flow models), > 0; independent of the
      training diffusion.flow_shift.
    image_guidance_scale: s_I of two-condition guidance (instruction editing: models with
      model.source_condition; InstructPix2Pix's 1.5; 1 = none on the source image).
    seed: the noise (per image: fold_in(key(seed), index)) and the sampler's own randomness.
    resample: RePaint resampling jumps per inpainting step (0 = none), 0..100.
  """

  steps: int = 50
  guidance_scale: float = 7.5
  eta: float = 0.0
  guidance_rescale: float = 0.0
  guidance_interval: tuple[float, float] = (0.0, 1.0)
  shift: float = 1.0
  image_guidance_scale: float = 1.5
  seed: int = 0
  resample: int = 0

  # The fields a stage-3 config stores under `sample` (configs/common.sample_config); seed and
  # resample are per call.
  CONFIG_FIELDS = (
      "steps",
      "guidance_scale",
      "eta",
      "guidance_rescale",
      "guidance_interval",
      "shift",
      "image_guidance_scale",
  )

  @classmethod
  def resolve(cls, config: Any = None, **overrides) -> "SampleSettings":
    """The settings a model samples with: the defaults, then the model config's `sample` fields
    (`config`: a stage-3 ConfigDict or a stored config.json dict; legacy names renamed; no
    sample.shift: its training diffusion.flow_shift), then `overrides` that are not None.
    Checked (`validate`); an unknown override is a TypeError naming it."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise TypeError(f"Unknown sample setting(s) {unknown}; known: {cls.field_names()}.")
    values = {}
    if config is not None:
      sample = rename_legacy_sample_keys(_as_dict(config)).get("sample") or {}
      values = {k: sample[k] for k in cls.CONFIG_FIELDS if sample.get(k) is not None}
      if "shift" not in values:  # a workdir from before the sampling shift: its training shift
        diffusion = _as_dict(config).get("diffusion") or {}
        if diffusion.get("flow_shift") is not None:
          values["shift"] = diffusion["flow_shift"]
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values).validate()

  @classmethod
  def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]

  def replace(self, **changes) -> "SampleSettings":
    """A copy with `changes` (None: unchanged), checked."""
    return self.resolve(None, **{**dataclasses.asdict(self), **changes})

  def validate(self) -> "SampleSettings":
    """Self with numbers normalised (ints, floats, a float pair); ValueError, one line naming the
    setting, when one is out of range."""

    def number(name, value, kind):
      try:
        if kind is int and (isinstance(value, bool) or float(value) != int(value)):
          raise ValueError
        out = kind(value)
      except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be {kind.__name__}, got {value!r}.") from None
      if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}.")
      return out

    steps = number("steps", self.steps, int)
    if not 1 <= steps <= MAX_STEPS:
      raise ValueError(f"steps must be in [1, {MAX_STEPS}], got {self.steps}.")
    scale = number("guidance_scale", self.guidance_scale, float)
    if scale < 0:
      raise ValueError(f"guidance_scale must be >= 0 (1 = no guidance), got {self.guidance_scale}.")
    eta = number("eta", self.eta, float)
    if eta < 0:
      raise ValueError(f"eta must be >= 0, got {self.eta}.")
    rescale = number("guidance_rescale", self.guidance_rescale, float)
    if not 0.0 <= rescale <= 1.0:
      raise ValueError(f"guidance_rescale must be in [0, 1], got {self.guidance_rescale}.")
    try:
      lo, hi = (number("guidance_interval", v, float) for v in self.guidance_interval)
    except (TypeError, ValueError):
      lo, hi = 1.0, 0.0
    if not 0.0 <= lo <= hi <= 1.0:
      raise ValueError(
          "guidance_interval must be (lo, hi) with 0 <= lo <= hi <= 1, got "
          f"{self.guidance_interval}."
      )
    shift = check_shift(self.shift)
    image_scale = number("image_guidance_scale", self.image_guidance_scale, float)
    if image_scale < 0:
      raise ValueError(f"image_guidance_scale must be >= 0, got {self.image_guidance_scale}.")
    seed = number("seed", self.seed, int)
    resample = number("resample", self.resample, int)
    if not 0 <= resample <= 100:
      raise ValueError(f"resample must be an integer in [0, 100], got {self.resample}.")
    return SampleSettings(steps, scale, eta, rescale, (lo, hi), shift, image_scale, seed, resample)

  def describe(self, *names: str) -> str:
    """`name=value` pairs of `names` (all fields when none) for logs and grid notes: floats as
    %g, the interval as a tuple of floats."""
    names = names or tuple(self.field_names())
    fmt = lambda v: (
        str(tuple(float(x) for x in v))
        if isinstance(v, tuple)
        else f"{v:g}"
        if isinstance(v, float)
        else str(v)
    )
    return " ".join(f"{n}={fmt(getattr(self, n))}" for n in names)


def _as_dict(config) -> Mapping:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def rename_legacy_sample_keys(raw: dict) -> dict:
  """A stored config dict with its `sample` keys renamed per LEGACY_SAMPLE_KEYS (a new key wins)."""
  sample = raw.get("sample")
  if not isinstance(sample, dict) or not any(k in sample for k in LEGACY_SAMPLE_KEYS):
    return raw
  renamed = {LEGACY_SAMPLE_KEYS.get(k, k): v for k, v in sample.items() if k in LEGACY_SAMPLE_KEYS}
  renamed.update({k: v for k, v in sample.items() if k not in LEGACY_SAMPLE_KEYS})
  return {**raw, "sample": renamed}


def dimension_shift(latent_shape: tuple[int, ...], base_dim: int = SHIFT_BASE_DIM) -> float:
  """The dimension-dependent timestep shift s = √(m / n), m = h·w·C the latent's dimension.

  The "resolution-dependent shifting of timestep schedules" of SD3 (Esser et al. 2024, "Scaling
  Rectified Flow Transformers for High-Resolution Image Synthesis", §5.3.2): a latent with m
  elements at the same noise level keeps more signal than one with n, so t is shifted by
  α = √(m / n) in t' = α·t / (1 + (α − 1)·t) (``shift_time``). RAE (Zheng et al. 2025,
  "Diffusion Transformers with Representation Autoencoders"; bytetriper/RAE src/train.py:
  ``time_dist_shift = math.sqrt(time_dist_shift_dim / time_dist_shift_base)`` with dim =
  prod(latent_size) and base 4096) applies it to representation latents with n = 4096 (a
  64×64 image, or the 32×32×4 latent of a 256² SD-VAE image). E.g. 16×16×96 (PS-VAE) → √6
  ≈ 2.449; 16×16×768 (DINOv2-B, RAE) → √48 ≈ 6.93; 32×32×4 → 1.

  Args:
    latent_shape: the latent's (h, w, C) (any shape: m is the product).
    base_dim: the reference dimension n.

  Returns:
    s as a Python float.
  """
  if base_dim <= 0:
    raise ValueError(f"base_dim must be > 0, got {base_dim}.")
  return math.sqrt(math.prod(int(d) for d in latent_shape) / base_dim)


def resolve_flow_shift(config, latent_shape: tuple[int, ...]) -> float:
  """Sets config.diffusion.flow_shift from the latent's size when flow_shift_base_dim > 0.

  The dimension-dependent training shift √(h·w·C / flow_shift_base_dim) (`dimension_shift`;
  SD3 §5.3.2, RAE). Called at stage-3 start before config.json is written, so the resolved
  number is what the workdir's config records and sampling reads. Returns the training shift in
  use.
  """
  d = config.diffusion
  base = int(d.get("flow_shift_base_dim", 0))
  if base > 0 and d.objective == "flow":
    d.flow_shift = dimension_shift(latent_shape, base)
    logging.info(
        "diffusion.flow_shift = sqrt(%s / %d) = %.4f (dimension-dependent training shift)",
        "x".join(str(v) for v in latent_shape),
        base,
        d.flow_shift,
    )
  return float(d.flow_shift)


def check_shift(shift) -> float:
  """A sampling shift must be a finite number > 0 (ValueError naming it otherwise)."""
  try:
    value = float(shift)
  except (TypeError, ValueError):
    value = float("nan")
  if not (math.isfinite(value) and value > 0):
    raise ValueError(f"shift must be a number > 0, got {shift!r}.")
  return value

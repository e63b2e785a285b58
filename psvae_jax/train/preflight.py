"""Checks a stage config before anything runs: a run that cannot do what it says refuses to start.

`check(config)` runs every check in `CHECKS` and raises `ConfigError` with one line naming the
flag to set. The CLI (psvae_jax/main.py) and `loop.train_and_evaluate` call it before the
workdir is created or anything is compiled, so it must stay cheap: no JAX, no file reads.
To add a check, write `_name(config) -> str | None` (the message, or None) and list it in
`CHECKS`.
"""

from __future__ import annotations

from typing import Callable

from absl import logging
import ml_collections

from configs import common


class ConfigError(ValueError):
  """The config cannot train what it claims; the message names the flag to set."""


def is_paper_size(config: ml_collections.ConfigDict) -> bool:
  """Every autoencoder variant but `tiny` is paper-size (configs/svae.py: `variant`)."""
  return config.get("variant", "tiny") != "tiny"


def _weights_dir_name(config) -> str:
  return "HF_SIGLIP2_DIR" if config.model.encoder.get("kind") == "siglip2" else "HF_DINOV2_DIR"


def _encoder_weights(config) -> str | None:
  """Stage 1 at paper size must not train on a random ViT unless told so."""
  if config.stage != "svae" or not is_paper_size(config) or config.model.encoder.weights:
    return None
  return (
      f"stage 1 ({config.variant}) needs pretrained encoder weights: set "
      f"--config.model.encoder.weights={_weights_dir_name(config)} (or =random, for tests "
      "and benchmarks)"
  )


def _stage2_init(config) -> str | None:
  """Stage 2 at paper size starts from stage 1 (or, explicitly, from an encoder alone)."""
  if config.stage != "psvae" or not is_paper_size(config) or config.init_from:
    return None
  if config.model.encoder.weights:  # an explicit start without stage 1 (a dir, or random)
    return None
  return (
      f"stage 2 ({config.variant}) starts from stage 1: set --config.init_from=STAGE1_WORKDIR "
      f"(or --config.model.encoder.weights={_weights_dir_name(config)}|random to start without "
      "stage 1)"
  )


def _lpips_files(config) -> str | None:
  """An LPIPS loss term needs the VGG16 and LPIPS head files (or "random", tests only)."""
  if config.stage not in ("svae", "psvae") or config.loss.lpips <= 0:
    return None
  lp = config.lpips
  if lp.vgg == "random":  # psvae_jax.builders.RANDOM (not imported: it would pull in JAX)
    return None
  missing = [f"--config.lpips.{k}" for k in ("vgg", "heads") if not lp[k]]
  if not missing:
    return None
  return (
      f"loss.lpips={config.loss.lpips} needs the LPIPS weight files: set "
      f"{' and '.join(missing)} (torchvision's vgg16-397923af.pth, the lpips package's "
      "weights/v0.1/vgg.pth), or --config.loss.lpips=0"
  )


def _adversarial(config) -> str | None:
  """The adversarial loss trains stage 2's pixel decoder with its encoder (as LDM's VAE)."""
  if config.stage not in ("svae", "psvae") or config.loss.get("adv", 0.0) <= 0:
    return None
  if config.stage == "svae":
    return (
        f"--config.loss.adv={config.loss.adv} is a stage-2 option (configs/psvae.py): stage 1's "
        "pixel decoder only judges the S-VAE; set --config.loss.adv=0"
    )
  if config.adv.start_step < -1:
    return (
        f"--config.adv.start_step={config.adv.start_step} must be >= 0 (or -1: "
        "adv.start_fraction of the run)"
    )
  frac = config.adv.get("start_fraction", 0.5)
  if config.adv.start_step == -1 and not 0 <= frac <= 1:
    return f"--config.adv.start_fraction={frac} must be in [0, 1]"
  return None


def _stage3_inputs(config) -> str | None:
  """Stage 3 trains in a PS-VAE's latent, conditioned by a text encoder for text models (a fusion
  generator: by its own Qwen2 blocks, from generator.weights)."""
  if config.stage != "dit":
    return None
  if not config.autoencoder:
    return "stage 3 trains in a PS-VAE's latent: set --config.autoencoder=STAGE2_WORKDIR"
  if common.uses_fusion_generator(config):
    if not config.generator.weights:
      return (
          "a fusion generator starts from a Qwen2 model: set --config.generator.weights=HF_DIR "
          "(e.g. Qwen2.5-0.5B's directory: config.json, model.safetensors, tokenizer files)"
      )
    return None
  if config.model.cond_type == "text" and not config.text_encoder:
    return (
        "a text-conditioned DiT needs --config.text_encoder=HF_DIR (a CLIP text or T5 encoder "
        "directory with its tokenizer)"
    )
  return None


def _intervals(config) -> str | None:
  """log_every / eval_every / ckpt_every: 0 means never; negative values are mistakes."""
  for key in ("log_every", "eval_every", "ckpt_every"):
    if config[key] < 0:
      return f"--config.{key}={config[key]} must be >= 0 (0 = never)"
  if config.num_train_steps < 0:
    return f"--config.num_train_steps={config.num_train_steps} must be >= 0"
  return None


CHECKS: tuple[Callable[[ml_collections.ConfigDict], str | None], ...] = (
    _intervals,
    _encoder_weights,
    _stage2_init,
    _lpips_files,
    _adversarial,
    _stage3_inputs,
)


def resolve_classes(config: ml_collections.ConfigDict, class_names: list[str]) -> None:
  """A class DiT's model.num_classes: 0 takes the data's class count; ConfigError when the
  data has no class names to take it from, or has more classes than the model."""
  if config.stage != "dit" or config.model.cond_type != "class":
    return
  n = int(config.model.num_classes)
  if n == 0:
    if not class_names:
      raise ConfigError(
          "a class-conditioned DiT needs --config.model.num_classes=N: its data have no class "
          "names to count (class subfolders, a tfds ClassLabel, a latent cache's class_names)"
      )
    config.model.num_classes = len(class_names)
    logging.info("model.num_classes = %d (the data's classes).", len(class_names))
  elif class_names and n < len(class_names):
    raise ConfigError(
        f"--config.model.num_classes={n} but the data have {len(class_names)} classes"
    )


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line, naming the flag) on the first check that fails."""
  for fn in CHECKS:
    message = fn(config)
    if message:
      raise ConfigError(message)

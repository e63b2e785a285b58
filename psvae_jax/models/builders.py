"""Builds the models from config and wires in pretrained weights."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from psvae_jax.models import pixel_decoder
from psvae_jax.models import vit
from psvae_jax.models.autoencoder import PSVAE, SemanticDecoder, SemanticEncoder


RANDOM = "random"  # `model.encoder.weights` value that asks for a random-init encoder


def encoder_weights_dir(enc_cfg) -> str:
  """The HF DINOv2 directory to load, or "" for a random encoder ("" or "random")."""
  return "" if enc_cfg.weights in ("", RANDOM) else enc_cfg.weights


def encoder_kwargs(enc_cfg) -> dict[str, Any]:
  """DinoV2 kwargs: from the HF checkpoint's config if weights are given, else the size table."""
  if encoder_weights_dir(enc_cfg):
    from psvae_jax.weights import dinov2 as dinov2_weights  # pylint: disable=g-import-not-at-top
    module = dinov2_weights.dinov2_module_from_hf_config(dinov2_weights.read_config(enc_cfg.weights))
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.name not in ("parent", "name", "dtype")}
  kw = vit.dinov2_config(enc_cfg.size, registers=enc_cfg.registers)
  for field in ("hidden_size", "num_layers", "num_heads", "patch_size"):
    if enc_cfg[field]:
      kw[field] = enc_cfg[field]
  if enc_cfg.patch_size:
    kw["pos_grid"] = enc_cfg.image_size // enc_cfg.patch_size
  return kw


def build_psvae(model_cfg, dtype=jnp.float32) -> PSVAE:
  kw = encoder_kwargs(model_cfg.encoder)
  d, heads = kw["hidden_size"], kw["num_heads"]
  return PSVAE(
      encoder=vit.DinoV2(**kw, dtype=dtype),
      sem_enc=SemanticEncoder(
          hidden_size=d, num_heads=heads, num_blocks=model_cfg.num_sem_blocks,
          latent_channels=model_cfg.latent_channels, mlp_ratio=kw["mlp_ratio"],
          layerscale_init=kw["layerscale_init"], use_swiglu=kw["use_swiglu"],
          layer_norm_eps=kw["layer_norm_eps"], dtype=dtype),
      sem_dec=SemanticDecoder(hidden_size=d, num_heads=heads,
                              num_blocks=model_cfg.num_sem_blocks, dtype=dtype),
      pix_dec=pixel_decoder.make_pixel_decoder(model_cfg.pixel_decoder, dtype=dtype),
      encoder_image_size=model_cfg.encoder.image_size)


def sem_blocks_from_encoder(params: dict) -> dict:
  """E_s's blocks := copies of the encoder's last blocks (the PS-VAE paper's init).

  E_s's final LayerNorm becomes a copy of the encoder's final LayerNorm, so at the start
  E_s's blocks map the encoder's pre-LayerNorm stream the way the copied blocks were
  trained to. Call it on the *loaded* encoder (after any warm start), not a random one.
  """
  enc, sem = params["encoder"], dict(params["sem_enc"])
  n_enc = sum(k.startswith("layer_") for k in enc)
  n_sem = sum(k.startswith("block") for k in sem)
  if n_sem > n_enc:
    raise ValueError(f"num_sem_blocks={n_sem} exceeds the encoder's {n_enc} blocks.")
  for i in range(n_sem):
    sem[f"block{i}"] = jax.tree.map(jnp.copy, enc[f"layer_{n_enc - n_sem + i}"])
  sem["norm"] = jax.tree.map(jnp.copy, enc["norm"])
  return {**params, "sem_enc": sem}


def load_encoder_params(hf_dir: str, target: Any) -> Any:
  """Loads DINOv2 weights from a HF directory into arrays sharded like `target`."""
  from psvae_jax.weights import dinov2 as dinov2_weights  # pylint: disable=g-import-not-at-top
  _, loaded = dinov2_weights.load_dinov2(hf_dir)
  logging.info("Loaded DINOv2 weights from %s", hf_dir)
  return place_like(loaded, target)


def place_like(host_tree: Any, target: Any) -> Any:
  """Host numpy arrays -> global arrays with `target`'s shardings (multi-host safe)."""
  def one(x, t):
    x = np.asarray(x, t.dtype)
    if x.shape != t.shape:
      raise ValueError(f"Shape {x.shape} does not match {t.shape}.")
    return jax.make_array_from_callback(x.shape, t.sharding, lambda idx: x[idx])
  return jax.tree.map(one, host_tree, target)


def build_lpips(lpips_cfg, image_size: int):
  """(module, params) for the LPIPS loss/metric from files, or random for tests."""
  from psvae_jax.weights import lpips as lpips_weights  # pylint: disable=g-import-not-at-top
  if lpips_cfg.vgg == RANDOM:
    logging.warning("LPIPS with RANDOM VGG weights: not a perceptual metric (tests only).")
    return lpips_weights.random_lpips(jax.random.key(0), image_size)
  if not lpips_cfg.vgg or not lpips_cfg.heads:
    raise ValueError(
        "loss.lpips > 0 needs VGG16 and LPIPS head weights: set --config.lpips.vgg=vgg16.pth "
        "(torchvision's vgg16-397923af.pth or its safetensors) and --config.lpips.heads=vgg.pth "
        "(the lpips package's weights/v0.1/vgg.pth), or --config.loss.lpips=0.")
  return lpips_weights.load_lpips(lpips_cfg.vgg, lpips_cfg.heads)

"""Builds things from config: the models, their pretrained weights, text encoders, templates.

Used by the stage tasks (training), `psvae_jax.api` and `psvae_jax.frozen_psvae` (inference),
the benchmarks and the tests; it imports nothing from train/. `models/` holds the pure linen
modules, `weights/` the checkpoint readers this module wires in.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from configs import common
from psvae_jax.models import discriminator
from psvae_jax.models import dit as dit_lib
from psvae_jax.models import fusion
from psvae_jax.models import pixel_decoder
from psvae_jax.models import siglip
from psvae_jax.models import vit
from psvae_jax.models.autoencoder import PSVAE, SemanticDecoder, SemanticEncoder
from psvae_jax.weights import clip
from psvae_jax.weights import common as weights_common
from psvae_jax.weights import dinov2 as dinov2_weights
from psvae_jax.weights import siglip as siglip_weights
from psvae_jax.weights import lpips as lpips_weights
from psvae_jax.weights import qwen2 as qwen2_weights
from psvae_jax.weights import t5

RANDOM = "random"  # `model.encoder.weights` value that asks for a random-init encoder


def encoder_weights_dir(enc_cfg) -> str:
  """The HF encoder directory to load, or "" for a random encoder ("" or "random")."""
  return "" if enc_cfg.weights in ("", RANDOM) else enc_cfg.weights


ENCODER_KINDS = ("dinov2", "siglip2")


def encoder_kind(enc_cfg) -> str:
  """`model.encoder.kind`: "dinov2" (default; also configs written before the field) or
  "siglip2" (a SigLIP / SigLIP2 vision tower, psvae_jax/models/siglip.py)."""
  kind = enc_cfg.get("kind", "dinov2") or "dinov2"
  if kind not in ENCODER_KINDS:
    raise ValueError(f"--config.model.encoder.kind={kind!r}: one of {list(ENCODER_KINDS)}")
  return kind


def _module_fields(module) -> dict[str, Any]:
  return {
      f.name: getattr(module, f.name)
      for f in dataclasses.fields(module)
      if f.name not in ("parent", "name", "dtype")
  }


def _check_weights_kind(enc_cfg, kind: str) -> dict:
  """The weights directory's config.json; ValueError (one line) when it is another kind's."""
  cfg = weights_common.read_json(enc_cfg.weights)
  model_type = cfg.get("model_type", "")
  is_siglip = model_type in siglip_weights.MODEL_TYPES
  if (kind == "siglip2") != is_siglip:
    want = "siglip2" if is_siglip else "dinov2"
    raise ValueError(
        f"--config.model.encoder.weights={enc_cfg.weights} holds a {model_type!r} model but "
        f"model.encoder.kind={kind!r}: set --config.model.encoder.kind={want}"
    )
  return cfg


def encoder_kwargs(enc_cfg) -> dict[str, Any]:
  """The encoder module's kwargs (vit.DinoV2 or siglip.SiglipVision, by `encoder_kind`): from
  the HF checkpoint's config if weights are given, else the size table."""
  kind = encoder_kind(enc_cfg)
  if encoder_weights_dir(enc_cfg):
    cfg = _check_weights_kind(enc_cfg, kind)
    if kind == "siglip2":
      return _module_fields(siglip_weights.siglip_module_from_hf_config(cfg))
    return _module_fields(dinov2_weights.dinov2_module_from_hf_config(cfg))
  if kind == "siglip2":
    kw = siglip.siglip_config(enc_cfg.size)
  else:
    kw = vit.dinov2_config(enc_cfg.size, registers=enc_cfg.registers)
  for field in ("hidden_size", "num_layers", "num_heads", "patch_size"):
    if enc_cfg[field]:
      kw[field] = enc_cfg[field]
  if enc_cfg.patch_size:
    kw["pos_grid"] = enc_cfg.image_size // enc_cfg.patch_size
  return kw


def build_encoder(enc_cfg, dtype=jnp.float32):
  """The representation encoder of `model.encoder` (its kind, size or weights' config)."""
  kw = encoder_kwargs(enc_cfg)
  if encoder_kind(enc_cfg) == "siglip2":
    return siglip.SiglipVision(**kw, dtype=dtype)
  return vit.DinoV2(**kw, dtype=dtype)


def build_psvae(model_cfg, dtype=jnp.float32) -> PSVAE:
  enc = build_encoder(model_cfg.encoder, dtype)
  d, heads = enc.hidden_size, enc.num_heads
  return PSVAE(
      encoder=enc,
      sem_enc=SemanticEncoder(  # E_s's blocks are the encoder's (their copies, by default)
          hidden_size=d,
          num_heads=heads,
          num_blocks=model_cfg.num_sem_blocks,
          latent_channels=model_cfg.latent_channels,
          mlp_ratio=enc.mlp_ratio,
          layerscale_init=enc.layerscale_init,
          use_swiglu=enc.use_swiglu,
          layer_norm_eps=enc.layer_norm_eps,
          gelu_approximate=getattr(enc, "gelu_approximate", False),
          mlp_dim=getattr(enc, "mlp_dim", 0),
          dtype=dtype,
      ),
      sem_dec=SemanticDecoder(
          hidden_size=d, num_heads=heads, num_blocks=model_cfg.num_sem_blocks, dtype=dtype
      ),
      pix_dec=pixel_decoder.make_pixel_decoder(model_cfg.pixel_decoder, dtype=dtype),
      encoder_image_size=model_cfg.encoder.image_size,
      encoder_norm="siglip" if encoder_kind(model_cfg.encoder) == "siglip2" else "imagenet",
  )


def build_discriminator(config):
  """The PatchGAN of stage 2's adversarial loss (config.adv), or None when loss.adv is 0."""
  if config.loss.get("adv", 0.0) <= 0:
    return None
  a = config.adv
  return discriminator.PatchGAN(ndf=a.ndf, n_layers=a.n_layers, dtype=jnp.dtype(config.dtype))


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


def load_encoder_params(hf_dir: str, target: Any, kind: str = "dinov2") -> Any:
  """Loads DINOv2 (or, kind "siglip2", SigLIP) weights from a HF directory into arrays
  sharded like `target`."""
  if kind == "siglip2":
    _, loaded = siglip_weights.load_siglip(hf_dir)
  else:
    _, loaded = dinov2_weights.load_dinov2(hf_dir)
  logging.info("Loaded %s weights from %s", kind, hf_dir)
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
  if lpips_cfg.vgg == RANDOM:
    logging.warning("LPIPS with RANDOM VGG weights: not a perceptual metric (tests only).")
    return lpips_weights.random_lpips(jax.random.key(0), image_size)
  if not lpips_cfg.vgg or not lpips_cfg.heads:
    raise ValueError(
        "loss.lpips > 0 needs VGG16 and LPIPS head weights: set --config.lpips.vgg=vgg16.pth "
        "(torchvision's vgg16-397923af.pth or its safetensors) and --config.lpips.heads=vgg.pth "
        "(the lpips package's weights/v0.1/vgg.pth), or --config.loss.lpips=0."
    )
  return lpips_weights.load_lpips(lpips_cfg.vgg, lpips_cfg.heads)


# ---- stage 3: the DiT, its text encoder and its parameter template ---------------------------
GENERATOR_KINDS = ("dit", "fusion")


def generator_kind(config) -> str:
  """`generator.kind`: "dit" (also configs written before the field) or "fusion"."""
  kind = (config.get("generator") or {}).get("kind", "dit") or "dit"
  if kind not in GENERATOR_KINDS:
    raise ValueError(f"--config.generator.kind={kind!r}: one of {list(GENERATOR_KINDS)}")
  return kind


def is_fusion(config) -> bool:
  """True for the paper's shared-block generator (models/fusion.py)."""
  return config.stage == "dit" and generator_kind(config) == "fusion"


def fusion_backbone(config) -> dict[str, Any]:
  """The fusion generator's Qwen2 fields: generator.weights' config.json, else the published
  config generator.backbone names (weights/qwen2.NAMED; shapes only: compiles, counts)."""
  g = config.generator
  if g.weights:
    return qwen2_weights.config_values(weights_common.read_json(g.weights))
  if g.backbone in qwen2_weights.NAMED:
    return qwen2_weights.config_values(qwen2_weights.NAMED[g.backbone])
  raise ValueError(
      "A fusion generator needs --config.generator.weights=QWEN2_DIR (a Hugging Face Qwen2 "
      f"directory), or --config.generator.backbone= one of {sorted(qwen2_weights.NAMED)} for "
      "its shapes alone"
  )


def build_fusion(config) -> fusion.FusionGenerator:
  m = config.model
  return fusion.FusionGenerator(
      backbone=fusion_backbone(config),
      patch_size=m.patch_size,
      head_width=m.head_width,
      head_depth=m.head_depth,
      head_heads=m.head_heads,
      dtype=jnp.dtype(config.dtype),
      attention_impl=m.attention_impl,
  )


def load_fusion_backbone(config, target: Any) -> Any:
  """generator.weights' Qwen2 parameters, sharded like `target` (the generator's "backbone")."""
  _, loaded = qwen2_weights.load_qwen2(config.generator.weights)
  logging.info("Loaded the fusion generator's Qwen2 blocks from %s", config.generator.weights)
  return place_like(loaded, target)


def build_dit(config) -> dit_lib.DiT | fusion.FusionGenerator:
  """The stage-3 generator of config: the DiT of config.model (its output channels follow the
  input latent's), or the fusion generator (`generator.kind`)."""
  if is_fusion(config):
    return build_fusion(config)
  m = config.model
  kw = dit_lib.dit_config(m.size)
  if m.get("depth", 0):  # a shallower (or deeper) stack at the size's width (tests, ablations)
    kw["depth"] = m.depth
  return dit_lib.DiT(
      **kw,
      patch_size=m.patch_size,
      cond_type=m.cond_type,
      num_classes=m.num_classes,
      dtype=jnp.dtype(config.dtype),
      remat=m.remat,
      remat_policy=m.get("remat_policy", "full"),
      scan_blocks=m.get("scan_blocks", False),
      attention_impl=m.attention_impl or None,
      head_width=m.get("head_width", 0),
      head_depth=m.get("head_depth", 2),
      head_heads=m.get("head_heads", 16),
  )


def text_param_dtype(config) -> jnp.dtype:
  """Storage dtype of the text encoder's params: config.text_encoder_dtype while frozen (bf16
  halves T5-XXL's 19 GB), float32 when it trains (train_text_encoder)."""
  if config.get("train_text_encoder"):
    return jnp.dtype(jnp.float32)
  return jnp.dtype(config.get("text_encoder_dtype", "float32"))


def trains_text_encoder(config) -> bool:
  """True when stage 3 trains the text encoder jointly (its params are then params["text"])."""
  return config.model.cond_type == "text" and bool(config.train_text_encoder)


def load_text_encoder(config):
  """(module, params, tokenizer) of config.text_encoder (CLIP text or T5), or Nones for class;
  a fusion generator has no text encoder: (None, None, generator.weights' tokenizer)."""
  if config.model.cond_type != "text":
    return None, None, None
  if is_fusion(config):
    tok = clip.load_tokenizer(config.generator.weights) if config.generator.weights else None
    return None, None, tok
  if not config.text_encoder:
    raise ValueError(
        "A text-conditioned DiT needs --config.text_encoder=DIR (a Hugging Face CLIP "
        "text or T5 encoder directory with its tokenizer)."
    )
  cfg = weights_common.read_json(config.text_encoder)
  if cfg.get("model_type", "").startswith("t5"):
    module, params = t5.load_t5_encoder(
        config.text_encoder, dtype=jnp.dtype(config.dtype), param_dtype=text_param_dtype(config)
    )
  else:
    module, params = clip.load_clip_text(
        config.text_encoder, dtype=jnp.dtype(config.dtype), param_dtype=text_param_dtype(config)
    )
  return module, params, clip.load_tokenizer(config.text_encoder)


def init_dit_params(
    config, model, rng, latent_shape, text_module=None, text_params=None
) -> dict[str, Any]:
  """Stage 3's params: {"dit": ...} (+ "text" when the text encoder trains jointly); "dit" holds
  the fusion generator's for a fusion config (its Qwen2 blocks under "backbone").

  latent_shape: the autoencoder's (h, w, C); text_module/text_params: the text encoder (params
  may be abstract) of a text-conditioned config. The "text" entry is a zero placeholder of the
  text encoder's structure (the task's warm_start loads its weights).
  """
  h, w, c = latent_shape
  x = jnp.zeros((1, h, w, c), jnp.float32)
  t = jnp.zeros((1,), jnp.float32)
  # An instruction-editing DiT reads the source latent too (its patch embedding: 2C channels).
  src = {"source": x} if common.edits_by_instruction(config) else {}
  if config.model.cond_type == "class":
    return {"dit": model.init(rng, x, t, labels=jnp.zeros((1,), jnp.int32), **src)["params"]}
  ids = jnp.zeros((1, config.data.max_length), jnp.int32)
  if is_fusion(config):  # (a source-conditioned one: its source tokens' projection too)
    mask = jnp.ones_like(ids)
    return {"dit": model.init(rng, x, t, input_ids=ids, attention_mask=mask, **src)["params"]}
  hid, pooled = jax.eval_shape(text_module.apply, {"params": text_params}, ids, ids)
  params = {
      "dit": model.init(
          rng,
          x,
          t,
          context=jnp.zeros(hid.shape, jnp.float32),
          context_mask=jnp.ones(hid.shape[:2], bool),
          pooled=jnp.zeros(pooled.shape, jnp.float32),
          **src,
      )["params"]
  }
  if trains_text_encoder(config):
    params["text"] = jax.tree.map(jnp.zeros_like, text_params)
  return params


def dit_param_template(
    config, model, latent_shape, text_module=None, text_params=None
) -> dict[str, Any]:
  """The abstract (ShapeDtypeStruct) params of init_dit_params, e.g. to restore a checkpoint."""
  return jax.eval_shape(
      lambda rng: init_dit_params(config, model, rng, latent_shape, text_module, text_params),
      jax.random.key(0),
  )


def dit_constants(config, ae_params, latent_mean, latent_std, text_params=None) -> dict[str, Any]:
  """Stage 3's fixed arrays (frozen autoencoder, latent statistics, frozen text encoder)."""
  consts = {
      "ae": ae_params,
      "latent_mean": jnp.asarray(latent_mean, jnp.float32),
      "latent_std": jnp.asarray(latent_std, jnp.float32),
  }
  if text_params is not None and not trains_text_encoder(config):
    consts["text"] = text_params
  return consts

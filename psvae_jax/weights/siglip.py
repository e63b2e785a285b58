"""Importer for Hugging Face SigLIP / SigLIP2 vision checkpoints.

Reads a directory written by ``SiglipVisionModel`` / ``Siglip2VisionModel`` /
``SiglipModel`` / ``Siglip2Model`` ``.save_pretrained`` (or a hub snapshot such as
``google/siglip2-so400m-patch14-224``): ``config.json`` plus ``model.safetensors``, and returns
a :class:`psvae_jax.models.siglip.SiglipVision` with its parameter tree.

Fixed-resolution SigLIP2 checkpoints are ``model_type: siglip`` (conv patch embedding, bicubic
position resize); NaFlex ones are ``siglip2`` (linear patch embedding on flattened patches,
bilinear antialiased position resize). A full (text + vision) model directory is read for its
vision tower; deliberately ignored keys: the text tower, ``logit_scale`` / ``logit_bias`` and
the vision tower's attention-pooling ``head`` (the PS-VAE reads patch tokens).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from psvae_jax.models.siglip import SiglipVision
from psvae_jax.weights import common

MODEL_TYPES = {
    "siglip": "bicubic",
    "siglip_vision_model": "bicubic",
    "siglip2": "bilinear_aa",
    "siglip2_vision_model": "bilinear_aa",
}
_LINEAR = {
    "self_attn.q_proj": "q_proj",
    "self_attn.k_proj": "k_proj",
    "self_attn.v_proj": "v_proj",
    "self_attn.out_proj": "o_proj",
    "mlp.fc1": "fc1",
    "mlp.fc2": "fc2",
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
}
_LAYER_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_IGNORED = re.compile(r"^(text_model\.|head\.|logit_scale$|logit_bias$)")


def vision_config(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
  """(the vision tower's config dict, model_type of the directory); ValueError if not SigLIP."""
  model_type = cfg.get("model_type", "")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"Not a SigLIP / SigLIP2 config: model_type={model_type!r}")
  # A full (text + vision) model's config nests the tower's; a vision model's is the tower's.
  vision = cfg.get("vision_config") or cfg
  return dict(vision), model_type


def siglip_module_from_hf_config(cfg: Mapping[str, Any], dtype: Any = jnp.float32) -> SiglipVision:
  """The :class:`SiglipVision` matching a Hugging Face SigLIP / SigLIP2 (vision) config."""
  v, model_type = vision_config(cfg)
  act = v.get("hidden_act", "gelu_pytorch_tanh")
  if act != "gelu_pytorch_tanh":
    raise ValueError(f"Unsupported hidden_act {act!r} (SigLIP uses gelu_pytorch_tanh).")
  if v.get("num_channels", 3) != 3:
    raise ValueError("Only 3-channel inputs are supported")
  patch = int(v.get("patch_size", 16))
  if MODEL_TYPES[model_type] == "bilinear_aa":
    grid = int(round(int(v.get("num_patches", 256)) ** 0.5))
    if grid * grid != int(v.get("num_patches", 256)):
      raise ValueError(f"num_patches={v.get('num_patches')} is not a square grid.")
  else:
    grid = int(v.get("image_size", 224)) // patch
  return SiglipVision(
      hidden_size=int(v["hidden_size"]),
      num_layers=int(v["num_hidden_layers"]),
      num_heads=int(v["num_attention_heads"]),
      mlp_dim=int(v["intermediate_size"]),
      patch_size=patch,
      pos_grid=grid,
      layer_norm_eps=float(v.get("layer_norm_eps", 1e-6)),
      pos_resize=MODEL_TYPES[model_type],
      dtype=dtype,
  )


def convert_siglip_state_dict(
    sd: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], list[str]]:
  """HF SigLIP(2) vision tensors -> flat flax paths; (converted, unused source keys)."""
  out: dict[str, np.ndarray] = {}
  unused: list[str] = []
  for src_key, value in sd.items():
    value = np.asarray(value, np.float32)
    key = src_key.removeprefix("model.").removeprefix("vision_model.")
    if _IGNORED.match(key) or src_key.startswith("text_model."):
      continue
    if key == "embeddings.patch_embedding.weight":
      if value.ndim == 4:  # SigLIP conv (D, C, p, p) -> HWIO
        out["patch_embed/kernel"] = value.transpose(2, 3, 1, 0)
      else:  # Siglip2 linear (D, p*p*C) on (row, column, channel)-flattened patches
        d, n = value.shape
        p = int(round((n // 3) ** 0.5))
        if p * p * 3 != n:
          raise ValueError(f"{src_key}: {value.shape} is not (D, p*p*3).")
        out["patch_embed/kernel"] = value.reshape(d, p, p, 3).transpose(1, 2, 3, 0)
    elif key == "embeddings.patch_embedding.bias":
      out["patch_embed/bias"] = value
    elif key == "embeddings.position_embedding.weight":
      out["pos_embed"] = value
    elif key in ("post_layernorm.weight", "post_layernorm.bias"):
      out["norm/" + ("scale" if key.endswith("weight") else "bias")] = value
    elif (m := _LAYER_RE.match(key)) is not None and m.group(2) in _LINEAR:
      name, kind = _LINEAR[m.group(2)], m.group(3)
      if name.startswith("norm"):
        leaf = "scale" if kind == "weight" else "bias"
      else:
        leaf, value = ("kernel", value.T) if kind == "weight" else ("bias", value)
      out[f"layer_{m.group(1)}/{name}/{leaf}"] = value
    else:
      unused.append(src_key)
  return out, unused


def load_siglip(hf_dir: str, dtype: Any = jnp.float32) -> tuple[SiglipVision, dict]:
  """(module, params) of a Hugging Face SigLIP / SigLIP2 directory; ValueError lists missing,
  unexpected or mis-shaped tensors."""
  module = siglip_module_from_hf_config(common.read_json(hf_dir), dtype=dtype)
  p = module.patch_size
  dummy = jnp.zeros((1, p, p, 3), jnp.float32)
  return module, common.load_hf_params(
      hf_dir, module, convert_siglip_state_dict, (dummy,), "SigLIP checkpoint"
  )

"""Importer for Hugging Face DINOv2 checkpoints (with or without registers).

Reads a directory written by ``Dinov2Model.save_pretrained`` /
``Dinov2WithRegistersModel.save_pretrained`` (or a hub snapshot such as
``facebook/dinov2-base``): ``config.json`` plus ``model.safetensors`` (or
``pytorch_model.bin``), and returns a :class:`psvae_jax.models.vit.DinoV2` with
its parameter tree.

Both key layouts are accepted:

* legacy / on-disk names (``attention.attention.query``, ``attention.output.dense``,
  ``mlp.weights_in`` / ``mlp.weights_out`` for SwiGLU), which transformers still
  writes on save, and
* in-memory transformers-5 names (``attention.q_proj`` ... ``attention.o_proj``,
  ``mlp.gate_proj`` / ``mlp.up_proj`` / ``mlp.down_proj``),

optionally behind a ``dinov2.`` / ``dinov2_with_registers.`` / ``model.`` prefix
(e.g. from ``Dinov2ForImageClassification``).

Deliberately ignored source keys (see :data:`IGNORED_SUFFIXES`):
``embeddings.mask_token`` (only used for masked pre-training) and the
``classifier.*`` head of image-classification checkpoints.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from psvae_jax.models.vit import DinoV2
from psvae_jax.weights import common

# Source keys (after prefix stripping) that are known and intentionally dropped.
IGNORED_SUFFIXES = ("embeddings.mask_token", "classifier.weight", "classifier.bias")
_PREFIXES = ("dinov2_with_registers.", "dinov2.", "model.")

_LINEAR_RENAMES = {
    # source sub-path (after "encoder.layer.{i}.") -> flax submodule name
    "attention.attention.query": "q_proj",
    "attention.attention.key": "k_proj",
    "attention.attention.value": "v_proj",
    "attention.output.dense": "o_proj",
    "attention.q_proj": "q_proj",
    "attention.k_proj": "k_proj",
    "attention.v_proj": "v_proj",
    "attention.o_proj": "o_proj",
    "mlp.fc1": "fc1",
    "mlp.fc2": "fc2",
    "mlp.gate_proj": "gate_proj",
    "mlp.up_proj": "up_proj",
    "mlp.down_proj": "down_proj",
    "mlp.weights_out": "down_proj",
}
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def _get(cfg: Any, name: str, default: Any = None) -> Any:
  return cfg.get(name, default) if isinstance(cfg, Mapping) else getattr(cfg, name, default)


def _square(value: Any, what: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise ValueError(f"Only square {what} is supported, got {value}")
    value = value[0]
  return int(value)


def dinov2_module_from_hf_config(cfg: Any, dtype: Any = jnp.float32) -> DinoV2:
  """Builds the :class:`DinoV2` matching a Hugging Face DINOv2 config.

  Args:
    cfg: a ``Dinov2Config`` / ``Dinov2WithRegistersConfig`` or its dict form.
    dtype: compute dtype of the module.

  Returns:
    The module (registers and the antialiased position-embedding resize are
    enabled for ``dinov2_with_registers`` configs, as in transformers).
  """
  model_type = _get(cfg, "model_type", "dinov2")
  if model_type not in ("dinov2", "dinov2_with_registers"):
    raise ValueError(f"Not a DINOv2 config: model_type={model_type!r}")
  if _get(cfg, "hidden_act", "gelu") != "gelu":
    raise ValueError(f"Unsupported hidden_act {_get(cfg, 'hidden_act')!r}")
  if not _get(cfg, "qkv_bias", True):
    raise ValueError("qkv_bias=False is not supported")
  if _get(cfg, "num_channels", 3) != 3:
    raise ValueError("Only 3-channel inputs are supported")
  with_registers = model_type == "dinov2_with_registers"
  patch = _square(_get(cfg, "patch_size", 14), "patch_size")
  image = _square(_get(cfg, "image_size", 518), "image_size")
  return DinoV2(
      hidden_size=int(_get(cfg, "hidden_size")),
      num_layers=int(_get(cfg, "num_hidden_layers")),
      num_heads=int(_get(cfg, "num_attention_heads")),
      mlp_ratio=float(_get(cfg, "mlp_ratio", 4)),
      patch_size=patch,
      pos_grid=image // patch,
      num_register_tokens=(int(_get(cfg, "num_register_tokens", 4)) if with_registers else 0),
      layerscale_init=float(_get(cfg, "layerscale_value", 1.0)),
      use_swiglu=bool(_get(cfg, "use_swiglu_ffn", False)),
      layer_norm_eps=float(_get(cfg, "layer_norm_eps", 1e-6)),
      pos_embed_antialias=with_registers,
      dtype=dtype,
  )


def _strip_prefix(key: str) -> str:
  for p in _PREFIXES:
    if key.startswith(p):
      return key[len(p) :]
  return key


def convert_dinov2_state_dict(
    sd: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], list[str]]:
  """Maps HF DINOv2 tensors to flat flax paths.

  Args:
    sd: the checkpoint's state dict as numpy arrays.

  Returns:
    ``(converted, unused)``: flat ``{"layer_0/q_proj/kernel": array}`` and the
    source keys that were neither converted nor deliberately ignored.
  """
  out: dict[str, np.ndarray] = {}
  unused: list[str] = []
  for src_key, value in sd.items():
    value = np.asarray(value, np.float32)
    key = _strip_prefix(src_key)
    if key in IGNORED_SUFFIXES:
      continue
    if key == "embeddings.cls_token":
      out["cls_token"] = value
    elif key == "embeddings.position_embeddings":
      out["pos_embed"] = value
    elif key == "embeddings.register_tokens":
      out["register_tokens"] = value
    elif key == "embeddings.patch_embeddings.projection.weight":
      out["patch_embed/kernel"] = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif key == "embeddings.patch_embeddings.projection.bias":
      out["patch_embed/bias"] = value
    elif key in ("layernorm.weight", "layernorm.bias"):
      out["norm/" + ("scale" if key.endswith("weight") else "bias")] = value
    elif (m := _LAYER_RE.match(key)) is not None:
      layer, sub, kind = f"layer_{m.group(1)}", m.group(2), m.group(3)
      if sub in ("layer_scale1", "layer_scale2") and kind == "lambda1":
        out[f"{layer}/{sub}"] = value
      elif sub in ("norm1", "norm2"):
        out[f"{layer}/{sub}/" + ("scale" if kind == "weight" else "bias")] = value
      elif sub == "mlp.weights_in" and kind in ("weight", "bias"):
        gate, up = np.split(value, 2, axis=0)  # transformers' Chunk(dim=0)
        for name, part in (("gate_proj", gate), ("up_proj", up)):
          out[f"{layer}/{name}/" + ("kernel" if kind == "weight" else "bias")] = (
              part.T if kind == "weight" else part
          )
      elif sub in _LINEAR_RENAMES and kind in ("weight", "bias"):
        name = _LINEAR_RENAMES[sub]
        out[f"{layer}/{name}/" + ("kernel" if kind == "weight" else "bias")] = (
            value.T if kind == "weight" else value
        )
      else:
        unused.append(src_key)
    else:
      unused.append(src_key)
  return out, unused


def load_dinov2(hf_dir: str, dtype: Any = jnp.float32) -> tuple[DinoV2, dict]:
  """Loads a Hugging Face DINOv2 checkpoint directory.

  Args:
    hf_dir: directory with ``config.json`` and ``model.safetensors`` (or
      ``pytorch_model.bin``).
    dtype: compute dtype of the returned module (parameters stay float32).

  Returns:
    ``(module, params)`` where ``module.apply({"params": params}, images)``
    maps ``(B, H, W, 3)`` normalised images to ``(B, H/p, W/p, D)`` features.

  Raises:
    ValueError: when the checkpoint does not match the config (missing,
      unexpected or mis-shaped tensors are all listed).
  """
  module = dinov2_module_from_hf_config(common.read_json(hf_dir), dtype=dtype)
  p = module.patch_size
  dummy = jnp.zeros((1, p, p, 3), jnp.float32)
  return module, common.load_hf_params(
      hf_dir, module, convert_dinov2_state_dict, (dummy,), "DINOv2 checkpoint"
  )


# On-disk (legacy) Hugging Face names of the flax submodules: what `save_pretrained` writes.
_EXPORT_LINEAR = {
    "q_proj": "attention.attention.query",
    "k_proj": "attention.attention.key",
    "v_proj": "attention.attention.value",
    "o_proj": "attention.output.dense",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
}


def export_dinov2_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of `convert_dinov2_state_dict` for plain-MLP DINOv2s (no registers, no
  SwiGLU): a flax param tree -> Hugging Face `Dinov2Model` tensors (on-disk names), with a zero
  `embeddings.mask_token` so that transformers loads the file without a missing key."""
  out: dict[str, np.ndarray] = {}
  for key, value in common.flatten(params).items():
    value = np.asarray(value, np.float32)
    parts = key.split("/")
    if key == "cls_token":
      out["embeddings.cls_token"] = value
      out["embeddings.mask_token"] = np.zeros((1, value.shape[-1]), np.float32)
    elif key == "pos_embed":
      out["embeddings.position_embeddings"] = value
    elif key == "patch_embed/kernel":
      out["embeddings.patch_embeddings.projection.weight"] = value.transpose(3, 2, 0, 1)
    elif key == "patch_embed/bias":
      out["embeddings.patch_embeddings.projection.bias"] = value
    elif parts[0] == "norm":
      out["layernorm." + ("weight" if parts[1] == "scale" else "bias")] = value
    elif parts[0].startswith("layer_"):
      prefix = f"encoder.layer.{parts[0][len('layer_'):]}."
      if parts[1] in ("layer_scale1", "layer_scale2"):
        out[prefix + parts[1] + ".lambda1"] = value
      elif parts[1] in ("norm1", "norm2"):
        out[prefix + parts[1] + "." + ("weight" if parts[2] == "scale" else "bias")] = value
      elif parts[1] in _EXPORT_LINEAR:
        name = prefix + _EXPORT_LINEAR[parts[1]]
        if parts[2] == "kernel":
          out[name + ".weight"] = np.ascontiguousarray(value.T)
        else:
          out[name + ".bias"] = value
      else:
        raise ValueError(f"export_dinov2_state_dict: no Hugging Face name for {key!r}.")
    else:
      raise ValueError(f"export_dinov2_state_dict: no Hugging Face name for {key!r}.")
  return out


def save_dinov2(out_dir: str, module: DinoV2, params: Mapping[str, Any], image_size: int) -> str:
  """Writes `module` / `params` as a Hugging Face Dinov2 directory (config.json and
  model.safetensors) that `load_dinov2` and transformers' `Dinov2Model.from_pretrained` read.

  image_size: the input side the model was trained at (its position grid is image_size /
  patch_size, which must equal the module's `pos_grid`)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  if module.num_register_tokens or module.use_swiglu:
    raise ValueError("save_dinov2 writes plain DINOv2s (no registers, no SwiGLU).")
  if image_size // module.patch_size != module.pos_grid:
    raise ValueError(
        f"image_size={image_size} / patch_size={module.patch_size} != pos_grid={module.pos_grid}."
    )
  config = {
      "architectures": ["Dinov2Model"],
      "model_type": "dinov2",
      "hidden_size": module.hidden_size,
      "num_hidden_layers": module.num_layers,
      "num_attention_heads": module.num_heads,
      # transformers 5 validates the field as an int
      "mlp_ratio": int(module.mlp_ratio)
      if float(module.mlp_ratio).is_integer()
      else module.mlp_ratio,
      "hidden_act": "gelu",
      "image_size": image_size,
      "patch_size": module.patch_size,
      "num_channels": 3,
      "qkv_bias": True,
      "layerscale_value": 1.0 if module.layerscale_init is None else module.layerscale_init,
      "layer_norm_eps": module.layer_norm_eps,
      "use_swiglu_ffn": False,
      "drop_path_rate": 0.0,
      "hidden_dropout_prob": 0.0,
      "attention_probs_dropout_prob": 0.0,
      "initializer_range": 0.02,
  }
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  # Contiguous copies: safetensors writes an array's buffer, so a transposed view would be
  # saved in its memory order, not its logical one.
  save_file(
      {k: np.ascontiguousarray(v) for k, v in export_dinov2_state_dict(params).items()},
      os.path.join(out_dir, "model.safetensors"),
      metadata={"format": "pt"},
  )
  return out_dir

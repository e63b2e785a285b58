"""Importer for Hugging Face T5 encoder checkpoints (T5 v1.0, v1.1 / Flan-T5, mT5).

Reads a directory written by ``save_pretrained`` of a ``T5EncoderModel`` or a
full ``T5ForConditionalGeneration`` / ``T5Model`` (or a hub snapshot such as
``google/t5-v1_1-xxl``): ``config.json`` plus ``model.safetensors`` (or
``pytorch_model.bin``). Returns a :class:`psvae_jax.models.text_encoders.T5Encoder`
and its parameters.

Deliberately ignored source keys: the decoder (``decoder.*``) and ``lm_head.*``;
``encoder.embed_tokens.weight`` when ``shared.weight`` is also present (the two
are tied; whichever is stored is used). UMT5 (per-layer position bias) is not
supported and is rejected by its ``model_type``.

``load_tokenizer`` / ``tokenize`` are re-exported from
:mod:`psvae_jax.weights.clip`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from psvae_jax.models.text_encoders import T5Encoder
from psvae_jax.weights import common
from psvae_jax.weights.clip import cast_params
from psvae_jax.weights.clip import load_tokenizer  # pylint: disable=unused-import
from psvae_jax.weights.clip import tokenize  # pylint: disable=unused-import

__all__ = [
    "load_t5_encoder",
    "load_tokenizer",
    "tokenize",
    "t5_module_from_hf_config",
    "convert_t5_encoder_state_dict",
]

# transformers.T5Config defaults, for keys a config.json leaves out.
_DEFAULTS = dict(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    d_ff=2048,
    num_layers=6,
    num_heads=8,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="relu",
)
_IGNORED_PREFIXES = ("decoder.", "lm_head.")
_BLOCK_RE = re.compile(r"^encoder\.block\.(\d+)\.layer\.([01])\.(.+)\.weight$")
_BLOCK_RENAMES = {
    ("0", "layer_norm"): "attn_norm/scale",
    ("0", "SelfAttention.q"): "attn/q_proj/kernel",
    ("0", "SelfAttention.k"): "attn/k_proj/kernel",
    ("0", "SelfAttention.v"): "attn/v_proj/kernel",
    ("0", "SelfAttention.o"): "attn/o_proj/kernel",
    ("1", "layer_norm"): "ff_norm/scale",
    ("1", "DenseReluDense.wi"): "wi/kernel",
    ("1", "DenseReluDense.wi_0"): "wi_0/kernel",
    ("1", "DenseReluDense.wi_1"): "wi_1/kernel",
    ("1", "DenseReluDense.wo"): "wo/kernel",
}


def t5_module_from_hf_config(cfg: Mapping[str, Any], dtype: Any = jnp.float32) -> T5Encoder:
  """Builds the encoder for a ``T5Config`` dict, deriving the activation as HF does."""
  model_type = cfg.get("model_type", "t5")
  if model_type not in ("t5", "mt5"):
    raise ValueError(f"Not a T5 config: model_type={model_type!r}")
  c = dict(_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None})
  proj = str(c["feed_forward_proj"])
  parts = proj.split("-")
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
    raise ValueError(f"Unsupported feed_forward_proj {proj!r}")
  act = "gelu_new" if proj == "gated-gelu" else parts[-1]
  return T5Encoder(
      vocab_size=int(c["vocab_size"]),
      d_model=int(c["d_model"]),
      d_kv=int(c["d_kv"]),
      d_ff=int(c["d_ff"]),
      num_layers=int(c["num_layers"]),
      num_heads=int(c["num_heads"]),
      relative_attention_num_buckets=int(c["relative_attention_num_buckets"]),
      relative_attention_max_distance=int(c["relative_attention_max_distance"]),
      is_gated_act=parts[0] == "gated",
      dense_act_fn=act,
      layer_norm_epsilon=float(c["layer_norm_epsilon"]),
      dtype=dtype,
  )


def convert_t5_encoder_state_dict(
    sd: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], list[str]]:
  """Maps HF T5 encoder tensors to flat flax paths.

  Returns:
    ``(converted, unused)``: flat ``{"block_0/attn/q_proj/kernel": array}`` and
    the source keys that were neither converted nor deliberately ignored.
  """
  out: dict[str, np.ndarray] = {}
  unused: list[str] = []
  for key, value in sd.items():
    if key.startswith(_IGNORED_PREFIXES):
      continue
    value = np.asarray(value, np.float32)
    if key == "shared.weight":
      out["shared/embedding"] = value
    elif key == "encoder.embed_tokens.weight":
      if "shared.weight" not in sd:  # Tied copy; used only when alone.
        out["shared/embedding"] = value
    elif key == "encoder.final_layer_norm.weight":
      out["final_layer_norm/scale"] = value
    elif key == "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
      out["relative_attention_bias"] = value  # (buckets, heads)
    elif (m := _BLOCK_RE.match(key)) is not None and (m.group(2), m.group(3)) in _BLOCK_RENAMES:
      name = _BLOCK_RENAMES[(m.group(2), m.group(3))]
      out[f"block_{m.group(1)}/{name}"] = value.T if value.ndim == 2 else value
    else:
      unused.append(key)
  return out, unused


def load_t5_encoder(
    hf_dir: str, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32
) -> tuple[T5Encoder, dict]:
  """Loads the T5 encoder of a Hugging Face checkpoint directory.

  Args:
    hf_dir: directory with ``config.json`` and ``model.safetensors`` (or
      ``pytorch_model.bin``) of a T5EncoderModel / T5ForConditionalGeneration.
    dtype: compute dtype of the returned module.
    param_dtype: dtype the parameters are stored in: float32 (trainable), or bfloat16
      for a frozen encoder (T5-XXL: 4.7B parameters, 19 GB in float32, 9.5 GB in bf16).

  Returns:
    ``(module, params)``; ``module.apply({"params": params}, input_ids,
    attention_mask)`` returns ``(hidden (B, L, d), pooled (B, d))``: element 0
    is the contract's token states (transformers' ``last_hidden_state``),
    element 1 their mean over unmasked positions.

  Raises:
    ValueError: when the weights do not match the config (missing, unexpected
      or mis-shaped tensors are all listed).
  """
  module = t5_module_from_hf_config(common.read_json(hf_dir), dtype=dtype)
  ids = jnp.zeros((1, 1), jnp.int32)
  params = common.load_hf_params(
      hf_dir, module, convert_t5_encoder_state_dict, (ids, ids), "T5 encoder checkpoint"
  )
  return module, cast_params(params, param_dtype)

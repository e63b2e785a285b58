"""Importer for Hugging Face Qwen2 / Qwen2.5 checkpoints (e.g. Qwen2.5-0.5B).

Reads a directory written by ``save_pretrained`` of a ``Qwen2Model`` or ``Qwen2ForCausalLM`` (or
a hub snapshot): ``config.json``, ``model.safetensors`` (or ``pytorch_model.bin``) and the
tokenizer files. Returns a :class:`psvae_jax.models.qwen2.Qwen2Model` and its parameters;
``module.apply({"params": params}, input_ids, attention_mask)`` gives transformers'
``Qwen2Model(...).last_hidden_state``.

Deliberately ignored source keys: ``lm_head.weight`` (the language-model head: tied to the
embeddings in Qwen2.5-0.5B, and not used here). Refused, in one line: sliding-window attention
(``use_sliding_window``) and rope scaling other than the default (neither is in Qwen2.5-0.5B), and
any config whose model_type is not qwen2. The rotary base is the config's ``rope_theta``
(transformers 5 writes it inside ``rope_parameters``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from psvae_jax.models.qwen2 import Qwen2Model
from psvae_jax.weights import common
from psvae_jax.weights.clip import cast_params

# transformers.Qwen2Config defaults, for keys a config.json leaves out.
_DEFAULTS = dict(
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=22016,
    num_hidden_layers=32,
    num_attention_heads=32,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
)
_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")
_LAYER_RENAMES = {
    "self_attn.q_proj": "self_attn/q_proj",
    "self_attn.k_proj": "self_attn/k_proj",
    "self_attn.v_proj": "self_attn/v_proj",
    "self_attn.o_proj": "self_attn/o_proj",
    "mlp.gate_proj": "mlp/gate_proj",
    "mlp.up_proj": "mlp/up_proj",
    "mlp.down_proj": "mlp/down_proj",
}
_NORMS = ("input_layernorm", "post_attention_layernorm")
_IGNORED_KEYS = ("lm_head.weight",)

# Published configs by name (their config.json fields), for programs built without the weights'
# directory (ahead-of-time compiles, memory plans, parameter counts). Training loads a directory.
NAMED = {
    "qwen2.5-0.5b": dict(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
}


def config_values(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """A Qwen2 config.json dict -> the module's fields (ValueError, one line, for what the port
  does not implement)."""
  if cfg.get("model_type", "qwen2") != "qwen2":
    raise ValueError(f"Not a Qwen2 config: model_type={cfg.get('model_type')!r}.")
  c = dict(_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None})
  if c.get("use_sliding_window"):
    raise ValueError("Qwen2 with use_sliding_window=true is not supported (full attention only).")
  rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
  if rope.get("rope_type", rope.get("type", "default")) != "default":
    raise ValueError(f"Qwen2 rope scaling {rope} is not supported (the default rope only).")
  heads = int(c["num_attention_heads"])
  return dict(
      vocab_size=int(c["vocab_size"]),
      hidden_size=int(c["hidden_size"]),
      intermediate_size=int(c["intermediate_size"]),
      num_layers=int(c["num_hidden_layers"]),
      num_heads=heads,
      num_kv_heads=int(c.get("num_key_value_heads") or heads),
      rope_theta=float(rope.get("rope_theta", c["rope_theta"])),
      rms_norm_eps=float(c["rms_norm_eps"]),
  )


def qwen2_module_from_hf_config(
    cfg: Mapping[str, Any], dtype: Any = jnp.float32, attention_impl: str = ""
) -> Qwen2Model:
  """Builds the module for a ``Qwen2Config`` dict."""
  return Qwen2Model(**config_values(cfg), dtype=dtype, attention_impl=attention_impl)


def convert_qwen2_state_dict(
    sd: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], list[str]]:
  """Maps HF Qwen2 tensors (with or without the causal LM's ``model.`` prefix) to flat flax
  paths. Returns ``(converted, unused source keys)``."""
  out: dict[str, np.ndarray] = {}
  unused: list[str] = []
  for src_key, value in sd.items():
    if src_key in _IGNORED_KEYS:
      continue
    key = src_key.removeprefix("model.")
    value = np.asarray(value, np.float32)
    if key == "embed_tokens.weight":
      out["embed_tokens/embedding"] = value
    elif key == "norm.weight":
      out["norm/scale"] = value
    elif (m := _LAYER_RE.match(key)) is not None:
      layer, sub, kind = f"layers_{m.group(1)}", m.group(2), m.group(3)
      if sub in _NORMS and kind == "weight":
        out[f"{layer}/{sub}/scale"] = value
      elif sub in _LAYER_RENAMES:
        leaf = ("kernel", value.T) if kind == "weight" else ("bias", value)
        out[f"{layer}/{_LAYER_RENAMES[sub]}/{leaf[0]}"] = leaf[1]
      else:
        unused.append(src_key)
    else:
      unused.append(src_key)
  return out, unused


def load_qwen2(
    hf_dir: str,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    attention_impl: str = "",
) -> tuple[Qwen2Model, dict]:
  """Loads a Hugging Face Qwen2 directory.

  Args:
    hf_dir: directory with ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``).
    dtype: compute dtype of the returned module.
    param_dtype: dtype the parameters are stored in.
    attention_impl: as models/attention.py.

  Returns:
    ``(module, params)``.

  Raises:
    ValueError: a config the port does not implement, or weights that do not match the config
      (missing, unexpected or mis-shaped tensors are all listed).
  """
  module = qwen2_module_from_hf_config(common.read_json(hf_dir), dtype, attention_impl)
  ids = jnp.zeros((1, 1), jnp.int32)
  params = common.load_hf_params(
      hf_dir, module, convert_qwen2_state_dict, (ids, ids), "Qwen2 checkpoint"
  )
  return module, cast_params(params, param_dtype)


def num_params(cfg: Mapping[str, Any]) -> int:
  """The parameter count of a Qwen2 config (embeddings counted once: tied or not, the port holds
  one table)."""
  v = config_values(cfg)
  d, f, hd = v["hidden_size"], v["intermediate_size"], v["hidden_size"] // v["num_heads"]
  kv = v["num_kv_heads"] * hd
  attn = d * d + d + 2 * (d * kv + kv) + d * d  # q (+bias), k, v (+biases), o
  block = attn + 3 * d * f + 2 * d
  return v["vocab_size"] * d + v["num_layers"] * block + d

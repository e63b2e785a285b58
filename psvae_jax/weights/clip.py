"""Importer for Hugging Face CLIP text checkpoints, plus the shared tokenizer helpers.

Reads a directory written by ``save_pretrained`` of a ``CLIPTextModel``,
``CLIPTextModelWithProjection`` or full ``CLIPModel`` (or a hub snapshot such as
``openai/clip-vit-large-patch14``): ``config.json`` plus ``model.safetensors``
(or ``pytorch_model.bin``). Returns a
:class:`psvae_jax.models.text_encoders.CLIPTextTransformer` and its parameters.

Deliberately ignored source keys: the whole vision tower (``vision_model.*``,
``visual_projection.*``), ``text_projection.*`` and ``logit_scale`` (the DiT
conditions on the un-projected states), and the ``position_ids`` buffer that old
checkpoints store.

``load_tokenizer`` / ``tokenize`` are shared with the T5 importer.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from psvae_jax.models.text_encoders import CLIPTextTransformer
from psvae_jax.weights import common

# transformers.CLIPTextConfig defaults, for keys a config.json leaves out.
_DEFAULTS = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    eos_token_id=49407,
)
_IGNORED_PREFIXES = ("vision_model.", "visual_projection.", "text_projection.")
_IGNORED_KEYS = ("logit_scale", "embeddings.position_ids")
_LAYER_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_LAYER_RENAMES = {
    "self_attn.q_proj": "self_attn/q_proj",
    "self_attn.k_proj": "self_attn/k_proj",
    "self_attn.v_proj": "self_attn/v_proj",
    "self_attn.out_proj": "self_attn/o_proj",
    "mlp.fc1": "fc1",
    "mlp.fc2": "fc2",
}


def cast_params(params: Any, dtype: Any) -> Any:
  """Host (numpy) copies of a parameter tree in `dtype` (e.g. bf16 for a frozen encoder)."""
  dtype = np.dtype(dtype)
  return jax.tree.map(lambda a: np.asarray(a, dtype), params)


def clip_text_module_from_hf_config(
    cfg: Mapping[str, Any], dtype: Any = jnp.float32
) -> CLIPTextTransformer:
  """Builds the module for a ``CLIPTextConfig`` dict or a ``CLIPConfig`` dict."""
  model_type = cfg.get("model_type", "clip_text_model")
  if model_type == "clip":
    cfg = cfg.get("text_config") or {}
  elif model_type != "clip_text_model":
    raise ValueError(f"Not a CLIP config: model_type={model_type!r}")
  c = dict(_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None})
  eos = c["eos_token_id"]
  if isinstance(eos, (list, tuple)):  # transformers allows a list; use the first.
    eos = eos[0]
  return CLIPTextTransformer(
      vocab_size=int(c["vocab_size"]),
      hidden_size=int(c["hidden_size"]),
      num_layers=int(c["num_hidden_layers"]),
      num_heads=int(c["num_attention_heads"]),
      intermediate_size=int(c["intermediate_size"]),
      max_position_embeddings=int(c["max_position_embeddings"]),
      hidden_act=str(c["hidden_act"]),
      layer_norm_eps=float(c["layer_norm_eps"]),
      eos_token_id=int(eos),
      dtype=dtype,
  )


def _param(kind: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """Linear/LayerNorm leaf: weight -> kernel (transposed) or scale."""
  if kind == "bias":
    return "bias", value
  return ("kernel", value.T) if value.ndim == 2 else ("scale", value)


def convert_clip_text_state_dict(
    sd: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], list[str]]:
  """Maps HF CLIP text tensors to flat flax paths.

  Returns:
    ``(converted, unused)``: flat ``{"layers_0/fc1/kernel": array}`` and the
    source keys that were neither converted nor deliberately ignored.
  """
  out: dict[str, np.ndarray] = {}
  unused: list[str] = []
  for src_key, value in sd.items():
    if src_key.startswith(_IGNORED_PREFIXES) or src_key in _IGNORED_KEYS:
      continue
    key = src_key.removeprefix("text_model.")
    value = np.asarray(value, np.float32)
    if key in _IGNORED_KEYS:
      continue
    if key == "embeddings.token_embedding.weight":
      out["token_embedding/embedding"] = value
    elif key == "embeddings.position_embedding.weight":
      out["position_embedding"] = value
    elif key in ("final_layer_norm.weight", "final_layer_norm.bias"):
      out["final_layer_norm/" + ("scale" if key.endswith("weight") else "bias")] = value
    elif (m := _LAYER_RE.match(key)) is not None:
      layer, sub, kind = f"layers_{m.group(1)}", m.group(2), m.group(3)
      if sub in ("layer_norm1", "layer_norm2"):
        out[f"{layer}/{sub}/" + ("scale" if kind == "weight" else "bias")] = value
      elif sub in _LAYER_RENAMES:
        name, leaf = _param(kind, value)
        out[f"{layer}/{_LAYER_RENAMES[sub]}/{name}"] = leaf
      else:
        unused.append(src_key)
    else:
      unused.append(src_key)
  return out, unused


def load_clip_text(
    hf_dir: str, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32
) -> tuple[CLIPTextTransformer, dict]:
  """Loads the CLIP text transformer of a Hugging Face checkpoint directory.

  Args:
    hf_dir: directory with ``config.json`` and ``model.safetensors`` (or
      ``pytorch_model.bin``) of a CLIPTextModel / CLIPModel.
    dtype: compute dtype of the returned module.
    param_dtype: dtype the parameters are stored in (float32, or bfloat16 when frozen).

  Returns:
    ``(module, params)``; ``module.apply({"params": params}, input_ids,
    attention_mask)`` returns ``(hidden (B, L, d), pooled (B, d))``: element 0
    is the contract's token states (transformers' ``last_hidden_state``),
    element 1 its ``pooler_output``.

  Raises:
    ValueError: when the weights do not match the config (missing, unexpected
      or mis-shaped tensors are all listed).
  """
  module = clip_text_module_from_hf_config(common.read_json(hf_dir), dtype=dtype)
  ids = jnp.zeros((1, 1), jnp.int32)
  params = common.load_hf_params(
      hf_dir, module, convert_clip_text_state_dict, (ids, ids), "CLIP text checkpoint"
  )
  return module, cast_params(params, param_dtype)


def load_tokenizer(hf_dir: str) -> Any:
  """The directory's tokenizer, offline, of the class it declares (`data.text.load_local_tokenizer`:
  AutoTokenizer, unless the directory declares the generic fast tokenizer)."""
  from psvae_jax.data import text  # pylint: disable=g-import-not-at-top

  return text.load_local_tokenizer(hf_dir)


def prompt_warnings(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[str]:
  """What the text encoder will not see of each prompt: words its tokenizer maps to the unknown
  token, tokens cut past `max_length`, empty prompts (one line each; [] when all are clean)."""
  out = []
  unk = getattr(tokenizer, "unk_token_id", None)
  for text in dict.fromkeys(texts):  # each distinct prompt once, in order
    label = repr(text if len(text) <= 60 else text[:57] + "...")
    if not text.strip():
      out.append(f"prompt {label} is empty: it conditions like no prompt at all.")
      continue
    ids = tokenizer(text, truncation=False)["input_ids"]
    if len(ids) > max_length:
      out.append(
          f"prompt {label} is {len(ids)} tokens; the text encoder reads the first {max_length}."
      )
    if unk is not None and unk in ids:
      words = [
          w
          for w in text.split()
          if unk in tokenizer(w, add_special_tokens=False, truncation=False)["input_ids"]
      ]
      out.append(f"prompt {label}: unknown to the tokenizer: {', '.join(words) or '(parts)'}.")
  return out


def tokenize(
    tokenizer: Any, texts: Sequence[str], max_length: int
) -> tuple[np.ndarray, np.ndarray]:
  """Tokenizes, truncates and pads to exactly ``max_length``.

  Returns:
    ``(input_ids, attention_mask)``, both int32 ``(B, max_length)``; special
    tokens (CLIP's BOS/EOS, T5's EOS) are kept when truncating.
  """
  enc = tokenizer(
      list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="np"
  )
  return (np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32))

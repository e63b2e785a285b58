"""A tiny offline CLIP-shaped text encoder + word-level tokenizer for the shapes demo.

No pretrained text model can ship with the repository, and the demo runs with no
network. So the demo builds, once, a Hugging Face-format directory holding

* a word-level tokenizer over the synthetic-shapes caption vocabulary
  (``tokenizers`` WordLevel model, lowercase normaliser, Whitespace
  pre-tokenizer, ``[BOS] … [EOS]`` template) saved as a
  ``transformers.PreTrainedTokenizerFast``, and
* a randomly initialised, tiny CLIP text model in ``transformers.CLIPTextModel``
  format: ``config.json`` (a ``CLIPTextConfig``) and ``model.safetensors`` with
  the Hugging Face tensor names and layouts (``text_model.`` prefix, linear
  weights ``(out, in)``), drawn with numpy at CLIP's initialisation scales,

which the regular importers read back (``load_tokenizer`` + ``load_clip_text``),
and which ``transformers.CLIPTextModel.from_pretrained`` loads as well. Nothing
here imports torch (a test-only dependency): the tokenizer side needs only
``tokenizers`` and transformers' tokenizer/config classes.
The encoder stays frozen and random: its token states are a random but
injective function of the words (and of their left context, since CLIP attends
causally), so distinct captions give distinct per-token states; the DiT's
trainable cross-attention (and the pooled vector in its timestep embedding)
learns to read them. That is all the grounding the demo needs.

Special ids: ``[PAD]`` = 0, ``[UNK]`` = 1, ``[BOS]`` = 2, the caption words,
then ``[EOS]`` as the largest id, so CLIP's EOS pooling picks the same position
under either rule transformers uses (first ``eos_token_id`` match, or the
legacy argmax of the ids).
"""

from __future__ import annotations

import itertools
import os

from absl import app
from absl import flags

import numpy as np

from psvae_jax.shapes import world

SPECIALS_BEFORE = ("[PAD]", "[UNK]", "[BOS]")
EOS = "[EOS]"


def shapes_vocabulary() -> list[str]:
  """Every word ``world.caption`` can produce, in order of first appearance."""
  words: list[str] = []
  singles = [
      world.ShapeObject(shape=s, color=c, position=p)
      for c, s, p in itertools.product(world.COLORS, world.SHAPES, world.POSITIONS)
  ]
  pairs = [
      [a, world.ShapeObject(shape=a.shape, color=a.color, position=world.OPPOSITE[a.position])]
      for a in singles
      if a.position in world.OPPOSITE
  ]
  for objects in [[o] for o in singles] + pairs:
    for word in world.caption(objects).lower().split():
      if word not in words:
        words.append(word)
  return words


def _build_tokenizer(vocab_words: list[str], max_length: int):
  """The word-level fast tokenizer (specials around the words, EOS last)."""
  # pylint: disable=g-import-not-at-top
  import tokenizers
  from tokenizers import models, normalizers, pre_tokenizers, processors
  import transformers
  # pylint: enable=g-import-not-at-top
  words = list(dict.fromkeys(w.lower() for w in vocab_words))
  clash = set(words) & set(SPECIALS_BEFORE + (EOS,))
  if clash:
    raise ValueError(f"Vocabulary words clash with special tokens: {sorted(clash)}")
  tokens = list(SPECIALS_BEFORE) + words + [EOS]
  vocab = {t: i for i, t in enumerate(tokens)}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(
      single="[BOS] $A [EOS]",
      pair="[BOS] $A [EOS] $B [EOS]",
      special_tokens=[("[BOS]", vocab["[BOS]"]), (EOS, vocab[EOS])],
  )
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok,
      bos_token="[BOS]",
      eos_token=EOS,
      pad_token="[PAD]",
      unk_token="[UNK]",
      model_max_length=max_length,
      padding_side="right",
      truncation_side="right",
  )


def _random_clip_text_weights(
    vocab_size: int, hidden_size: int, layers: int, max_length: int, seed: int
) -> dict[str, np.ndarray]:
  """Random CLIPTextModel tensors under transformers' names, float32.

  Scales follow ``CLIPPreTrainedModel._init_weights`` (initializer_factor 1):
  embeddings N(0, 0.02); q/k/v and fc2 N(0, d^-0.5 (2 L)^-0.5); out_proj
  N(0, d^-0.5); fc1 N(0, (2 d)^-0.5); biases 0; LayerNorms weight 1, bias 0.
  """
  rng = np.random.default_rng(seed)
  d, ff = hidden_size, 4 * hidden_size
  in_std = d**-0.5 * (2 * layers) ** -0.5

  def normal(shape, std):
    return (std * rng.standard_normal(shape)).astype(np.float32)

  def zeros(n):
    return np.zeros((n,), np.float32)

  def ones(n):
    return np.ones((n,), np.float32)

  sd = {
      "embeddings.token_embedding.weight": normal((vocab_size, d), 0.02),
      "embeddings.position_embedding.weight": normal((max_length, d), 0.02),
  }
  for i in range(layers):
    p = f"encoder.layers.{i}."
    for name, std in (
        ("q_proj", in_std),
        ("k_proj", in_std),
        ("v_proj", in_std),
        ("out_proj", d**-0.5),
    ):
      sd[p + f"self_attn.{name}.weight"] = normal((d, d), std)  # (out, in)
      sd[p + f"self_attn.{name}.bias"] = zeros(d)
    sd[p + "mlp.fc1.weight"] = normal((ff, d), (2 * d) ** -0.5)
    sd[p + "mlp.fc1.bias"] = zeros(ff)
    sd[p + "mlp.fc2.weight"] = normal((d, ff), in_std)
    sd[p + "mlp.fc2.bias"] = zeros(d)
    for norm in ("layer_norm1", "layer_norm2"):
      sd[p + f"{norm}.weight"] = ones(d)
      sd[p + f"{norm}.bias"] = zeros(d)
  sd["final_layer_norm.weight"] = ones(d)
  sd["final_layer_norm.bias"] = zeros(d)
  return {"text_model." + k: v for k, v in sd.items()}


def build_demo_text_encoder(
    out_dir: str,
    vocab_words: list[str],
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 2,
    max_length: int = 16,
    seed: int = 0,
) -> str:
  """Writes the demo tokenizer and a random tiny CLIP text model to ``out_dir``.

  Needs no torch: the weights are numpy arrays written with
  ``safetensors.numpy``.

  Args:
    out_dir: directory to create (files in it are overwritten).
    vocab_words: the words the tokenizer knows (e.g. ``shapes_vocabulary()``);
      anything else maps to ``[UNK]``.
    hidden_size: encoder width (MLP width is 4x).
    layers: encoder layers.
    heads: attention heads (must divide ``hidden_size``).
    max_length: token positions, BOS and EOS included.
    seed: seed of the numpy generator that draws the weights.

  Returns:
    ``out_dir``, readable by ``load_tokenizer`` and ``load_clip_text`` (and by
    ``transformers`` ``AutoTokenizer`` / ``CLIPTextModel.from_pretrained``).
  """
  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file
  import transformers
  # pylint: enable=g-import-not-at-top
  if hidden_size % heads:
    raise ValueError(f"heads={heads} does not divide hidden_size={hidden_size}")
  os.makedirs(out_dir, exist_ok=True)
  tokenizer = _build_tokenizer(vocab_words, max_length)
  tokenizer.save_pretrained(out_dir)
  vocab_size = len(tokenizer)
  config = transformers.CLIPTextConfig(
      vocab_size=vocab_size,
      hidden_size=hidden_size,
      intermediate_size=4 * hidden_size,
      num_hidden_layers=layers,
      num_attention_heads=heads,
      max_position_embeddings=max_length,
      hidden_act="quick_gelu",
      layer_norm_eps=1e-5,
      pad_token_id=tokenizer.pad_token_id,
      bos_token_id=tokenizer.bos_token_id,
      eos_token_id=tokenizer.eos_token_id,
      architectures=["CLIPTextModel"],
  )
  config.to_json_file(os.path.join(out_dir, "config.json"))
  weights = _random_clip_text_weights(vocab_size, hidden_size, layers, max_length, seed)
  # "format": "pt" marks the usual transformers layout (older releases insist).
  save_file(weights, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  return out_dir


def _random_qwen2_weights(
    vocab_size: int, hidden_size: int, layers: int, heads: int, kv_heads: int, ff: int, seed: int
) -> dict[str, np.ndarray]:
  """Random Qwen2Model tensors under transformers' names, float32, as
  ``Qwen2PreTrainedModel._init_weights`` draws them: linear and embedding weights N(0, 0.02),
  biases 0, RMSNorm weights 1."""
  rng = np.random.default_rng(seed)
  d, kv = hidden_size, kv_heads * (hidden_size // heads)
  normal = lambda *shape: (0.02 * rng.standard_normal(shape)).astype(np.float32)
  sd = {"embed_tokens.weight": normal(vocab_size, d), "norm.weight": np.ones(d, np.float32)}
  for i in range(layers):
    p = f"layers.{i}."
    for name, out in (("q_proj", d), ("k_proj", kv), ("v_proj", kv)):
      sd[p + f"self_attn.{name}.weight"] = normal(out, d)  # (out, in)
      sd[p + f"self_attn.{name}.bias"] = np.zeros(out, np.float32)
    sd[p + "self_attn.o_proj.weight"] = normal(d, d)
    sd[p + "mlp.gate_proj.weight"] = normal(ff, d)
    sd[p + "mlp.up_proj.weight"] = normal(ff, d)
    sd[p + "mlp.down_proj.weight"] = normal(d, ff)
    for norm in ("input_layernorm", "post_attention_layernorm"):
      sd[p + f"{norm}.weight"] = np.ones(d, np.float32)
  return sd


def build_demo_qwen2(
    out_dir: str,
    vocab_words: list[str],
    hidden_size: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 512,
    max_length: int = 16,
    seed: int = 0,
) -> str:
  """Writes the demo tokenizer and a random tiny Qwen2 model to ``out_dir``: the blocks of the
  demo world's fusion generator (configs/dit.py:tiny_fusion, `--config.generator.weights`).

  The same word-level tokenizer as the demo text encoder's; the weights as transformers
  initialises a ``Qwen2Model`` (numpy, written with ``safetensors.numpy``: no torch). Readable by
  ``weights/qwen2.load_qwen2`` and by transformers' ``AutoTokenizer`` / ``Qwen2Model``.
  Returns ``out_dir``.
  """
  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file
  import transformers
  # pylint: enable=g-import-not-at-top
  if hidden_size % heads or heads % kv_heads:
    raise ValueError(
        f"heads={heads} must divide hidden_size={hidden_size}, kv_heads={kv_heads} heads"
    )
  os.makedirs(out_dir, exist_ok=True)
  tokenizer = _build_tokenizer(vocab_words, max_length)
  tokenizer.save_pretrained(out_dir)
  vocab_size = len(tokenizer)
  config = transformers.Qwen2Config(
      vocab_size=vocab_size,
      hidden_size=hidden_size,
      intermediate_size=intermediate_size,
      num_hidden_layers=layers,
      num_attention_heads=heads,
      num_key_value_heads=kv_heads,
      max_position_embeddings=4 * max_length,
      rms_norm_eps=1e-6,
      tie_word_embeddings=False,
      pad_token_id=tokenizer.pad_token_id,
      bos_token_id=tokenizer.bos_token_id,
      eos_token_id=tokenizer.eos_token_id,
      architectures=["Qwen2Model"],
  )
  config.to_json_file(os.path.join(out_dir, "config.json"))
  weights = _random_qwen2_weights(
      vocab_size, hidden_size, layers, heads, kv_heads, intermediate_size, seed
  )
  save_file(weights, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  return out_dir


def main(argv: list[str]) -> None:
  """`python -m psvae_jax.shapes.text --out=DIR [--qwen2]`: the demo's text encoder (or, with
  --qwen2, the tiny fusion generator's Qwen2 blocks), for stage 3 by hand."""
  del argv
  if flags.FLAGS.qwen2:
    out = build_demo_qwen2(flags.FLAGS.out, shapes_vocabulary())
    print(f"wrote the demo's tiny Qwen2 (random, shapes vocabulary) to {out}")
    return
  out = build_demo_text_encoder(flags.FLAGS.out, shapes_vocabulary())
  print(f"wrote the demo text encoder (random CLIP-shaped, shapes vocabulary) to {out}")


if __name__ == "__main__":
  flags.DEFINE_string("out", None, "Output directory (tokenizer + model.safetensors).")
  flags.DEFINE_bool("qwen2", False, "A tiny random Qwen2 (configs/dit.py:tiny_fusion) instead.")
  flags.mark_flag_as_required("out")
  app.run(main)

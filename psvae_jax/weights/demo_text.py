"""A tiny offline CLIP-shaped text encoder + word-level tokenizer for the shapes demo.

No pretrained text model can ship with the repository, and the demo runs with no
network. So the demo builds, once, a Hugging Face-format directory holding

* a word-level tokenizer over the synthetic-shapes caption vocabulary
  (``tokenizers`` WordLevel model, lowercase normaliser, Whitespace
  pre-tokenizer, ``[BOS] … [EOS]`` template) saved as a
  ``transformers.PreTrainedTokenizerFast``, and
* a randomly initialised, tiny ``transformers.CLIPTextModel`` saved with
  ``save_pretrained`` (safetensors),

which the regular importers read back (``load_tokenizer`` + ``load_clip_text``).
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

from psvae_jax.data import shapes

SPECIALS_BEFORE = ("[PAD]", "[UNK]", "[BOS]")
EOS = "[EOS]"


def shapes_vocabulary() -> list[str]:
  """Every word ``shapes.caption`` can produce, in order of first appearance."""
  words: list[str] = []
  singles = [shapes.ShapeObject(shape=s, color=c, position=p)
             for c, s, p in itertools.product(shapes.COLORS, shapes.SHAPES,
                                              shapes.POSITIONS)]
  pairs = [[a, shapes.ShapeObject(shape=a.shape, color=a.color,
                                  position=shapes.OPPOSITE[a.position])]
           for a in singles if a.position in shapes.OPPOSITE]
  for objects in [[o] for o in singles] + pairs:
    for word in shapes.caption(objects).lower().split():
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
      single="[BOS] $A [EOS]", pair="[BOS] $A [EOS] $B [EOS]",
      special_tokens=[("[BOS]", vocab["[BOS]"]), (EOS, vocab[EOS])])
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="[BOS]", eos_token=EOS,
      pad_token="[PAD]", unk_token="[UNK]", model_max_length=max_length,
      padding_side="right", truncation_side="right")


def build_demo_text_encoder(out_dir: str, vocab_words: list[str],
                            hidden_size: int = 64, layers: int = 2, heads: int = 2,
                            max_length: int = 16, seed: int = 0) -> str:
  """Writes the demo tokenizer and a random tiny CLIPTextModel to ``out_dir``.

  Args:
    out_dir: directory to create (files in it are overwritten).
    vocab_words: the words the tokenizer knows (e.g. ``shapes_vocabulary()``);
      anything else maps to ``[UNK]``.
    hidden_size: encoder width (MLP width is 4x).
    layers: encoder layers.
    heads: attention heads.
    max_length: token positions, BOS and EOS included.
    seed: torch seed of the random initialisation.

  Returns:
    ``out_dir``, readable by ``load_tokenizer`` and ``load_clip_text``.
  """
  # pylint: disable=g-import-not-at-top
  import torch
  import transformers
  # pylint: enable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  tokenizer = _build_tokenizer(vocab_words, max_length)
  tokenizer.save_pretrained(out_dir)
  config = transformers.CLIPTextConfig(
      vocab_size=len(tokenizer), hidden_size=hidden_size,
      intermediate_size=4 * hidden_size, num_hidden_layers=layers,
      num_attention_heads=heads, max_position_embeddings=max_length,
      hidden_act="quick_gelu", pad_token_id=tokenizer.pad_token_id,
      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
  torch.manual_seed(seed)
  model = transformers.CLIPTextModel(config).eval()
  model.save_pretrained(out_dir, safe_serialization=True)
  return out_dir

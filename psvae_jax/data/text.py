"""Captions: decoding and repair of raw caption text, and tokenization.

`clean_caption` turns what a source stored (str, bytes, None, or a list of
alternatives) into clean text and reports what it had to do, as counter names:
  * "caption_missing": no caption at all (None, no sidecar file, no jsonl entry);
  * "caption_empty": a caption that is empty or only whitespace;
  * "repaired_caption_encoding": bytes that are not UTF-8, decoded as cp1252 (the most
    common legacy encoding), else latin-1 (which never fails);
  * "repaired_caption_truncated": longer than `max_chars`, cut at the last word boundary.
Whitespace runs (newlines, tabs) collapse to one space; control characters are dropped.
The pipeline then keeps missing / empty captions as "" or skips the record
(`data.empty_captions`).

`CaptionTokenizer` wraps a `transformers` tokenizer read from a local directory only
(never downloaded) and pads / truncates to a fixed length; `make_tokenizer` builds the
configured one (`data.tokenizer`, `data.max_length`).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

from psvae_jax.data import config

CAPTION_MISSING = "caption_missing"
CAPTION_EMPTY = "caption_empty"
REPAIRED_ENCODING = "repaired_caption_encoding"
REPAIRED_TRUNCATED = "repaired_caption_truncated"

_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def decode_text(raw: bytes) -> tuple[str, bool]:
  """UTF-8 if valid, else cp1252, else latin-1; returns (text, repaired)."""
  try:
    return raw.decode("utf-8"), False
  except UnicodeDecodeError:
    pass
  try:
    return raw.decode("cp1252"), True
  except UnicodeDecodeError:
    return raw.decode("latin-1"), True


def pick_caption(raw: Any, rng: np.random.Generator | None) -> Any:
  """One of several alternative captions (random with rng, else the first)."""
  if isinstance(raw, np.ndarray):
    raw = raw.tolist() if raw.ndim else raw.item()
  if isinstance(raw, (list, tuple)):
    if not raw:
      return None
    return raw[int(rng.integers(len(raw)))] if rng is not None else raw[0]
  return raw


def truncate(text: str, max_chars: int) -> str:
  """At most max_chars characters, cut at a space when one is near the end."""
  cut = text[:max_chars]
  space = cut.rfind(" ")
  return cut[:space] if space >= max_chars * 0.8 else cut


def clean_caption(
    raw: Any, max_chars: int, rng: np.random.Generator | None = None
) -> tuple[str, list[str]]:
  """Raw caption -> (clean text, list of what was missing / repaired)."""
  raw = pick_caption(raw, rng)
  if raw is None:
    return "", [CAPTION_MISSING]
  kinds = []
  if isinstance(raw, (bytes, bytearray)):
    raw, repaired = decode_text(bytes(raw))
    if repaired:
      kinds.append(REPAIRED_ENCODING)
  text = " ".join(_CONTROL.sub("", str(raw)).split())
  if not text:
    return "", kinds + [CAPTION_EMPTY]
  if len(text) > max_chars:
    text = truncate(text, max_chars)
    kinds.append(REPAIRED_TRUNCATED)
  return text, kinds


# The generic tokenizer classes a directory can declare (transformers 5 writes "TokenizersBackend").
_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_local_tokenizer(path: str) -> Any:
  """The directory's tokenizer, offline, as the directory declares it. transformers'
  AutoTokenizer picks the tokenizer class of config.json's model type over tokenizer_config.json's
  own: a word-level tokenizer saved beside a Qwen2 config (the demo's tiny fusion generator) came
  back as Qwen2's byte-level one and read every prompt as one unknown token. A directory that
  declares the generic class is loaded with it; any other through AutoTokenizer."""
  import transformers  # pylint: disable=g-import-not-at-top

  declared = ""
  config = os.path.join(path, "tokenizer_config.json")
  if os.path.isfile(config):
    with open(config, encoding="utf-8") as f:
      declared = json.load(f).get("tokenizer_class", "")
  if declared in _GENERIC_TOKENIZERS:
    return transformers.PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
  return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


class CaptionTokenizer:
  """A local `transformers` tokenizer, padded / truncated to `max_length` tokens.

  Loaded lazily (and again after pickling, e.g. in grain worker processes). Tokenizers
  without a pad token pad with their end-of-sequence token.
  """

  def __init__(self, path: str, max_length: int):
    if max_length <= 0:
      raise ValueError(f"data.max_length must be positive, got {max_length}.")
    self.path = str(path)
    self.max_length = int(max_length)
    self._tokenizer = None

  def load(self) -> Any:
    """Loads the tokenizer now (raises ValueError if the directory has none)."""
    if self._tokenizer is None:
      try:
        tokenizer = load_local_tokenizer(self.path)
      except (OSError, ValueError) as e:
        raise ValueError(
            f"No tokenizer could be loaded from the local directory "
            f"{self.path!r} (data.tokenizer): {e}"
        ) from e
      if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
      self._tokenizer = tokenizer
    return self._tokenizer

  def __call__(self, text: str) -> dict[str, np.ndarray]:
    """{"input_ids", "attention_mask"}: int32 (max_length,)."""
    out = self.load()(text, padding="max_length", truncation=True, max_length=self.max_length)
    return {
        "input_ids": np.asarray(out["input_ids"], np.int32),
        "attention_mask": np.asarray(out["attention_mask"], np.int32),
    }

  def __getstate__(self) -> dict[str, Any]:
    return {"path": self.path, "max_length": self.max_length, "_tokenizer": None}


def make_tokenizer(data_cfg: Any) -> CaptionTokenizer | None:
  """The tokenizer of `data.tokenizer` ("": none), loaded now so a bad directory fails
  early."""
  cfg = config.complete(data_cfg)
  if not cfg.tokenizer:
    return None
  tokenizer = CaptionTokenizer(cfg.tokenizer, cfg.max_length)
  tokenizer.load()
  return tokenizer


def resolve_label_names(class_names: list[str], names_file: str = "") -> list[str]:
  """Human-readable class names.

  Without a file, the dataset's own names. A file holds either one name per line in
  label order, or "<class id> <name>[, <synonym>...]" lines keyed by the dataset's class
  names (e.g. ImageNet's LOC_synset_mapping.txt: "n01440764 tench, Tinca tinca"). Only
  the first of comma-separated synonyms is kept.
  """
  if not names_file:
    return list(class_names)
  with open(names_file, "rb") as f:
    lines = [decode_text(line)[0].strip() for line in f]
  lines = [line for line in lines if line]
  keyed = dict(line.split(maxsplit=1) for line in lines if len(line.split(maxsplit=1)) == 2)
  if class_names and all(name in keyed for name in class_names):
    names = [keyed[name] for name in class_names]
  elif not class_names or len(lines) == len(class_names):
    names = lines
  else:
    raise ValueError(
        f"{names_file}: {len(lines)} names for {len(class_names)} classes, and "
        "its lines are not keyed by the class names."
    )
  return [name.split(",")[0].strip() for name in names]


class LabelCaptioner:
  """Label -> caption from a template, e.g. "a photo of a {}" (None for unlabelled)."""

  def __init__(self, names: list[str], template: str = "{}"):
    self._names = list(names)
    self._template = template or "{}"

  def __call__(self, label: int) -> str | None:
    if not 0 <= label < len(self._names):
      return None
    return self._template.format(self._names[label].replace("_", " "))

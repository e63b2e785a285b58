"""Random-access source over a prepared TensorFlow Datasets dataset (ArrayRecord files).

Reads any tfds dataset prepared in the ArrayRecord format through
`tfds.data_source` (no TensorFlow import, no tf.data): images are returned as their
encoded bytes and decoded by the pipeline with PIL.

Preparing data (once, on any machine with the raw files; no download happens here):
  * ImageNet (manual download: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
    in MANUAL_DIR):
      tfds build imagenet2012 --manual_dir=MANUAL_DIR --data_dir=DATA_DIR \
          --file_format=array_record
    then `data.source="tfds"`, `data.tfds_name="imagenet2012"`, `data.path=DATA_DIR`,
    `data.eval_split="validation"`. Its class names are WordNet ids (n01440764);
    `data.label_names=FILE` maps them to words (one name per line in label order, or
    "n01440764 tench, Tinca tinca" lines as in LOC_synset_mapping.txt: the first name is
    used), and `data.label_captions=True` makes them the captions.
  * COCO captions: `tfds build coco_captions --data_dir=DATA_DIR --file_format=array_record`
    (one of the five captions per image is drawn at random each time a record is read).
  * a dataset already prepared as TFRecord: convert it with
      tfds convert_format --dataset_version_dir=DATA_DIR/NAME/VERSION \
          --out_file_format=array_record
  * an image folder: `python -m psvae_jax.data.prepare --src=FOLDER --out=DATA_DIR`
    (see psvae_jax/data/prepare.py).

Keys are found automatically (the first Image feature; a Text feature named like
"caption" / "text", also inside a Sequence such as coco's "captions/text"; the first
ClassLabel) or set with `data.image_key`, `data.caption_key`, `data.label_key`
("a/b" for nested features).
"""

from __future__ import annotations

import pathlib
from typing import Any

from absl import logging
import numpy as np

from psvae_jax.data import text

Record = dict[str, Any]


def prepare_hint(name: str, data_dir: str | None) -> str:
  """The command that prepares `name` as ArrayRecord."""
  data_dir = data_dir or "~/tensorflow_datasets"
  manual = (
      " --manual_dir=MANUAL_DIR"
      if name.split(":")[0].split("/")[0]
      in ("imagenet2012", "imagenet2012_subset", "imagenet_resized")
      else ""
  )
  return f"tfds build {name}{manual} --data_dir={data_dir} --file_format=array_record" + (
      "  (MANUAL_DIR holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar)" if manual else ""
  )


def load_builder(name: str, data_dir: str | None) -> Any:
  """A prepared builder: by name (in data_dir), or from a builder directory."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if data_dir and (pathlib.Path(data_dir).expanduser() / "dataset_info.json").is_file():
    return tfds.builder_from_directory(str(pathlib.Path(data_dir).expanduser()))
  if not name:
    raise ValueError(
        "data.source='tfds' needs data.tfds_name (e.g. 'imagenet2012'), or "
        "data.path set to a prepared dataset directory (with dataset_info.json)."
    )
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise FileNotFoundError(
        f"tfds dataset {name!r} is neither registered nor prepared in data_dir="
        f"{data_dir!r}. Prepare it with:\n  {prepare_hint(name, data_dir)}\nor, for an "
        "image folder: python -m psvae_jax.data.prepare --src=FOLDER --out=DATA_DIR"
    ) from e
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"tfds dataset {name!r} is not prepared in {builder.data_dir}. Prepare it with:\n"
        f"  {prepare_hint(name, data_dir)}"
    )
  return builder


def _flatten(
    features: Any, prefix: str = "", in_sequence: bool = False
) -> dict[str, tuple[Any, bool]]:
  """{"a/b": (feature, inside a Sequence)} over nested FeaturesDict / Sequence."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  out = {}
  if isinstance(features, tfds.features.FeaturesDict):
    for key, feature in features.items():
      out.update(_flatten(feature, f"{prefix}{key}/", in_sequence))
  elif isinstance(features, tfds.features.Sequence):
    out.update(_flatten(features.feature, prefix, True))
  else:
    out[prefix.rstrip("/")] = (features, in_sequence)
  return out


def find_keys(features: Any) -> dict[str, str]:
  """Auto-detected {"image", "caption", "label"} keys ("" where absent).

  Image and label must be per-example (not inside a Sequence, e.g. coco's per-object
  labels); captions may be a Sequence of alternatives (coco's "captions/text").
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  flat = _flatten(features)
  of_type = lambda cls, seq_ok: [
      k for k, (f, seq) in flat.items() if isinstance(f, cls) and (seq_ok or not seq)
  ]
  images = of_type(tfds.features.Image, False)
  texts = of_type(tfds.features.Text, True)
  labels = of_type(tfds.features.ClassLabel, False)
  caption = next((k for word in ("caption", "text") for k in texts if word in k.lower()), "")
  return {
      "image": images[0] if images else "",
      "caption": caption,
      "label": "label" if "label" in labels else (labels[0] if labels else ""),
  }


def _get(record: Any, key: str) -> Any:
  for part in key.split("/"):
    record = record[part]
  return record


class TfdsSource:
  """Records {"image": encoded bytes, "caption": bytes | list | None, "label": int}."""

  def __init__(
      self,
      name: str,
      split: str,
      data_dir: str | None = None,
      *,
      image_key: str = "",
      caption_key: str = "",
      label_key: str = "",
      label_captions: bool = False,
      label_names: str = "",
      label_template: str = "{}",
  ):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = load_builder(name, data_dir)
    self._name = builder.name
    if split not in builder.info.splits:
      raise ValueError(
          f"tfds dataset {self._name!r} has no split {split!r} (has "
          f"{sorted(builder.info.splits)}): set data.train_split / eval_split."
      )
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format is not None and file_format != "array_record":
      raise ValueError(
          f"tfds dataset {self._name!r} in {builder.data_dir} is stored as {file_format}; "
          "random access needs ArrayRecord. Convert it with:\n  tfds convert_format "
          f"--dataset_version_dir={builder.data_dir} --out_file_format=array_record"
      )
    found = find_keys(builder.info.features)
    self._keys = {
        "image": image_key or found["image"],
        "caption": caption_key or found["caption"],
        "label": label_key or found["label"],
    }
    if not self._keys["image"]:
      raise ValueError(f"tfds dataset {self._name!r} has no Image feature; set data.image_key.")
    self._split = split
    self._source = builder.as_data_source(
        split=split, decoders={self._keys["image"]: tfds.decode.SkipDecoding()}
    )
    class_names = []
    if self._keys["label"]:
      label_feature = _flatten(builder.info.features)[self._keys["label"]][0]
      class_names = list(getattr(label_feature, "names", []) or [])
    self.class_names = text.resolve_label_names(class_names, label_names)
    self._captioner = (
        text.LabelCaptioner(self.class_names, label_template) if (label_captions) else None
    )
    if label_captions and not self.class_names:
      raise ValueError(f"data.label_captions needs class names; {self._name!r} has none.")
    logging.info(
        "TfdsSource %s[%s]: %d records, keys %s.", self._name, split, len(self._source), self._keys
    )

  def __len__(self) -> int:
    return len(self._source)

  @property
  def has_captions(self) -> bool:
    """Whether records can carry captions (a caption feature or label captions)."""
    return self._captioner is not None or bool(self._keys["caption"])

  def __getitem__(self, index: int) -> Record:
    raw = self._source[int(index)]
    label = int(np.asarray(_get(raw, self._keys["label"]))) if self._keys["label"] else -1
    if self._captioner is not None:
      caption = self._captioner(label)
    elif self._keys["caption"]:
      caption = _get(raw, self._keys["caption"])
    else:
      caption = None
    return {
        "image": _get(raw, self._keys["image"]),
        "caption": caption,
        "label": label,
        "key": f"{self._name}[{self._split}][{int(index)}]",
    }

  def __repr__(self) -> str:
    return f"TfdsSource({self._name!r}, split={self._split!r}, n={len(self)})"

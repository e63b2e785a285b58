"""Converter: an image folder -> a TensorFlow Datasets dataset in ArrayRecord format.

  python -m psvae_jax.data.prepare --src=FOLDER --out=DATA_DIR [--name=NAME] \
      [--num_eval=N] [--verify]

The folder is read exactly as `data.source="folder"` reads it (class subfolders give
labels, captions from captions.jsonl or .txt sidecars, optional train/ and val/ split
subfolders, else `--num_eval` images held out with a seeded permutation). Splits are
written as "train" and "validation". Each record holds the file's encoded bytes as is
("image"), the caption ("caption", empty when missing; bytes that are not UTF-8 are
kept and repaired at read time), "label" (a ClassLabel named after the subfolders, or
-1 without classes) and "file_name". tfds shuffles records at write time, so the
contiguous per-process shards of the reader mix all classes, and ArrayRecord gives fast
random access to big datasets.

Files that are empty or not images are left out (header check, no decoding); with
--verify every image is fully decoded first, so truncated files are left out too. The
summary line says how many examples each split got, how many were left out and why, and
(without --verify) how many were kept unverified: a truncated file among those is skipped
and counted at training time. A split left with no usable image ends the run with one
line and exit status 1 (nothing is written).
Read the result with `data.source="tfds"`, `data.tfds_name=NAME`, `data.path=DATA_DIR`
(or `tfds.data_source(NAME, split="train", data_dir=DATA_DIR)`, or
`tfds.builder_from_directory(DATA_DIR/NAME/1.0.0)`).
"""

from __future__ import annotations

import collections
import pathlib
import re
import sys
import tempfile
import time
from typing import Any, Iterator

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from psvae_jax.data import decode
from psvae_jax.data import sources


def define_flags() -> None:
  """Defines the app's flags (not at import, so other apps can import this module)."""
  flags.DEFINE_string("src", None, "Image folder.")
  flags.DEFINE_string("out", None, "tfds data_dir to write into.")
  flags.DEFINE_string("name", "", "Dataset name (default: from the folder name).")
  flags.DEFINE_integer(
      "num_eval",
      0,
      "Held-out images when the folder has no val/ " "subfolder (0: no validation split).",
  )
  flags.DEFINE_bool("verify", False, "Decode every image; leave out corrupt ones.")
  flags.DEFINE_integer("seed", 0, "Seed of the held-out permutation.")
  flags.mark_flags_as_required(["src", "out"])


def dataset_name(folder: str) -> str:
  """A valid tfds name (snake_case, starting with a letter) from a folder path."""
  name = re.sub(r"[^a-z0-9]+", "_", pathlib.Path(folder).expanduser().resolve().name.lower())
  name = name.strip("_") or "images"
  return name if name[0].isalpha() else f"d_{name}"


def check_image(data: bytes, verify: bool) -> str | None:
  """None if the bytes look like a usable image, else the skip kind."""
  try:
    if verify:
      decode.decode_bytes(
          data, min_decode_size=1, max_pixels=2**62, min_size=1, background=(0, 0, 0)
      )
    else:
      with decode.open_image(data):  # Header only.
        pass
  except decode.BadImage as e:
    return e.kind
  return None


_PROGRESS_EVERY_S = 5.0  # seconds between progress lines


class FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes the splits of an image folder (sources) as a tfds dataset."""

  def __init__(
      self,
      *,
      name: str,
      splits: dict[str, Any],
      class_names: list[str],
      verify: bool = False,
      **kwargs: Any,
  ):
    self.name = name
    self.VERSION = tfds.core.Version("1.0.0")  # pylint: disable=invalid-name
    self._splits = splits
    self._class_names = class_names
    self._verify = verify
    self.skipped: collections.Counter = collections.Counter()
    self.kept: collections.Counter = collections.Counter()  # examples written, per split
    self.summary = ""  # the one-line summary `convert` leaves
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:  # pylint: disable=invalid-overridden-method
    # No checksums file; also avoids tfds' lookup that needs `importlib_resources`.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    label = (
        tfds.features.ClassLabel(names=self._class_names)
        if self._class_names
        else tfds.features.Scalar(dtype=np.int64)
    )
    return tfds.core.DatasetInfo(
        builder=self,
        description="Image folder converted by psvae_jax.data.prepare.",
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3)),
                "caption": tfds.features.Text(),
                "label": label,
                "file_name": tfds.features.Text(),
            }
        ),
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
    del dl_manager
    return {split: self._generate_examples(source, split) for split, source in self._splits.items()}

  def _generate_examples(self, source: Any, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    # Each split folder numbers its own classes: map them to the union's indices.
    remap = {i: self._class_names.index(n) for i, n in enumerate(source.class_names)}
    total, t0, shown = len(source), time.time(), time.time()
    for index in range(total):
      if time.time() - shown >= _PROGRESS_EVERY_S:  # progress with rate and time left
        shown = time.time()
        rate = index / max(shown - t0, 1e-9)
        logging.info(
            "prepare: %s %d/%d images, %.0f images/s, about %.0f s left.",
            split,
            index,
            total,
            rate,
            (total - index) / max(rate, 1e-9),
        )
      record = source[index]
      path = record["path"]
      data = pathlib.Path(path).read_bytes()
      kind = check_image(data, self._verify)
      if kind:
        self.skipped[kind] += 1
        logging.warning("Leaving out %s: %s", path, kind)
        continue
      caption = record["caption"]
      if isinstance(caption, list):
        caption = caption[0] if caption else None
      if caption is None:
        self.skipped["caption_missing"] += 1  # Kept with an empty caption.
      if self._class_names and record["label"] < 0:
        self.skipped["unlabelled_beside_classes"] += 1  # ClassLabel has no -1.
        continue
      self.kept[split] += 1
      yield path, {
          "image": data,
          "caption": caption if caption is not None else "",
          "label": remap.get(record["label"], -1),
          "file_name": path,
      }


def convert(
    src: str, out: str, *, name: str = "", num_eval: int = 0, verify: bool = False, seed: int = 0
) -> Any:
  """Writes `src` into `out`/NAME/1.0.0 as ArrayRecord; returns the tfds builder."""
  name = name or dataset_name(src)
  # num_train=0: every image (the data config's default caps at num_train).
  cfg = {"source": "folder", "path": src, "num_train": 0, "num_eval": num_eval, "seed": seed}
  splits = {"train": sources.get_source(cfg, "train")}
  try:
    splits["validation"] = sources.get_source(cfg, "eval")
  except ValueError:  # No val/ subfolder and num_eval == 0.
    pass
  class_names = sorted({n for s in splits.values() for n in s.class_names})
  builder = FolderBuilder(
      name=name,
      splits=splits,
      class_names=class_names,
      verify=verify,
      data_dir=out,
      file_format="array_record",
  )
  tfds.disable_progress_bar()
  with tempfile.TemporaryDirectory() as downloads:
    try:
      builder.download_and_prepare(download_dir=downloads)
    except Exception as e:  # pylint: disable=broad-exception-caught
      empty = [split for split in splits if not builder.kept[split]]
      if not empty:
        raise
      _remove_empty_dirs(pathlib.Path(builder.data_dir), pathlib.Path(out))
      raise PrepareError(
          f"{src}: no usable image in the {' and '.join(empty)} split "
          f"({_left_out(builder)}); nothing written."
      ) from e
  kept = {k: v.num_examples for k, v in builder.info.splits.items()}
  summary = f"Wrote {name} {kept} to {builder.data_dir}; {_left_out(builder)}"
  if not verify:
    summary += (
        f"; {sum(kept.values())} kept unverified (header check only: a truncated file is "
        "skipped at training time; --verify decodes every image)"
    )
  builder.summary = summary + "."
  logging.info("%s", builder.summary)
  return builder


def _remove_empty_dirs(path: pathlib.Path, stop: pathlib.Path) -> None:
  """Removes `path` and its parents up to (not including) `stop` while they are empty."""
  stop = stop.expanduser().resolve()
  path = path.expanduser().resolve()
  while path != stop and stop in path.parents:
    if path.is_dir() and not any(path.iterdir()):
      path.rmdir()
    elif path.exists():
      return
    path = path.parent


class PrepareError(ValueError):
  """Nothing usable to write (the message is one line)."""


def _left_out(builder: FolderBuilder) -> str:
  out = {k: v for k, v in builder.skipped.items() if k != "caption_missing"}
  text = f"left out {sum(out.values())}" + (f" {dict(out)}" if out else "")
  if builder.skipped.get("caption_missing"):
    text += f", {builder.skipped['caption_missing']} kept without caption"
  return text


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  try:
    builder = convert(f.src, f.out, name=f.name, num_eval=f.num_eval, verify=f.verify, seed=f.seed)
  except (PrepareError, FileNotFoundError) as e:
    sys.exit(f"prepare: {e}")
  print(builder.summary)


if __name__ == "__main__":
  define_flags()
  app.run(main)

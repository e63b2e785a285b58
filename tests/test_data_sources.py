"""Sources: image-text folders, tfds ArrayRecord datasets, the folder converter."""

import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from psvae_jax.data import pipeline
from psvae_jax.data import prepare
from psvae_jax.data import sources

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _save(path, seed, size=(20, 24)):
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
  Image.fromarray(pixels).save(path)


def _png_bytes(seed, size=(20, 24)):
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)).save(
      buf, format="PNG"
  )
  return buf.getvalue()


def test_image_text_folder_captions(tmp_path):
  for i in range(4):
    _save(tmp_path / f"img{i}.png", i)
  lines = [
      json.dumps({"file": "img0.png", "caption": "zero"}),
      json.dumps({"file": "img1.png", "caption": "one a"}),
      json.dumps({"file": "img1.png", "caption": "one b"}),  # Alternatives.
      json.dumps({"file": "./img2.png", "caption": "from jsonl"}),
  ]
  raw = "\n".join(lines).encode() + b'\n{"file": "img3.png", "caption": "caf\xe9"}\n'
  (tmp_path / "captions.jsonl").write_bytes(raw)  # Last line is not UTF-8.
  (tmp_path / "img2.txt").write_text("sidecar loses to jsonl")
  source = sources.ImageFolderSource(tmp_path)
  captions = [source[i]["caption"] for i in range(4)]
  assert captions == ["zero", ["one a", "one b"], "from jsonl", b"caf\xe9"]
  cfg = dict(source="folder", path=str(tmp_path), image_size=16, num_train=0, num_eval=0, seed=0)
  it = pipeline.build_train_iterator(cfg, global_batch_size=4, seed=0)
  seen = {c for _ in range(6) for c in next(it)["caption"]}
  assert seen == {"zero", "one a", "one b", "from jsonl", "café"}
  assert it.counters()["repaired_caption_encoding"] >= 5
  (tmp_path / "captions.jsonl").unlink()
  assert sources.ImageFolderSource(tmp_path)[2]["caption"] == b"sidecar loses to jsonl"
  assert sources.ImageFolderSource(tmp_path)[0]["caption"] is None


def test_class_folders_with_label_captions(tmp_path):
  for i, cls in enumerate(["n001", "n001", "n002"]):
    _save(tmp_path / cls / f"{i}.jpg", i)
  names = tmp_path / "names.txt"
  names.write_text("n002 tabby cat, cat\nn001 tench, Tinca tinca\n")
  cfg = dict(
      source="folder",
      path=str(tmp_path),
      image_size=16,
      num_train=0,
      num_eval=0,
      seed=0,
      label_captions=True,
      label_names=str(names),
      label_template="a photo of a {}",
  )
  source = sources.get_source(cfg, "train")
  assert [(r["label"], r["caption"]) for r in map(source.__getitem__, range(3))] == [
      (0, "a photo of a tench"),
      (0, "a photo of a tench"),
      (1, "a photo of a tabby cat"),
  ]


def _tiny_coco_builder(data_dir):
  """A coco_captions-like tfds dataset: image, several captions, a class label."""

  class TinyCoco(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):  # pylint: disable=invalid-overridden-method
      return None

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict(
              {
                  "image": tfds.features.Image(shape=(None, None, 3)),
                  "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
                  "label": tfds.features.ClassLabel(names=["cat", "dog"]),
              }
          ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(6), "validation": self._generate_examples(2)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {
            "image": _png_bytes(i),
            "label": i % 2,
            "captions": {"text": [f"image {i} caption a", f"image {i} caption b"]},
        }

  builder = TinyCoco(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(download_dir=str(data_dir / "downloads"))
  return builder


def test_tfds_source_nested_captions_and_labels(tmp_path):
  builder = _tiny_coco_builder(tmp_path)
  cfg = dict(
      source="tfds",
      tfds_name="tiny_coco",
      path=str(tmp_path),
      image_size=16,
      num_train=0,
      num_eval=0,
      seed=0,
  )
  train = sources.get_source(cfg, "train")
  assert len(train) == 6 and train.class_names == ["cat", "dog"]
  record = train[0]
  assert isinstance(record["image"], bytes) and len(record["caption"]) == 2
  assert len(sources.get_source(cfg, "eval")) == 2
  it = pipeline.build_train_iterator(cfg, global_batch_size=3, seed=0)
  batches = [next(it) for _ in range(8)]
  assert batches[0]["image"].shape == (3, 16, 16, 3)
  captions = {c for b in batches for c in b["caption"]}
  assert {c.rsplit(" ", 1)[-1] for c in captions} == {"a", "b"}  # Both alternatives.
  labelled = sources.get_source(dict(cfg, label_captions=True), "train")
  assert {labelled[i]["caption"] for i in range(6)} == {"cat", "dog"}
  # A prepared dataset directory works without a name (tfds.builder_from_directory).
  by_dir = sources.get_source(dict(cfg, tfds_name="", path=str(builder.data_dir)), "train")
  assert by_dir[3]["label"] == train[3]["label"]
  with pytest.raises(ValueError, match="no split 'nope'"):
    sources.get_source(dict(cfg, train_split="nope"), "train")


def test_tfds_unprepared_says_how_to_prepare(tmp_path):
  cfg = dict(source="tfds", tfds_name="imagenet2012", path=str(tmp_path), image_size=16)
  with pytest.raises(FileNotFoundError, match="tfds build imagenet2012 --manual_dir="):
    sources.get_source(cfg, "train")
  with pytest.raises(FileNotFoundError, match="psvae_jax.data.prepare"):
    sources.get_source(dict(cfg, tfds_name="no_such_dataset_xyz"), "train")


def test_prepare_converter_round_trip(tmp_path):
  src = tmp_path / "My Photos"
  for i in range(6):
    _save(src / ("cats" if i < 3 else "dogs") / f"{i}.png", i)
  (src / "cats" / "0.txt").write_text("a sleeping cat")
  (src / "dogs" / "broken.jpg").write_bytes(b"")
  (src / "dogs" / "fake.png").write_text("not an image")
  out = tmp_path / "tfds"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  subprocess.run(
      [
          sys.executable,
          "-m",
          "psvae_jax.data.prepare",
          f"--src={src}",
          f"--out={out}",
          "--num_eval=2",
      ],
      cwd=ROOT,
      env=env,
      check=True,
      capture_output=True,
  )
  name = prepare.dataset_name(str(src))
  assert name == "my_photos"
  ds = tfds.data_source(
      name, split="train", data_dir=str(out), decoders={"image": tfds.decode.SkipDecoding()}
  )
  val = tfds.builder_from_directory(str(out / name / "1.0.0")).as_data_source("validation")
  assert len(ds) + len(val) == 6  # The two bad files are left out.
  assert val[0]["image"].shape[-1] == 3  # tfds itself can decode the images.
  cfg = dict(
      source="tfds", tfds_name=name, path=str(out), image_size=16, num_train=0, num_eval=0, seed=0
  )
  train = sources.get_source(cfg, "train")
  assert train.class_names == ["cats", "dogs"]
  records = [train[i] for i in range(len(train))] + [
      sources.get_source(cfg, "eval")[i] for i in range(2)
  ]
  assert sorted(r["label"] for r in records) == [0, 0, 0, 1, 1, 1]
  assert {r["caption"] for r in records} == {b"a sleeping cat", b""}
  batch = next(pipeline.build_train_iterator(cfg, global_batch_size=2, seed=0))
  assert batch["image"].shape == (2, 16, 16, 3)


def test_unknown_source_lists_registered():
  with pytest.raises(ValueError, match="folder.*latents.*shapes.*tfds"):
    sources.get_source({"source": "webdataset"}, "train")


def test_register_source(monkeypatch):
  monkeypatch.setattr(sources, "SOURCES", dict(sources.SOURCES))
  record = {"image": np.zeros((4, 4, 3), np.uint8), "caption": "x", "label": -1}
  sources.register_source("constant", lambda cfg, split: [record] * int(cfg.num_eval))
  assert len(sources.get_source({"source": "constant", "num_eval": 3}, "eval")) == 3
  with pytest.raises(ValueError, match="constant.*folder.*latents"):
    sources.get_source({"source": "webdataset"}, "train")


def test_tfds_key_detection_coco_and_imagenet_layouts():
  from psvae_jax.data import tfds_source  # pylint: disable=g-import-not-at-top

  coco = tfds.features.FeaturesDict(
      {
          "image": tfds.features.Image(),
          "image/filename": tfds.features.Text(),
          "objects": tfds.features.Sequence({"label": tfds.features.ClassLabel(num_classes=80)}),
          "captions": tfds.features.Sequence(
              {"id": tfds.features.Scalar(dtype=np.int64), "text": tfds.features.Text()}
          ),
      }
  )
  assert tfds_source.find_keys(coco) == {
      "image": "image",
      "caption": "captions/text",
      "label": "",
  }  # Per-object labels are not labels.
  imagenet = tfds.features.FeaturesDict(
      {
          "image": tfds.features.Image(),
          "file_name": tfds.features.Text(),
          "label": tfds.features.ClassLabel(num_classes=1000),
      }
  )
  assert tfds_source.find_keys(imagenet) == {"image": "image", "caption": "", "label": "label"}

"""Real labelled datasets (issue 14): stratified subsets, class names, labels by name."""

import io
import json
import os
import subprocess
import sys

from etils import epath
import numpy as np
import pytest
from PIL import Image

from configs import dit as dit_config
from configs import svae as svae_config
from psvae_jax import editing
from psvae_jax.data import pipeline
from psvae_jax.data import prepare
from psvae_jax.data import provenance
from psvae_jax.data import sources
from psvae_jax.train import loop
from psvae_jax.train import preflight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("ankle_boot", "bag", "coat", "dress")


def _write_classes(root, classes=CLASSES, per_class=12, size=12):
  for c, name in enumerate(classes):
    (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
      value = np.full((size, size, 3), 40 + 50 * c, np.uint8)
      value[0, 0] = i  # distinct files
      Image.fromarray(value).save(root / name / f"{i:03d}.png")


def _cfg(root, **kw):
  return {**dict(source="folder", path=str(root), image_size=8, num_eval=0, num_train=0), **kw}


@pytest.fixture(name="split_folder")
def _split_folder(tmp_path):
  _write_classes(tmp_path / "train")
  _write_classes(tmp_path / "test", per_class=6)
  return tmp_path


def test_eval_set_covers_every_class(split_folder):
  """Was: the first 8 files in path order, all of the first class."""
  batch = pipeline.build_eval_set(_cfg(split_folder), 8)
  np.testing.assert_array_equal(np.bincount(batch["label"], minlength=4), [2, 2, 2, 2])
  again = pipeline.build_eval_set(_cfg(split_folder), 8)
  np.testing.assert_array_equal(batch["image"], again["image"])  # seeded: the same draw


def test_caps_are_stratified(split_folder):
  """data.num_train / num_eval caps keep every class's share (was: the first classes)."""
  train = sources.get_source(_cfg(split_folder, num_train=8), "train")
  assert len(train) == 8
  np.testing.assert_array_equal(np.bincount(sources.labels_of(train), minlength=4), [2] * 4)
  held = sources.get_source(_cfg(split_folder, num_eval=4), "eval")
  np.testing.assert_array_equal(np.bincount(sources.labels_of(held), minlength=4), [1] * 4)


def test_hold_out_without_split_folders_is_stratified(tmp_path):
  _write_classes(tmp_path, per_class=10)
  held = sources.get_source(_cfg(tmp_path, num_eval=8), "eval")
  train = sources.get_source(_cfg(tmp_path, num_eval=8), "train")
  np.testing.assert_array_equal(np.bincount(sources.labels_of(held), minlength=4), [2] * 4)
  assert not set(held.indices.tolist()) & set(train.indices.tolist())


def test_split_class_mismatch_fails(tmp_path):
  """A class missing from one split would shift every later label."""
  _write_classes(tmp_path / "train")
  _write_classes(tmp_path / "test", classes=("ankle_boot", "coat", "dress"))
  for split in ("train", "eval"):
    with pytest.raises(ValueError, match=r"only in train: \['bag'\]"):
      sources.get_source(_cfg(tmp_path), split)


def test_describe_splits_and_recorded_change(split_folder):
  data = provenance.describe_splits(_cfg(split_folder))
  assert data["class_names"] == list(CLASSES)
  assert data["train"]["num_records"] == 48 and data["eval"]["num_records"] == 24
  provenance.check_recorded(data, provenance.describe_splits(_cfg(split_folder)), "W")
  Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(split_folder / "train" / "bag" / "new.png")
  with pytest.raises(ValueError, match="train data differ"):
    provenance.check_recorded(data, provenance.describe_splits(_cfg(split_folder)), "W")


def test_resolve_label():
  names = ["ankle_boot", "bag", "sneaker"]
  assert sources.resolve_label("sneaker", names) == 2
  assert sources.resolve_label("Bag", names) == 1
  assert sources.resolve_label("0", names) == 0 and sources.resolve_label(1, names) == 1
  with pytest.raises(ValueError, match="the classes are"):
    sources.resolve_label("shoe", names)
  with pytest.raises(ValueError, match="out of range"):
    sources.resolve_label(3, names)


def test_num_classes_from_the_data():
  config = dit_config.get_config("tiny_class")
  assert config.model.cond_type == "class" and config.dtype == "float32"
  assert config.model.num_classes == 0
  preflight.resolve_classes(config, list(CLASSES))
  assert config.model.num_classes == 4
  with pytest.raises(preflight.ConfigError, match="num_classes=2 but the data have 4"):
    config.model.num_classes = 2
    preflight.resolve_classes(config, list(CLASSES))
  config.model.num_classes = 0
  with pytest.raises(preflight.ConfigError, match="--config.model.num_classes=N"):
    preflight.resolve_classes(config, [])
  text = dit_config.get_config("tiny")  # text models: untouched
  preflight.resolve_classes(text, [])
  assert text.model.num_classes == 0


def test_setup_records_the_data_and_refuses_changed_data(split_folder, tmp_path):
  """Training start writes DIR/data.json; a resumed run on other records refuses to start."""
  config = svae_config.get_config("tiny")
  config.data.update(_cfg(split_folder, num_train=0))
  config.data.image_size = 32
  workdir = tmp_path / "run"
  loop.record_data(workdir_path(workdir), provenance.describe_splits(config.data))
  recorded = json.loads((workdir / "data.json").read_text())
  assert recorded["class_names"] == list(CLASSES)
  (split_folder / "test" / "coat" / "000.png").unlink()
  with pytest.raises(ValueError, match="eval data differ"):
    loop.record_data(workdir_path(workdir), provenance.describe_splits(config.data))


def workdir_path(path):
  path.mkdir(parents=True, exist_ok=True)
  return epath.Path(path)


def _counters(cfg):
  it = pipeline.build_train_iterator(
      cfg, global_batch_size=8, seed=0, process_count=1, process_index=0
  )
  for _ in range(3):
    next(it)
  return it.counters()


def test_class_folders_do_not_count_missing_captions(split_folder):
  """A class dataset has no captions: "caption_missing" there is noise (was counted)."""
  cfg = {**_cfg(split_folder), "num_threads": 0}
  assert not any("caption" in k and v for k, v in _counters(cfg).items()), _counters(cfg)
  (split_folder / "train" / "bag" / "000.txt").write_text("a bag")  # now captions exist
  assert _counters(cfg).get("kept_caption_missing", 0) > 0


def test_16bit_png_reads_the_same_for_editing_and_training(tmp_path):
  """--init_image went through PIL's convert("RGB"), which clips 16-bit grey to white."""
  values = np.linspace(1000, 60000, 12 * 12).reshape(12, 12).astype(np.uint16)
  path = tmp_path / "deep.png"
  Image.fromarray(values).save(path)  # PIL mode "I;16"
  edit = editing.load_image(str(path))
  train = pipeline.preprocess_from_cfg(_cfg(tmp_path, image_size=12), train=False).random_map(
      {"path": str(path), "caption": "x", "label": -1}, None
  )["image"]
  np.testing.assert_array_equal(edit, train)
  np.testing.assert_allclose(edit[..., 0], np.round(values / 257.0), atol=1)
  mask = editing.load_mask(str(path))
  np.testing.assert_allclose(mask, edit[..., 0] / 255.0, atol=1e-6)


def _bad_folder(root, truncated=False):
  (root / "a").mkdir(parents=True)
  data = io.BytesIO()
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  Image.fromarray(noise).save(data, format="JPEG")  # ~3 kB: a cut keeps the header
  for i in range(3):
    blob = data.getvalue()[:-1000] if truncated else b"not an image"
    (root / "a" / f"{i}.jpg").write_bytes(blob)
  return root


def test_prepare_verify_with_nothing_usable_is_one_line(tmp_path):
  """Was tfds's AssertionError traceback."""
  src = _bad_folder(tmp_path / "src", truncated=True)
  with pytest.raises(prepare.PrepareError, match="no usable image in the train split"):
    prepare.convert(str(src), str(tmp_path / "out"), verify=True)
  assert not list((tmp_path / "out").rglob("*")), list((tmp_path / "out").rglob("*"))
  r = subprocess.run(
      [
          sys.executable,
          "-m",
          "psvae_jax.data.prepare",
          f"--src={src}",
          f"--out={tmp_path / 'o2'}",
          "--verify",
      ],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=ROOT,
  )
  assert r.returncode == 1, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith("prepare: "), r.stderr[-2000:]
  assert "Traceback" not in r.stderr


def test_prepare_summary_says_what_was_kept_unverified(tmp_path):
  src = _bad_folder(tmp_path / "src", truncated=True)
  builder = prepare.convert(str(src), str(tmp_path / "out"), verify=False)
  assert "3 kept unverified" in builder.summary, builder.summary

"""IDX (MNIST-format) files -> class folders (psvae_jax/data/idx.py), on generated files."""

import gzip
import json

import numpy as np
import pytest

from psvae_jax.data import idx
from psvae_jax.data import sources


def _write_idx(path, array, gz):
  codes = {np.dtype(np.uint8): 0x08}
  header = bytes([0, 0, codes[array.dtype], array.ndim])
  header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  data = header + array.tobytes()
  if gz:
    path = path.with_name(path.name + ".gz")
    data = gzip.compress(data)
  path.write_bytes(data)


@pytest.fixture(name="idx_dir")
def _idx_dir(tmp_path):
  rng = np.random.default_rng(0)
  src = tmp_path / "src"
  src.mkdir()
  for split, n, gz in (("train", 60, True), ("test", 20, False)):
    # Every class, unevenly, sorted (so "the first N" would be biased).
    labels = np.sort(np.concatenate([np.arange(10), rng.integers(0, 10, n - 10)])).astype(np.uint8)
    images = (labels[:, None, None] * 25 + rng.integers(0, 5, (n, 6, 6))).astype(np.uint8)
    _write_idx(src / idx.FILES[split][0], images, gz)
    _write_idx(src / idx.FILES[split][1], labels, gz)
  return src


def test_read_idx_round_trip(idx_dir):
  images, labels = idx.read_split(idx_dir, "train")
  assert images.shape == (60, 6, 6) and labels.shape == (60,)
  np.testing.assert_array_equal(images[:, 0, 0] // 25, labels)


def test_malformed_idx_is_named(tmp_path):
  bad = tmp_path / "train-images-idx3-ubyte"
  bad.write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") * 3 + b"short")
  with pytest.raises(idx.IdxError, match="bytes, the header"):
    idx.read_idx(bad)
  bad.write_bytes(b"PK\x03\x04junk")
  with pytest.raises(idx.IdxError, match="not an IDX file"):
    idx.read_idx(bad)


def test_convert_writes_stratified_named_class_folders(idx_dir, tmp_path):
  out = tmp_path / "out"
  done = idx.convert(str(idx_dir), str(out), num_train=20, num_test=0, names="fashion_mnist")
  assert done["class_names"][7] == "7_sneaker"
  assert json.loads((out / "classes.json").read_text()) == done["class_names"]
  train = sources.get_source({"source": "folder", "path": str(out), "num_train": 0}, "train")
  assert len(train) == 20 and train.class_names == done["class_names"]
  _, labels = idx.read_split(idx_dir, "train")
  share = np.bincount(labels, minlength=10) * 20 / len(labels)
  assert np.all(np.abs(np.bincount(train.labels, minlength=10) - share) < 1 + 1e-9)
  test = sources.get_source({"source": "folder", "path": str(out), "num_eval": 0}, "eval")
  assert len(test) == 20  # 0 = all
  assert sources.resolve_label("sneaker", train.class_names) == 7
  # A rerun with the same arguments does nothing; other arguments refuse.
  assert idx.convert(str(idx_dir), str(out), num_train=20, names="fashion_mnist") == done
  with pytest.raises(idx.IdxError, match="other arguments"):
    idx.convert(str(idx_dir), str(out), num_train=30, names="fashion_mnist")

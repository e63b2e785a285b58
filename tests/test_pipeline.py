"""Grain input pipeline: batches, determinism, resume, folders, sharding."""

import json

from absl import flags
import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from psvae_jax.data import pipeline
from psvae_jax.data import sources
from psvae_jax.data import text
from psvae_jax.shapes import checker
from psvae_jax.shapes import source as shapes_source
from psvae_jax.shapes import world


def _cfg(**overrides):
  cfg = dict(
      source="shapes",
      path="",
      image_size=32,
      num_train=64,
      num_eval=16,
      seed=0,
      num_workers=0,
      prefetch=2,
      crop="center",
      random_flip=False,
  )
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    np.testing.assert_array_equal(a["image"], b["image"])
    assert list(a["caption"]) == list(b["caption"])


def test_batch_shape_dtype_range():
  it = pipeline.build_train_iterator(_cfg(), global_batch_size=8, seed=0)
  for batch in _take(it, 3):
    assert set(batch) == {"image", "caption", "label"}
    assert batch["image"].shape == (8, 32, 32, 3)
    assert batch["image"].dtype == np.float32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["caption"].shape == (8,) and batch["caption"].dtype == object
    assert all(isinstance(c, str) and c for c in batch["caption"])
    assert batch["label"].dtype == np.int32
    # Pixels round-trip to the generated uint8 images: the checker agrees.
    u8 = np.round((batch["image"] + 1) * 127.5).astype(np.uint8)
    assert checker.score_batch(u8, list(batch["caption"])).all()
  assert it.num_bad_records == 0


def test_same_seed_same_batches_and_epochs():
  cfg = _cfg(num_train=16)
  a = _take(pipeline.build_train_iterator(cfg, global_batch_size=8, seed=5), 4)
  b = _take(pipeline.build_train_iterator(cfg, global_batch_size=8, seed=5), 4)
  _assert_same(a, b)
  c = _take(pipeline.build_train_iterator(cfg, global_batch_size=8, seed=6), 2)
  assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
  # Each epoch (2 batches) is a permutation of the 16 records, reshuffled.
  source = sources.get_source(cfg, "train")
  all_captions = sorted(source[i]["caption"] for i in range(16))
  epoch1 = [t for x in a[:2] for t in x["caption"]]
  epoch2 = [t for x in a[2:] for t in x["caption"]]
  assert sorted(epoch1) == all_captions == sorted(epoch2)
  assert epoch1 != epoch2


def test_resume_from_state():
  cfg = _cfg()
  it = pipeline.build_train_iterator(cfg, global_batch_size=4, seed=1)
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))  # JSON-serializable.
  expected = _take(it, 3)
  fresh = pipeline.build_train_iterator(cfg, global_batch_size=4, seed=1)
  fresh.set_state(state)
  _assert_same(_take(fresh, 3), expected)


def test_orbax_checkpoint_round_trip(tmp_path):
  cfg = _cfg()
  it = pipeline.build_train_iterator(cfg, global_batch_size=4, seed=2)
  _take(it, 2)
  assert isinstance(
      pipeline.iterator_checkpoint_args(it, save=True), grain.checkpoint.CheckpointSave
  )
  with ocp.CheckpointManager(
      tmp_path, item_names=("data",), item_handlers={"data": grain.checkpoint.CheckpointHandler()}
  ) as mngr:
    mngr.save(2, args=ocp.args.Composite(data=pipeline.iterator_checkpoint_args(it, save=True)))
    mngr.wait_until_finished()
    expected = _take(it, 2)
    fresh = pipeline.build_train_iterator(cfg, global_batch_size=4, seed=2)
    restore_args = pipeline.iterator_checkpoint_args(fresh, save=False)
    assert isinstance(restore_args, grain.checkpoint.CheckpointRestore)
    mngr.restore(2, args=ocp.args.Composite(data=restore_args))
  _assert_same(_take(fresh, 2), expected)


def _write_folder(root):
  """7 good images in 2 class folders (+ sidecar captions) and 1 corrupt."""
  rng = np.random.default_rng(0)
  sizes = [(40, 60), (64, 48), (32, 32), (50, 50), (45, 70), (33, 90), (80, 36)]
  for i, (h, w) in enumerate(sizes):
    cls = ("cats", "dogs")[i % 2]
    (root / cls).mkdir(exist_ok=True)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if i == 2:
      image = image.convert("L")  # Grayscale.
    elif i == 3:
      image = image.convert("RGBA")
    ext = ".jpg" if i % 3 == 0 and i != 3 else ".png"
    image.save(root / cls / f"img{i}{ext}")
    if i < 4:
      (root / cls / f"img{i}.txt").write_text(f"caption {i}\n")
  (root / "dogs" / "corrupt.png").write_bytes(b"this is not an image" * 10)
  (root / "dogs" / "notes.md").write_text("ignored")


def test_image_folder_source_and_bad_records(tmp_path):
  _write_folder(tmp_path)
  source = sources.ImageFolderSource(tmp_path)
  assert len(source) == 8 and source.class_names == ["cats", "dogs"]
  records = [source[i] for i in range(len(source))]
  assert [r["label"] for r in records] == [0, 0, 0, 0, 1, 1, 1, 1]
  assert {r["caption"] for r in records} == {  # Raw; the pipeline cleans them.
      b"caption 0\n",
      b"caption 1\n",
      b"caption 2\n",
      b"caption 3\n",
      None,
  }
  cfg = _cfg(source="folder", path=str(tmp_path), num_eval=0)
  it = pipeline.build_train_iterator(cfg, global_batch_size=4, seed=0)
  batches = _take(it, 6)  # 24 records = 3 epochs of 7 good + 1 bad.
  for batch in batches:
    assert batch["image"].shape == (4, 32, 32, 3)
    assert np.abs(batch["image"]).max() <= 1.0
    assert set(batch["label"]) <= {0, 1}
  assert it.num_bad_records >= 2
  assert it.get_state()["counters"]["skipped_not_image"] == it.num_bad_records
  captions = {c for b in batches for c in b["caption"]}
  assert "caption 0" in captions and "" in captions


def test_folder_random_crop_flip_and_eval_split(tmp_path):
  _write_folder(tmp_path)
  (tmp_path / "dogs" / "corrupt.png").unlink()
  cfg = _cfg(source="folder", path=str(tmp_path), num_eval=2, crop="random", random_flip=True)
  assert len(sources.get_source(cfg, "train")) == 5
  assert len(sources.get_source(cfg, "eval")) == 2
  a = _take(pipeline.build_train_iterator(cfg, global_batch_size=2, seed=0), 3)
  b = _take(pipeline.build_train_iterator(cfg, global_batch_size=2, seed=0), 3)
  _assert_same(a, b)
  eval_set = pipeline.build_eval_set(cfg, 2)
  assert eval_set["image"].shape == (2, 32, 32, 3)
  with pytest.raises(ValueError, match="only"):
    pipeline.build_eval_set(cfg, 3)
  # Split subfolders take precedence over the seeded hold-out.
  (tmp_path / "val").mkdir()
  Image.new("RGB", (40, 40), (255, 0, 0)).save(tmp_path / "val" / "x.png")
  assert len(sources.get_source(cfg, "eval")) == 1
  assert len(sources.get_source(cfg, "train")) == 7  # All but val/.
  (tmp_path / "train" / "a").mkdir(parents=True)
  Image.new("RGB", (40, 40)).save(tmp_path / "train" / "a" / "y.png")
  assert len(sources.get_source(cfg, "train")) == 1


def test_empty_folder_raises(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "readme.txt").write_text("no images here")
  with pytest.raises(ValueError, match="No images"):
    sources.ImageFolderSource(tmp_path)
  with pytest.raises(ValueError, match="does not exist"):
    sources.ImageFolderSource(tmp_path / "missing")


def test_config_errors():
  with pytest.raises(ValueError, match="random_flip"):
    pipeline.build_train_iterator(_cfg(random_flip=True), global_batch_size=8, seed=0)
  with pytest.raises(ValueError, match="Unknown data source"):
    sources.get_source(_cfg(source="webdataset"), "train")
  with pytest.raises(ValueError, match="split"):
    sources.get_source(_cfg(), "test")


def test_per_host_batch(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  with pytest.raises(ValueError, match="multiple"):
    pipeline.build_train_iterator(_cfg(), global_batch_size=8, seed=0)
  it = pipeline.build_train_iterator(_cfg(num_train=30), global_batch_size=6, seed=0)
  batch = next(it)
  assert batch["image"].shape == (2, 32, 32, 3)
  # Process 1 of 3 reads records [10, 20) only.
  source = sources.get_source(_cfg(num_train=30), "train")
  shard = {source[i]["caption"] for i in range(10, 20)}
  seen = {c for b in [batch] + _take(it, 9) for c in b["caption"]}
  assert seen == shard


def test_eval_set_is_deterministic_and_held_out():
  cfg = _cfg()
  a = pipeline.build_eval_set(cfg, 8)
  b = pipeline.build_eval_set(cfg, 8)
  assert a["image"].shape == (8, 32, 32, 3) and a["image"].dtype == np.float32
  assert -1.0 <= a["image"].min() and a["image"].max() <= 1.0
  assert len(a["caption"]) == 8
  assert all(isinstance(c, str) for c in a["caption"])
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["caption"] == b["caption"]
  expected, caption = world.generate(shapes_source.EVAL_INDEX_OFFSET, 32, seed=0, split="train")
  assert caption == a["caption"][0]
  np.testing.assert_allclose(a["image"][0], expected / 127.5 - 1, atol=1e-6)
  train, _ = world.generate(0, 32, seed=0, split="train")
  assert not np.array_equal(train, expected)


@pytest.mark.slow
def test_worker_processes():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags.
  cfg = _cfg(num_workers=1, prefetch=1)
  it = pipeline.build_train_iterator(cfg, global_batch_size=4, seed=0)
  try:
    first = _take(it, 2)
    state = it.get_state()
    expected = _take(it, 2)
  finally:
    it.close()
  for batch in first:
    assert batch["image"].shape == (4, 32, 32, 3)
    assert batch["caption"].dtype == object
  fresh = pipeline.build_train_iterator(cfg, global_batch_size=4, seed=0)
  try:
    fresh.set_state(state)
    _assert_same(_take(fresh, 2), expected)
  finally:
    fresh.close()


class _IndexedSource:
  """Record i: a 12x12 horizontal ramp (+ i), caption "item i", label i."""

  def __init__(self, num_records):
    self._n = num_records

  def __len__(self):
    return self._n

  def __getitem__(self, index):
    ramp = np.arange(12, dtype=np.uint8)[None, :, None] * 20 + int(index)
    return {
        "image": np.broadcast_to(ramp, (12, 12, 3)).copy(),
        "caption": f"item {index}",
        "label": int(index),
    }


@pytest.fixture
def indexed(monkeypatch):
  """Registers the "indexed" source kind (as shapes / folder / tfds are registered)."""
  monkeypatch.setitem(
      sources.SOURCES, "indexed", lambda cfg, split: _IndexedSource(cfg["num_train"])
  )
  return lambda **kw: _cfg(source="indexed", image_size=8, **kw)


@pytest.mark.parametrize("num_records", [24, 25])
def test_two_processes_disjoint_and_covering(indexed, num_records):
  cfg = indexed(num_train=num_records)
  seen = []
  for process in range(2):
    it = pipeline.build_train_iterator(
        cfg, global_batch_size=4, seed=3, process_index=process, process_count=2
    )
    epoch = [int(x) for b in _take(it, 6) for x in b["label"]]  # 12 records: one epoch.
    assert len(set(epoch)) == 12
    seen.append(set(epoch))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(24))  # The 25th (remainder) is dropped.
  with pytest.raises(ValueError, match="multiple"):
    pipeline.build_train_iterator(
        cfg, global_batch_size=5, seed=0, process_index=0, process_count=2
    )


def test_resume_identity_with_augmentation(indexed):
  cfg = indexed(num_train=10, crop="random", random_flip=True)
  uninterrupted = _take(pipeline.build_train_iterator(cfg, global_batch_size=4, seed=7), 9)
  first = pipeline.build_train_iterator(cfg, global_batch_size=4, seed=7)
  _assert_same(_take(first, 4), uninterrupted[:4])
  state = json.loads(json.dumps(first.get_state()))
  resumed = pipeline.build_train_iterator(cfg, global_batch_size=4, seed=7)
  resumed.set_state(state)
  after = _take(resumed, 5)  # Crosses epoch boundaries (10 records per epoch).
  _assert_same(after, uninterrupted[4:])
  for a, b in zip(after, uninterrupted[4:]):
    np.testing.assert_array_equal(a["label"], b["label"])


def _write_tokenizer(path):
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top

  vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "item", "a", "b"])}
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  PreTrainedTokenizerFast(
      tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]"
  ).save_pretrained(str(path))


def test_encoder_input_and_tokens(indexed, tmp_path):
  _write_tokenizer(tmp_path / "tok")
  cfg = indexed(
      num_train=8,
      crop="random",
      random_flip=True,
      encoder_image_size=12,
      tokenizer=str(tmp_path / "tok"),
      max_length=4,
  )
  batches = _take(pipeline.build_train_iterator(cfg, global_batch_size=4, seed=0), 3)
  for batch in batches:
    assert batch["image"].shape == (4, 8, 8, 3) and batch["image_enc"].shape == (4, 12, 12, 3)
    assert batch["image_enc"].dtype == np.float32 and np.abs(batch["image_enc"]).max() <= 1
    # Same crop and flip: the ramp runs the same way in both.
    slope = lambda x: np.sign(x[:, :, -1, 0].mean(1) - x[:, :, 0, 0].mean(1))
    np.testing.assert_array_equal(slope(batch["image"]), slope(batch["image_enc"]))
    assert batch["input_ids"].dtype == np.int32 and batch["input_ids"].shape == (4, 4)
    np.testing.assert_array_equal(batch["input_ids"][:, :2], [[2, 1]] * 4)  # "item", unk.
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 0, 0]] * 4)
  flips = {
      int(s) for b in batches for s in np.sign(b["image"][:, 0, -1, 0] - b["image"][:, 0, 0, 0])
  }
  assert flips == {-1, 1}
  tokens = text.make_tokenizer(cfg)("item a b a b a b")
  np.testing.assert_array_equal(tokens["input_ids"], [2, 3, 4, 3])  # Truncated.
  with pytest.raises(ValueError, match="No tokenizer"):
    text.make_tokenizer(dict(tokenizer=str(tmp_path), max_length=4))


def test_a_runs_data_config_is_resolved_once_where_it_starts(monkeypatch):
  """A stage config's data (complete from base_config) goes through the data functions as it is:
  nothing re-fills the defaults (it was resolved six times per training call); a partial one (a
  test's dict) is still completed."""
  from configs import common  # pylint: disable=g-import-not-at-top
  from psvae_jax.data import config as data_config  # pylint: disable=g-import-not-at-top
  from psvae_jax.data import provenance  # pylint: disable=g-import-not-at-top

  fills = []
  resolve = data_config.resolve
  monkeypatch.setattr(data_config, "resolve", lambda c: (fills.append(1), resolve(c))[1])
  cfg = common.data_config()
  cfg.update(source="shapes", image_size=32, num_train=16, num_eval=8, num_workers=0)
  cfg.lock()  # as a run's config is
  provenance.describe_splits(cfg)
  next(pipeline.build_train_iterator(cfg, global_batch_size=4, seed=0))
  pipeline.build_eval_set(cfg, 4)
  assert not fills, f"the data defaults were re-filled {len(fills)} times"
  assert data_config.complete(dict(source="shapes")).max_length == 77 and fills == [1]

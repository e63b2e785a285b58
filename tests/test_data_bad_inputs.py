"""Bad input never stops the pipeline: each kind is skipped or repaired and counted."""

import io
import json

import numpy as np
from PIL import Image
import pytest

from psvae_jax.data import decode
from psvae_jax.data import iterators
from psvae_jax.data import pipeline
from psvae_jax.data import sources
from psvae_jax.data import text

LONG_CAPTION = " ".join(["word"] * 2000)  # 9,999 characters.
MAX_PIXELS = 10_000  # Test stand-in for the 50 MP default.


def _png(pixels: np.ndarray, **kwargs) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels, **kwargs).save(buf, format="PNG")
  return buf.getvalue()


def _jpeg(image: Image.Image, **kwargs) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format="JPEG", quality=95, **kwargs)
  return buf.getvalue()


def _noise(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# file -> (bytes, jsonl caption or None, sidecar bytes or None, expected kinds)
def _fixture_files():
  good = _jpeg(Image.fromarray(_noise(40, 50)))
  return {
      "good0.png": (_png(_noise(30, 40, 1)), "a good image", None, []),
      "good1.jpg": (good, "another good one", None, []),
      "missing_caption.png": (_png(_noise(20, 20, 2)), None, None, ["kept_caption_missing"]),
      "empty_caption.png": (_png(_noise(20, 20, 3)), "   ", None, ["kept_caption_empty"]),
      "long_caption.png": (
          _png(_noise(20, 20, 4)),
          LONG_CAPTION,
          None,
          ["repaired_caption_truncated"],
      ),
      "latin1_caption.png": (
          _png(_noise(20, 20, 5)),
          None,
          "caf\xe9 au lait".encode("cp1252"),
          ["repaired_caption_encoding"],
      ),
      "huge.jpg": (
          _jpeg(Image.fromarray(_noise(200, 160, 6))),
          "huge jpeg",
          None,
          ["repaired_downscaled"],
      ),
      "huge.png": (_png(_noise(200, 160, 7)), "huge png", None, ["skipped_too_large"]),
      "truncated.jpg": (good[: len(good) // 2], "cut", None, ["skipped_corrupt"]),
      "zero.png": (b"", "nothing", None, ["skipped_empty_file"]),
      "text.jpg": (b"this is not a JPEG at all\n" * 20, "text", None, ["skipped_not_image"]),
      "one_pixel.png": (_png(_noise(1, 1, 8)), "dot", None, ["skipped_too_small"]),
  }


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad")
  lines = []
  for name, (data, caption, sidecar, _) in _fixture_files().items():
    (root / name).write_bytes(data)
    if caption is not None:
      lines.append(json.dumps({"file": name, "caption": caption}))
    if sidecar is not None:
      (root / name).with_suffix(".txt").write_bytes(sidecar)
  lines.append("{not json")  # A malformed jsonl line is ignored.
  (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
  return root


def _cfg(root, **overrides):
  cfg = dict(
      source="folder",
      path=str(root),
      image_size=16,
      num_train=0,
      num_eval=0,
      seed=0,
      max_pixels=MAX_PIXELS,
      min_image_size=8,
      max_caption_chars=1000,
  )
  cfg.update(overrides)
  return cfg


def test_each_kind_is_skipped_or_repaired(bad_folder):
  source = sources.ImageFolderSource(bad_folder)
  records = {source[i]["path"].rsplit("/", 1)[-1]: source[i] for i in range(len(source))}
  preprocess = pipeline.preprocess_from_cfg(_cfg(bad_folder))
  expected = _fixture_files()
  assert set(records) == set(expected)
  for name, record in records.items():
    out = preprocess.random_map(record, np.random.default_rng(0))
    kinds = list(out.get(iterators.KINDS_KEY, [])) + (
        [out[iterators.SKIP]] if iterators.SKIP in out else []
    )
    assert sorted(kinds) == sorted(expected[name][3]), name
    if iterators.SKIP not in out:
      assert out["image"].shape == (16, 16, 3) and out["image"].dtype == np.uint8
      assert isinstance(out["caption"], str) and len(out["caption"]) <= 1000
  assert preprocess.random_map(records["latin1_caption.png"], None)["caption"] == ("café au lait")
  assert records["missing_caption.png"]["caption"] is None


def test_iterator_counts_and_never_crashes(bad_folder):
  it = pipeline.build_train_iterator(_cfg(bad_folder), global_batch_size=4, seed=0)
  # 7 of the 12 records survive a pass: 5 batches of 4 read passes 1 and 2 fully and
  # stop inside pass 3.
  batches = [next(it) for _ in range(5)]
  for batch in batches:
    assert batch["image"].shape == (4, 16, 16, 3)
    assert np.abs(batch["image"]).max() <= 1.0
  counters = it.counters()
  assert set(counters) == set(iterators.COUNTERS)
  per_pass = {k for v in _fixture_files().values() for k in v[3]}
  for kind in per_pass:
    assert 2 <= counters[kind] <= 3, (kind, counters)
  for kind in set(iterators.COUNTERS) - per_pass:
    assert counters[kind] == 0, kind
  assert it.num_bad_records == sum(v for k, v in counters.items() if k.startswith("skipped"))
  # The counters are part of the (JSON) state and restored with it.
  state = json.loads(json.dumps(it.get_state()))
  fresh = pipeline.build_train_iterator(_cfg(bad_folder), global_batch_size=4, seed=0)
  fresh.set_state(state)
  assert fresh.counters() == counters
  np.testing.assert_array_equal(next(fresh)["image"], next(it)["image"])


def test_empty_captions_skip_policy(bad_folder):
  cfg = _cfg(bad_folder, empty_captions="skip")
  preprocess = pipeline.preprocess_from_cfg(cfg)
  source = sources.ImageFolderSource(bad_folder)
  skips = {preprocess.random_map(source[i], None).get(iterators.SKIP) for i in range(len(source))}
  assert {"skipped_caption_missing", "skipped_caption_empty"} <= skips


def test_no_usable_record_fails_fast(tmp_path):
  (tmp_path / "a.jpg").write_bytes(b"")
  (tmp_path / "b.png").write_bytes(b"garbage" * 10)
  (tmp_path / "c.png").write_bytes(_png(_noise(2, 2)))
  with pytest.raises(ValueError, match="No usable record.*skipped_"):
    pipeline.build_train_iterator(_cfg(tmp_path), global_batch_size=2, seed=0)


def _decode(data: bytes, background=(255, 255, 255)) -> np.ndarray:
  image, _ = decode.decode_bytes(
      data, min_decode_size=64, max_pixels=10**8, min_size=1, background=background
  )
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
  return image


def test_color_modes_become_rgb():
  gray = np.full((6, 8), 77, np.uint8)
  np.testing.assert_array_equal(_decode(_png(gray)), np.full((6, 8, 3), 77))
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[0, 0] = (255, 0, 0, 255)  # Opaque red; the rest fully transparent.
  rgba[0, 1] = (0, 0, 0, 128)  # Half-transparent black.
  on_white = _decode(_png(rgba))
  on_black = _decode(_png(rgba), background=(0, 0, 0))
  np.testing.assert_array_equal(on_white[0, 0], (255, 0, 0))
  np.testing.assert_array_equal(on_white[3, 3], (255, 255, 255))
  np.testing.assert_array_equal(on_black[3, 3], (0, 0, 0))
  assert abs(int(on_white[0, 1, 0]) - 127) <= 1
  la = np.stack([gray[:4, :4], np.zeros((4, 4), np.uint8)], -1)
  np.testing.assert_array_equal(_decode(_png(la, mode="LA")), np.full((4, 4, 3), 255))
  sixteen = np.full((5, 5), 257 * 200, np.uint16)
  np.testing.assert_array_equal(_decode(_png(sixteen)), np.full((5, 5, 3), 200))
  cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # Red.
  np.testing.assert_allclose(_decode(_jpeg(cmyk))[8, 8], (255, 0, 0), atol=12)
  colors = np.array([[[10, 200, 30], [250, 5, 5]]], np.uint8).repeat(4, 0)
  palette = Image.fromarray(colors).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
  buf = io.BytesIO()
  palette.save(buf, format="PNG")
  np.testing.assert_array_equal(_decode(buf.getvalue()), colors)
  palette.info["transparency"] = 0
  buf = io.BytesIO()
  palette.save(buf, format="GIF", transparency=int(np.asarray(palette)[0, 0]))
  assert (_decode(buf.getvalue())[:, 0] == 255).all()  # Transparent index -> white.
  bilevel = Image.fromarray(np.eye(4, dtype=bool))
  buf = io.BytesIO()
  bilevel.save(buf, format="PNG")
  np.testing.assert_array_equal(_decode(buf.getvalue())[..., 0], np.eye(4) * 255)


def test_exif_orientation_applied():
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotate 90 degrees clockwise on display.
  data = _jpeg(Image.fromarray(_noise(10, 30)), exif=exif)
  assert _decode(data).shape == (30, 10, 3)


def test_caption_cleaning():
  assert text.clean_caption(None, 100) == ("", ["caption_missing"])
  assert text.clean_caption(b"  \n ", 100) == ("", ["caption_empty"])
  assert text.clean_caption("a\tb\n\x00c", 100) == ("a b c", [])
  assert text.clean_caption(b"\xff\xfe bad", 100)[1] == ["repaired_caption_encoding"]
  cut, kinds = text.clean_caption("abc " * 50, 20)
  assert kinds == ["repaired_caption_truncated"] and cut == "abc abc abc abc abc"
  assert text.clean_caption(["first", "second"], 100) == ("first", [])
  picks = {text.clean_caption(["x", "y"], 100, np.random.default_rng(s))[0] for s in range(20)}
  assert picks == {"x", "y"}

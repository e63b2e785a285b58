"""Synthetic shapes: determinism, captions, and the prompt-adherence checker."""

import numpy as np
import pytest

from psvae_jax.shapes import checker
from psvae_jax.shapes import world

N = 500


def _blur_noise(image, sigma, noise_std, rng):
  """Separable Gaussian blur (edge padding) plus Gaussian noise; uint8."""
  x = image.astype(np.float64)
  r = int(np.ceil(3 * sigma))
  k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma**2))
  k /= k.sum()
  for axis in (0, 1):
    pad = [(0, 0)] * 3
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="edge")
    x = sum(
        k[i] * np.take(xp, np.arange(i, i + x.shape[axis]), axis=axis) for i in range(2 * r + 1)
    )
  x = x + rng.normal(0.0, noise_std, x.shape)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _mutate(text, kind, rng):
  """Changes one object's shape, colour or position (to the opposite side)."""
  objects = world.parse_caption(text)
  i = int(rng.integers(len(objects)))
  o = objects[i]
  if kind == "shape":
    o = world.ShapeObject(
        rng.choice([s for s in world.SHAPES if s != o.shape]), o.color, o.position
    )
  elif kind == "color":
    o = world.ShapeObject(
        o.shape, rng.choice([c for c in world.COLORS if c != o.color]), o.position
    )
  else:
    position = world.OPPOSITE.get(o.position)
    if position is None:  # "center" has no opposite: any side.
      position = rng.choice(["left", "right", "top", "bottom"])
    o = world.ShapeObject(o.shape, o.color, position)
  objects[i] = o
  new = world.caption(objects)
  assert new != text
  return new


@pytest.fixture(scope="module", params=[32, 64])
def dataset(request):
  size = request.param
  return size, [world.generate(i, size, seed=7) for i in range(N)]


def test_generate_is_deterministic():
  for size in (32, 64, 256):
    a, ca = world.generate(123, size, seed=3)
    b, cb = world.generate(123, size, seed=3)
    assert a.dtype == np.uint8 and a.shape == (size, size, 3)
    assert a.tobytes() == b.tobytes() and ca == cb
  other = [world.generate(i, 32, seed=3) for i in (124, 125)]
  other.append(world.generate(123, 32, seed=4))
  base = world.generate(123, 32, seed=3)[0]
  assert all(o.tobytes() != base.tobytes() for o, _ in other)


def test_scene_constraints():
  rng = np.random.default_rng(0)
  counts = {1: 0, 2: 0}
  for _ in range(1000):
    objects = world.sample_scene(rng)
    counts[len(objects)] += 1
    positions = {o.position for o in objects}
    if len(objects) == 2:
      assert positions in ({"left", "right"}, {"top", "bottom"})
    for o in objects:
      assert o.shape in world.SHAPES and o.color in world.COLORS
      assert 0.3 <= o.size <= 0.4 and abs(o.dx) <= 0.04 and abs(o.dy) <= 0.04
  assert min(counts.values()) > 300
  # Dark background: the corners are never covered by an object.
  for i in range(50):
    image, _ = world.generate(i, 32)
    corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.max() <= 40


def test_caption_round_trip():
  rng = np.random.default_rng(1)
  for _ in range(300):
    objects = world.sample_scene(rng)
    text = world.caption(objects)
    assert [o.key() for o in world.parse_caption(text)] == [o.key() for o in objects]
  assert world.caption(
      world.parse_caption("A Red circle  on the left and a blue square on the right.")
  ) == ("a red circle on the left and a blue square on the right")
  assert [o.key() for o in world.parse_caption("a green triangle in the center")] == [
      ("triangle", "green", "center")
  ]
  for bad in (
      "",
      "a purple circle on the left",
      "a red circle",
      "a red circle on the left and",
      "a red hexagon at the top",
      "two red circles on the left",
  ):
    with pytest.raises(ValueError):
      world.parse_caption(bad)


def test_checker_accepts_own_captions(dataset):
  _, data = dataset
  rate = np.mean([checker.score(image, text) for image, text in data])
  assert rate >= 0.99, rate


@pytest.mark.parametrize("kind", ["shape", "color", "position"])
def test_checker_rejects_wrong_captions(dataset, kind):
  _, data = dataset
  rng = np.random.default_rng(2)
  rate = 1 - np.mean([checker.score(image, _mutate(text, kind, rng)) for image, text in data])
  assert rate >= 0.95, (kind, rate)


def test_checker_robust_to_blur_noise_and_color_shift():
  rng = np.random.default_rng(3)
  data = [world.generate(i, 32, seed=7) for i in range(N)]
  blurred = [_blur_noise(image, 0.7, 10.0, rng) for image, _ in data]
  rate = np.mean([checker.score(b, t) for b, (_, t) in zip(blurred, data)])
  assert rate >= 0.90, rate
  shifted = [
      np.clip(b.astype(int) + rng.integers(-40, 41, 3), 0, 255).astype(np.uint8)
      for b in blurred[:200]
  ]
  rate = np.mean([checker.score(s, t) for s, (_, t) in zip(shifted, data)])
  assert rate >= 0.90, rate
  # Still not fooled by a wrong shape after blur.
  rate = 1 - np.mean(
      [checker.score(b, _mutate(t, "shape", rng)) for b, (_, t) in zip(blurred[:200], data)]
  )
  assert rate >= 0.95, rate


def test_checker_rejects_blank_and_noise():
  rng = np.random.default_rng(4)
  for i in range(20):
    _, text = world.generate(i, 32)
    assert not checker.score(np.full((32, 32, 3), 15, np.uint8), text)
    assert not checker.score(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8), text)


def test_checker_large_images():
  data = [world.generate(i, 256) for i in range(8)]
  assert all(checker.score(image, text) for image, text in data)


def test_score_batch_and_input_checks():
  data = [world.generate(i, 32) for i in range(6)]
  images = np.stack([image for image, _ in data])
  captions = [text for _, text in data]
  captions[0] = _mutate(captions[0], "color", np.random.default_rng(0))
  out = checker.score_batch(images, captions)
  assert out.dtype == bool and out.shape == (6,)
  np.testing.assert_array_equal(out, [checker.score(i, t) for i, t in zip(images, captions)])
  assert not out[0] and out[1:].all()
  with pytest.raises(ValueError):
    checker.score_batch(images, captions[:-1])
  with pytest.raises(TypeError):
    checker.score(images[0].astype(np.float32), captions[1])
  with pytest.raises(ValueError):
    checker.score(images[0], "not a caption")
  # Two objects named at one position cannot both be there.
  assert not checker.score(images[1], "a red circle on the left and a red circle on the left")

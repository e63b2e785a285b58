"""The shapes representation encoder's data and probes (psvae_jax/experiments/rep_encoder.py)."""

import numpy as np

from psvae_jax.experiments import representation
from psvae_jax.experiments import rep_encoder
from psvae_jax.shapes import world


def test_token_labels_cover_the_objects_and_only_training_compositions():
  images, shapes, colors, objs = rep_encoder.scenes(64, seed=3)
  assert images.shape == (64, 32, 32, 3) and shapes.shape == colors.shape == (64, 8, 8)
  for s, c, objects in zip(shapes, colors, objs):
    assert world.composition_split(objects) == "train"
    assert set(np.unique(s)) - {0} == {world.SHAPES.index(o.shape) + 1 for o in objects}
    assert set(np.unique(c)) - {0} == {list(world.COLORS).index(o.color) + 1 for o in objects}
    for o in objects:  # the object's tokens lie on its side of the image
      if [x.color for x in objects].count(o.color) > 1:
        continue
      ys, xs = np.nonzero(c == list(world.COLORS).index(o.color) + 1)
      if o.position == "left":
        assert xs.mean() < 4
      elif o.position == "right":
        assert xs.mean() > 4
      elif o.position == "top":
        assert ys.mean() < 4
      elif o.position == "bottom":
        assert ys.mean() > 4
  assert (shapes > 0).mean() < 0.3  # mostly background


def test_probe_reads_informative_features_and_not_noise():
  rng = np.random.default_rng(0)

  def make(n, informative):
    y = rng.integers(0, 5, n)
    x = rng.standard_normal((n, 16))
    if informative:
      x[:, :5] += 3.0 * np.eye(5)[y]
    return x, y

  probe = representation.ridge_probe
  good = probe(make(400, True), make(200, True), make(400, True))
  noise = probe(make(400, False), make(200, False), make(400, False))
  assert good["mean"] > 0.9 and good["n"] == 400
  assert noise["mean"] < 0.35  # chance: 0.2

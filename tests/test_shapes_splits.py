"""The shapes world's composition split (train / val / test) and the demo's held-out report
figures: a model that copies its input, or draws nothing, must score as such."""

import dataclasses
import itertools

import numpy as np
import pytest

from psvae_jax.data import sources
from psvae_jax.shapes import checker
from psvae_jax.experiments import figures
from psvae_jax.diffusion import settings
from psvae_jax.shapes import world


def test_held_out_objects_leave_every_attribute_pair_in_training():
  held = world.HELD_OUT_OBJECTS
  assert sorted(list(held.values()).count(s) for s in ("val", "test")) == [10, 10]
  triples = list(itertools.product(world.SHAPES, world.COLORS, world.POSITIONS))
  kept = [t for t in triples if t not in held]
  for a, b in ((0, 1), (0, 2), (1, 2)):
    assert {(t[a], t[b]) for t in kept} == {(t[a], t[b]) for t in triples}


def test_training_source_never_shows_a_held_out_composition():
  cfg = dict(source="shapes", image_size=16, num_train=400, num_eval=200, seed=3)
  train = sources.get_source(cfg, "train")
  val = sources.get_source(cfg, "eval")
  train_splits = [
      world.composition_split(world.parse_caption(train[i]["caption"])) for i in range(400)
  ]
  assert set(train_splits) == {"train"}
  val_splits = [world.composition_split(world.parse_caption(val[i]["caption"])) for i in range(200)]
  assert val_splits == ["train", "val"] * 100  # half seen, half "val" held-out; never "test"
  # Two-object scenes keep their share in the training split (rejection keeps the 50/50 mix).
  two = np.mean([" and " in train[i]["caption"] for i in range(400)])
  assert 0.4 < two < 0.6, two
  # No training caption names a held-out object or pairing.
  captions = {train[i]["caption"] for i in range(400)}
  for c in captions:
    objects = world.parse_caption(c)
    assert not any(o.key() in world.HELD_OUT_OBJECTS for o in objects), c


def test_pair_split_is_order_free_and_holds_out_some_pairings():
  kept = [t for t in itertools.product(world.SHAPES, world.COLORS, ("left", "right"))]
  kept = [t for t in kept if t not in world.HELD_OUT_OBJECTS]
  lefts = [t for t in kept if t[2] == "left"]
  rights = [t for t in kept if t[2] == "right"]
  pair_split = world._pair_split  # pylint: disable=protected-access
  splits = [pair_split(a, b) for a in lefts for b in rights]
  assert splits == [pair_split(b, a) for a in lefts for b in rights]
  frac = {s: splits.count(s) / len(splits) for s in world.SPLITS}
  assert 0.8 < frac["train"] < 0.95 and frac["val"] > 0.02 and frac["test"] > 0.02, frac


def test_rate_and_standard_error():
  r = figures.rate([True] * 30 + [False] * 10)
  assert r["n"] == 40 and r["mean"] == 0.75
  assert r["se"] == pytest.approx(np.sqrt(0.75 * 0.25 / 40))


class _FakePipe:
  """A stand-in for api.load(...): `mode` says what its outputs are."""

  image_size = 32

  class config:  # pylint: disable=invalid-name

    class sample:  # pylint: disable=invalid-name
      guidance_scale = 7.5
      steps = 10

  def __init__(self, mode):
    self.mode = mode

  def sample_settings(self, guidance_scale=None):  # api.Pipeline.sample_settings
    scale = self.config.sample.guidance_scale if guidance_scale is None else guidance_scale
    return settings.SampleSettings(steps=self.config.sample.steps, guidance_scale=scale)

  def _draw(self, captions):
    return np.stack([world.render(world.parse_caption(c), 32) for c in captions])

  def generate(self, prompts, guidance_scale=None, seed=0):
    del guidance_scale, seed
    if self.mode == "perfect":
      return self._draw(prompts)
    return np.zeros((len(prompts), 32, 32, 3), np.uint8)

  def inpaint(self, images, masks, prompts, guidance_scale=None, seed=0, composite=True):
    del guidance_scale, seed
    assert not composite  # the kept region is measured before compositing
    if self.mode == "perfect":
      return self._draw(prompts)
    if self.mode == "copy":  # returns its input: the new object is never drawn
      return np.asarray(images).copy()
    return np.zeros_like(images)  # "black": nothing kept

  def edit(self, images, prompts, strength=0.7, guidance_scale=None, seed=0):
    del guidance_scale, seed
    if strength == 0.0 or self.mode == "copy":
      return np.asarray(images).copy()
    if self.mode == "perfect":
      return self._draw(prompts)
    return np.zeros_like(images)


def test_generation_figures_score_what_is_drawn(tmp_path):
  good = figures.generation_figures(_FakePipe("perfect"), str(tmp_path), per_group=8)
  bad = figures.generation_figures(_FakePipe("black"), str(tmp_path), per_group=8)
  for name in ("seen_single", "seen_two", "unseen_single", "unseen_two"):
    # The checker accepts nominal renders almost always (jitter-free, black background).
    assert good[f"adherence_{name}"]["mean"] >= 0.75, (name, good[f"adherence_{name}"])
    assert good[f"adherence_{name}"]["n"] == 8
    assert bad[f"adherence_{name}"]["mean"] == 0.0
  assert bad["adherence_unseen_cfg1"]["n"] == 16
  assert (tmp_path / "unseen_two_objects.png").exists()
  # The "unseen" prompts name test compositions, the "seen" ones training compositions.
  txt = (tmp_path / "unseen_two_objects.txt").read_text().splitlines()[1:]
  assert all(
      world.composition_split(world.parse_caption(l.split(": ", 1)[1])) == "test" for l in txt
  )


def test_inpaint_figures_are_not_a_tautology(tmp_path):
  copy = figures.inpaint_figures(_FakePipe("copy"), str(tmp_path), num=16)
  black = figures.inpaint_figures(_FakePipe("black"), str(tmp_path), num=16)
  good = figures.inpaint_figures(_FakePipe("perfect"), str(tmp_path), num=16)
  # Copying the input keeps everything and draws nothing new.
  assert copy["inpaint_object"]["mean"] == 0.0
  assert copy["inpaint_kept"]["mean"] >= 0.75 and copy["inpaint_keep_psnr"]["mean"] == 100.0
  # A black raw decode keeps nothing, although the composited output would copy the kept half.
  assert black["inpaint_kept"]["mean"] == 0.0 and black["inpaint_keep_psnr"]["mean"] < 20.0
  assert black["inpaint_object"]["mean"] == 0.0
  assert good["inpaint_object"]["mean"] >= 0.75 and good["inpaint_kept"]["mean"] >= 0.75


def test_edit_figures_separate_adherence_and_preservation(tmp_path):
  copy = figures.edit_figures(_FakePipe("copy"), str(tmp_path), num=16)
  good = figures.edit_figures(_FakePipe("perfect"), str(tmp_path), num=16)
  black = figures.edit_figures(_FakePipe("black"), str(tmp_path), num=16)
  assert copy["edit_adherence"]["mean"] == 0.0 and copy["edit_preservation"]["mean"] >= 0.75
  assert good["edit_adherence"]["mean"] >= 0.75 and good["edit_preservation"]["mean"] >= 0.75
  assert black["edit_preservation"]["mean"] == 0.0


def test_any_colour_check_needs_the_shape():
  obj = world.ShapeObject("square", "red", "left")
  drawn = world.render([dataclasses.replace(obj, color="blue")], 32)
  assert figures._any_color(drawn, obj)  # pylint: disable=protected-access
  circle = world.render([dataclasses.replace(obj, shape="circle")], 32)
  assert not figures._any_color(circle, obj)  # pylint: disable=protected-access
  assert checker.score(drawn, "a blue square on the left")

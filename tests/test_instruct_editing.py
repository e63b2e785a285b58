"""Instruction editing end to end: paired data (records, folders, latent caches), the DiT task's
condition dropout, a trained source-conditioned DiT through the API and the sample CLI."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

import helpers
from configs import common
from conftest import run_main
from psvae_jax.data import iterators
from psvae_jax.data import latents
from psvae_jax.data import pipeline
from psvae_jax.data import sources
from psvae_jax.shapes import instruct
from psvae_jax.shapes import text as demo_text
from psvae_jax.train.tasks import dit as dit_task


def _data_cfg(**kw):
  cfg = common.data_config()
  cfg.update(source="shapes_instruct", image_size=16, num_train=32, num_eval=8, **kw)
  return cfg


def test_paired_records_share_crop_and_reach_the_batch():
  it = pipeline.build_train_iterator(_data_cfg(), global_batch_size=4, seed=0)
  batch = next(it)
  assert batch["source_image"].shape == batch["image"].shape == (4, 16, 16, 3)
  assert batch["source_image"].dtype == np.float32
  ev = pipeline.build_eval_set(_data_cfg(), 4)
  t = instruct.triple(10_000_000, 0, "train")  # the eval split's first record (a "train" one)
  src, tgt = t.images(16)
  assert ev["caption"][0] == t.instruction and ev["target_caption"][0] == t.target_caption
  np.testing.assert_array_equal(
      ev["source_image"][0], pipeline.images_to_float({"image": src[None]})["image"][0]
  )
  np.testing.assert_array_equal(
      ev["image"][0], pipeline.images_to_float({"image": tgt[None]})["image"][0]
  )


def test_folder_pairs_and_a_mismatched_source(tmp_path):
  rng = np.random.default_rng(0)
  (tmp_path / "in").mkdir()
  (tmp_path / "out").mkdir()
  lines = []
  for i in range(3):
    size = (20, 20) if i < 2 else (24, 20)  # the third pair's source has another size
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(tmp_path / f"out/{i}.png")
    Image.fromarray(rng.integers(0, 255, (*size, 3), np.uint8)).save(tmp_path / f"in/{i}.png")
    lines.append({"file": f"out/{i}.png", "source": f"in/{i}.png", "caption": f"edit {i}"})
  (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
  src = sources.ImageFolderSource(tmp_path)
  assert len(src) == 3  # the targets only: the source images are not records of their own
  assert src[0]["source_path"].endswith(os.path.join("in", "0.png"))
  cfg = common.data_config()
  cfg.update(source="folder", path=str(tmp_path), image_size=16, crop="random")
  prep = pipeline.preprocess_from_cfg(cfg, train=True, source=src)
  out = prep.random_map(src[0], np.random.default_rng(1))
  # Same crop box: a target equal to its source would give equal crops; check the box by
  # cropping both with the image's own rng replayed.
  again = prep.random_map({**src[0], "path": src[0]["source_path"]}, np.random.default_rng(1))
  np.testing.assert_array_equal(out["source_image"], again["image"])
  assert out["caption"] == "edit 0"
  bad = prep.random_map(src[2], np.random.default_rng(0))
  assert bad == {iterators.SKIP: pipeline.SKIPPED_SOURCE_MISMATCH}
  assert pipeline.SKIPPED_SOURCE_MISMATCH in iterators.COUNTERS


def test_condition_drops_have_the_configured_rates():
  d = ml_collections.ConfigDict(dict(p_uncond=0.1, p_drop_source=0.2, p_drop_both=0.05))
  n = 200_000
  f = dit_task.condition_drops(d, jax.random.key(0), n, source=True)
  text, src = np.asarray(f["drop"]), np.asarray(f["drop_source"])
  se = lambda p: 4 * np.sqrt(p * (1 - p) / n)
  for got, want in ((text.mean(), 0.1), (src.mean(), 0.2), ((text & src).mean(), 0.05)):
    assert abs(got - want) < se(want), (got, want)
  assert set(dit_task.condition_drops(d, jax.random.key(0), 4, source=False)) == {"drop"}
  for bad in (dict(p_drop_both=0.15), dict(p_uncond=0.9, p_drop_source=0.5, p_drop_both=0.1)):
    with pytest.raises(ValueError, match="p_drop_both"):
      dit_task.check_drops(ml_collections.ConfigDict({**d.to_dict(), **bad}))


def test_cache_of_pairs_holds_the_source_mean(trained_dit, tmp_path, monkeypatch):
  from psvae_jax import frozen_psvae  # pylint: disable=g-import-not-at-top
  from psvae_jax.data import cache  # pylint: disable=g-import-not-at-top
  from psvae_jax.data import specs  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(trained_dit)  # a relative workdir loads (Orbax wants absolute paths)
  ae = frozen_psvae.load_autoencoder("psvae")
  monkeypatch.chdir(tmp_path)
  spec = specs.parse_data_spec("shapes_instruct:num=16", ae.image_size)
  cache.write_cache(ae, spec, str(tmp_path / "c"), batch_size=8, dtype="float32")
  src = latents.LatentCacheSource(tmp_path / "c")
  rec = src[3]
  t = instruct.triple(3, 0, "train")
  s_img, t_img = t.images(ae.image_size)
  x = pipeline.images_to_float({"image": np.stack([s_img, t_img])})["image"]
  mu, _ = ae.encode(x)
  np.testing.assert_allclose(rec["source_mu"], np.asarray(mu[0]), atol=2e-5)
  np.testing.assert_allclose(rec["mu"], np.asarray(mu[1]), atol=2e-5)
  it = latents.build_latent_iterator(
      {"path": str(tmp_path / "c"), "source": "latents"}, global_batch_size=8, seed=0
  )
  assert next(it)["source_latent"].shape == (8, *ae.latent_shape)


@pytest.fixture(scope="module")
def instruct_dit(trained_dit, tmp_path_factory):
  """A source-conditioned DiT trained 4 steps on the triples (encoding pairs on the fly)."""
  root = tmp_path_factory.mktemp("instruct")
  text = demo_text.build_demo_text_encoder(
      str(root / "text"), instruct.vocabulary(), hidden_size=32, layers=1
  )
  run_main(
      root / "dit",
      "configs/dit.py:tiny_instruct",
      "--config.num_train_steps=4",
      "--config.eval_every=4",
      "--config.ckpt_every=4",
      f"--config.autoencoder={trained_dit / 'psvae'}",
      f"--config.text_encoder={text}",
      "--config.batch_size=8",
      "--config.eval.num_images=8",
      "--config.sample.steps=4",
  )
  return root / "dit"


def test_trained_instruct_model_edits_through_api_and_cli(instruct_dit, tmp_path):
  from psvae_jax import api  # pylint: disable=g-import-not-at-top

  metrics = json.loads((instruct_dit / "metrics.json").read_text())
  assert "edit_adherence" in metrics and "edit_adherence_cfg1" in metrics, metrics
  notes = sorted((instruct_dit / "samples").glob("edits_cfg1_*.txt"))  # what made each grid
  assert notes, list((instruct_dit / "samples").iterdir())
  text = notes[-1].read_text()
  assert "guidance_scale=1 image_guidance_scale=" in text and "\n0: " in text, text
  pipe = api.load(str(instruct_dit))
  t = [instruct.triple(i, 0, "train") for i in range(3)]
  src = np.stack([x.images(pipe.image_size)[0] for x in t])
  kw = dict(steps=4, seed=3)
  a = pipe.instruct(src, [x.instruction for x in t], **kw)
  assert a.shape == src.shape and a.dtype == np.uint8
  np.testing.assert_array_equal(a, pipe.instruct(src, [x.instruction for x in t], **kw))
  # Each condition reaches the sample: another source, another instruction, another s_I.
  other = pipe.instruct(src[::-1], [x.instruction for x in t], **kw)
  assert np.abs(other.astype(int) - a.astype(int)).max() > 0
  worded = pipe.instruct(src, ["remove the left object"] * 3, **kw)
  assert np.abs(worded.astype(int) - a.astype(int)).max() > 0
  s_i = pipe.instruct(src, [x.instruction for x in t], image_guidance_scale=4.0, **kw)
  assert np.abs(s_i.astype(int) - a.astype(int)).max() > 0
  with pytest.raises(ValueError, match="instruct"):
    pipe.edit(src, ["a red circle on the left"] * 3, steps=4)
  with pytest.raises(ValueError, match="instruct"):
    pipe.generate(["a red circle on the left"], steps=4)

  Image.fromarray(src[0]).save(tmp_path / "in.png")

  cli = lambda *args: helpers.run_module("psvae_jax.sample", f"--workdir={instruct_dit}", *args)

  r = cli(
      f"--init_image={tmp_path / 'in.png'}",
      f"--instruction={t[0].instruction}",
      "--num_images=1",
      "--steps=4",
      "--seed=3",
      f"--out_dir={tmp_path / 'o'}",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / "0000.png")), a[0])
  settings = json.loads((tmp_path / "o" / "settings.json").read_text())
  assert settings["instruction"] == t[0].instruction and settings["image_guidance_scale"] == 1.5
  for args, msg in (
      (["--prompt=a red circle"], "edits by instruction"),
      (["--instruction=make the circle blue"], "needs --init_image"),
      ([f"--init_image={tmp_path / 'in.png'}", "--instruction=x", "--strength=0.5"], "strength"),
  ):
    r = cli(*args, f"--out={tmp_path / 'x.png'}")
    assert r.returncode == 1 and msg in r.stderr, r.stderr[-2000:]


def test_instruction_on_a_text_model_is_refused(trained_dit, tmp_path):
  r = helpers.run_module(
      "psvae_jax.sample",
      f"--workdir={trained_dit / 'dit'}",
      "--init_image=x.png",
      "--instruction=make the circle blue",
      f"--out={tmp_path / 'x.png'}",
  )
  assert r.returncode == 1 and "not trained for instruction editing" in r.stderr, r.stderr


def test_two_condition_guidance_gives_each_branch_its_own_conditions():
  """InstructPix2Pix's ε(∅,∅) + s_I (ε(I,∅) − ε(∅,∅)) + s_T (ε(I,T) − ε(I,∅)) as the sampler
  runs it: a stand-in model predicts 1 where it sees the text, 10 where it sees the source and
  100 where it sees both, so one Euler step from t = 1 to 0 leaves z − (s_I·10 + s_T·101) only if
  every branch got its own (source, text) pair."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import dit as dit_config  # pylint: disable=g-import-not-at-top
  from psvae_jax import generation  # pylint: disable=g-import-not-at-top
  from psvae_jax import parallel  # pylint: disable=g-import-not-at-top
  from psvae_jax.diffusion import samplers  # pylint: disable=g-import-not-at-top

  class Branches(nn.Module):

    @nn.compact
    def __call__(self, x, t, context, context_mask, pooled, drop, source, drop_source):
      del t, context, context_mask, pooled, source
      text = (~drop).astype(jnp.float32)[:, None, None, None]
      src = (~drop_source).astype(jnp.float32)[:, None, None, None]
      return jnp.zeros_like(x) + text + 10 * src + 100 * text * src

  class Text(nn.Module):

    def __call__(self, ids, mask):
      return jnp.zeros(ids.shape + (4,)), jnp.zeros((ids.shape[0], 4))

  config = dit_config.get_config("tiny_instruct")
  ae = type("LatentShape", (), {"latent_shape": (2, 2, 3)})()
  gen = generation.Generator(config, Branches(), Text(), None, ae, parallel.make_mesh(-1, 1))
  b = 8  # one row per device
  batch = {
      "input_ids": np.ones((b, 4), np.int32),
      "attention_mask": np.ones((b, 4), np.int32),
      "source": np.zeros((b, 2, 2, 3), np.float32),
  }
  z = np.random.default_rng(0).standard_normal((b, 2, 2, 3)).astype(np.float32)
  for s_t, s_i in ((4.0, 1.5), (1.0, 3.0)):
    s = gen.sample_settings(steps=1, guidance_scale=s_t, image_guidance_scale=s_i, seed=0)
    out = gen.sample_latents({"dit": {}}, {"text": {}}, batch, z, samplers.traced(s), 0)
    np.testing.assert_allclose(np.asarray(out), z - (s_i * 10 + s_t * 101), rtol=1e-5, atol=1e-5)


def test_an_instruction_model_starts_as_the_text_to_image_model():
  """init_from's mapping (train/tasks/dit.start_from): the source's new input channels start at
  zero, so at the start the instruction model predicts what the text-to-image model does,
  whatever the source; a larger vocabulary keeps the rows of the tokens both know; other shapes
  are refused, naming the path."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from psvae_jax.models import dit  # pylint: disable=g-import-not-at-top

  kw = dict(width=32, depth=1, num_heads=2, patch_size=2, cond_type="class", num_classes=3)
  model = dit.DiT(**kw)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
  source = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
  t, labels = np.array([100.0, 900.0], np.float32), np.array([0, 2], np.int32)
  old = helpers.perturbed(model.init(jax.random.key(0), x, t, labels=labels)["params"], 0.05)
  new = model.init(jax.random.key(1), x, t, labels=labels, source=source)["params"]
  started = dit_task.start_from(new, old, patch_size=2)
  want = model.apply({"params": old}, x, t, labels=labels)
  for src in (source, -source):
    got = model.apply({"params": started}, x, t, labels=labels, source=src)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)

  emb_old = {"text": {"token_embedding": {"embedding": np.arange(6.0).reshape(3, 2)}}}
  emb_new = {"text": {"token_embedding": {"embedding": -np.ones((4, 2))}}}
  out = dit_task.start_from(emb_new, emb_old, 1, vocab={0: 0, 1: 2, 3: 1})
  assert out["text"]["token_embedding"]["embedding"].tolist() == [[0, 1], [4, 5], [-1, -1], [2, 3]]
  with pytest.raises(ValueError, match=r"dense/kernel \(2, 3\) -> \(2, 4\)"):
    dit_task.start_from(
        {"dense": {"kernel": jnp.zeros((2, 4))}}, {"dense": {"kernel": np.ones((2, 3))}}, 1
    )

"""Editing (SDEdit) and inpainting: endpoints, one compile, any input size, bad inputs, CLI."""

import numpy as np
import pytest
from PIL import Image

import helpers
from psvae_jax import api
from psvae_jax import editing
from psvae_jax import runtime
from psvae_jax.shapes import world


@pytest.fixture(scope="module")
def pipe(trained_dit):
  return api.load(str(trained_dit / "dit"))


def _scenes(n, size=32):
  pairs = [world.generate(500 + i, size) for i in range(n)]
  return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def test_edit_and_inpaint_endpoints_and_one_compile(pipe):
  images, caps = _scenes(8)
  counter = runtime.CompileCounter()
  pipe.edit(images, caps, strength=0.7, steps=10, seed=0)  # compiles encode, sampler, decode
  rec = pipe.decode(pipe.encode(images))
  first = counter.count
  s0 = pipe.edit(images, caps, strength=0.0, steps=10, seed=0)
  s1 = pipe.edit(images, caps[::-1], strength=1.0, steps=20, guidance_scale=3.0, seed=2)
  s4 = pipe.edit(images, caps, strength=0.4, steps=10, eta=0.5, seed=1, shift=2.0)
  rng = np.random.default_rng(0)
  masks = rng.uniform(size=(8, 32, 32)) > 0.7
  black, white = np.zeros((8, 32, 32)), np.ones((8, 32, 32))
  inp = pipe.inpaint(images, masks, caps, steps=10, dilation=2, feather=0.0)
  blk = pipe.inpaint(images, black, caps, steps=10)
  blk_raw = pipe.inpaint(images, black, caps, steps=10, composite=False)
  wht = pipe.inpaint(images, white, caps[::-1], steps=20, guidance_scale=3.0, seed=2, dilation=0)
  rsm = pipe.inpaint(images, masks, caps, steps=10, dilation=2, feather=0.0, resample=2)
  assert (
      counter.count == first
  ), "another strength, mask, steps, guidance scale, seed, shift or resample recompiled"
  assert editing.psnr(s0, rec) >= 40.0  # strength 0: the reconstruction
  gen = pipe.generate(caps[::-1], steps=20, guidance_scale=3.0, seed=2)
  assert np.abs(s1.astype(int) - gen).max() <= 1  # strength 1: plain generation, same seed
  assert np.abs(wht.astype(int) - gen).max() <= 1  # all-white mask: plain generation
  assert not np.array_equal(s4, s0) and not np.array_equal(s4, s1)
  np.testing.assert_array_equal(blk, images)  # all-black mask: the input comes back...
  assert editing.psnr(blk_raw, rec) >= 40.0  # ...and before compositing it is the reconstruction
  cells = editing.latent_mask(masks.astype(np.float32), (8, 8), 2)[..., 0]  # (8, 8, 8)
  keep = cells.repeat(4, 1).repeat(4, 2) < 0.5  # pixels outside the dilated latent mask
  np.testing.assert_array_equal(
      inp[np.broadcast_to(keep[..., None], inp.shape)],
      images[np.broadcast_to(keep[..., None], images.shape)],
  )
  np.testing.assert_array_equal(
      rsm[np.broadcast_to(keep[..., None], rsm.shape)],
      images[np.broadcast_to(keep[..., None], images.shape)],
  )
  assert not np.array_equal(rsm, inp)  # RePaint jumps change the regenerated region


def test_any_input_size_is_returned_at_that_size(pipe):
  img = np.random.default_rng(1).integers(0, 255, (24, 40, 3), np.uint8)
  cap = world.generate(0, 32)[1]
  crop = pipe.edit([img], [cap], strength=0.5, steps=4)
  pad = pipe.edit(img, cap, strength=0.5, steps=4, fit="pad")
  assert crop.shape == pad.shape == (1, 24, 40, 3)
  np.testing.assert_array_equal(crop[0][:, :8], img[:, :8])  # cropped-away borders kept
  mask = np.zeros((12, 20), np.uint8)  # another size than the image: resized
  mask[:, 10:] = 255
  out = pipe.inpaint([img], [mask], [cap], steps=4, feather=0.0)
  assert out.shape == (1, 24, 40, 3)
  np.testing.assert_array_equal(out[0][:, :20], img[:, :20])


def test_mask_preparation():
  # Non-binary masks are thresholded at 0.5; another size is resized first.
  m = editing.binarize_mask(np.array([[0.2, 0.49], [0.5, 0.9]], np.float32), 2, 2)
  np.testing.assert_array_equal(m, [[0, 0], [1, 1]])
  big = editing.binarize_mask(np.array([[0, 255], [0, 255]], np.uint8), 4, 4)
  np.testing.assert_array_equal(big[:, 3], 1)
  np.testing.assert_array_equal(big[:, 0], 0)
  rgb = editing.binarize_mask(np.full((3, 3, 3), 200, np.uint8), 3, 3)
  assert rgb.all()
  # Pooling: any regenerated pixel regenerates its cell; dilation grows by cells.
  pix = np.zeros((1, 32, 32), np.float32)
  pix[0, 13, 13] = 1
  cells = editing.latent_mask(pix, (8, 8), dilation=0)[0, ..., 0]
  assert cells.sum() == 1 and cells[3, 3] == 1
  grown = editing.latent_mask(pix, (8, 8), dilation=1)[0, ..., 0]
  assert grown.sum() == 9 and grown[2:5, 2:5].all()
  w = editing.feather_weights(np.pad(np.ones((8, 8)), 8), 1.0)
  assert 0 < w[7, 12] < 1 and w[12, 12] > 0.99 and w[0, 0] == 0


def test_bad_inputs(pipe, tmp_path):
  images, caps = _scenes(1)
  for s in (-0.1, 1.5, float("nan")):
    with pytest.raises(editing.EditInputError, match="strength"):
      pipe.edit(images, caps, strength=s)
  with pytest.raises(editing.EditInputError, match="not found"):
    editing.load_image(str(tmp_path / "missing.png"))
  with pytest.raises(editing.EditInputError, match="not found"):
    editing.load_mask(str(tmp_path / "missing.png"))
  (tmp_path / "junk.png").write_bytes(b"not a png")
  with pytest.raises(editing.EditInputError, match="Cannot read"):
    editing.load_image(str(tmp_path / "junk.png"))
  with pytest.raises(editing.EditInputError, match="masks"):
    pipe.inpaint(images, [np.ones((32, 32))] * 2, caps)
  with pytest.raises(editing.EditInputError, match="NaN"):
    pipe.inpaint(images, [np.full((32, 32), np.nan)], caps)
  with pytest.raises(editing.EditInputError, match="prompts"):
    pipe.edit(images, caps * 2)
  for r in (-1, 2.5, 101):
    with pytest.raises(editing.EditInputError, match="resample"):
      pipe.inpaint(images, [np.ones((32, 32))], caps, resample=r)
  with pytest.raises(editing.EditInputError, match="resample"):  # not silently ignored
    pipe.edit(images, caps, resample=2)


def _cli(trained_dit, *args):
  prompt = world.generate(0, 32)[1]
  return helpers.run_module(
      "psvae_jax.sample", f"--workdir={trained_dit / 'dit'}", f"--prompt={prompt}", *args, devices=1
  )


def test_sample_cli_inpaint_and_clear_errors(trained_dit, tmp_path):
  img = tmp_path / "in.png"
  Image.fromarray(world.generate(3, 48)[0]).save(img)
  mask = tmp_path / "mask.png"
  Image.fromarray(np.tile(np.arange(16, dtype=np.uint8) * 16, (16, 1))).save(mask)
  for args, msg in [
      ([f"--init_image={tmp_path / 'no.png'}"], "not found"),
      ([f"--init_image={img}", "--strength=1.5"], "strength must be in [0, 1]"),
      ([f"--mask={mask}"], "--mask needs --init_image"),
  ]:
    r = _cli(trained_dit, *args, f"--out={tmp_path / 'x.png'}")
    assert r.returncode != 0 and msg in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "jax/_src" not in r.stderr
  out = tmp_path / "each"
  r = _cli(
      trained_dit,
      f"--init_image={img}",
      f"--mask={mask}",
      "--num_images=2",
      "--steps=4",
      f"--out_dir={out}",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  results = [np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]
  assert len(results) == 2 and results[0].shape == (48, 48, 3)
  np.testing.assert_array_equal(results[0][:, :20], np.asarray(Image.open(img))[:, :20])


def test_ddim_edit_endpoints_and_known_region(pipe):
  """The same edit paths with the eps/DDIM sampler (the tiny model is flow: its weights are reused
  under an eps objective, which is enough for these sampler-level properties)."""
  import copy  # pylint: disable=g-import-not-at-top
  from psvae_jax.diffusion import objectives  # pylint: disable=g-import-not-at-top
  from psvae_jax.diffusion import schedules  # pylint: disable=g-import-not-at-top

  ddim = copy.copy(pipe)
  ddim.gen = copy.copy(pipe.gen)
  ddim.gen.objective = objectives.EpsilonObjective(schedules.linear_schedule())
  images, caps = _scenes(8)
  rec = ddim.decode(ddim.encode(images))
  s0 = ddim.edit(images, caps, strength=0.0, steps=10)
  assert editing.psnr(s0, rec) >= 40.0
  s1 = ddim.edit(images, caps, strength=1.0, steps=10, seed=4)
  assert np.abs(s1.astype(int) - ddim.generate(caps, steps=10, seed=4)).max() <= 1
  z0 = ddim.encode(images)  # (8, 8, 8, C)
  mask = np.zeros(z0.shape[:3] + (1,), np.float32)
  mask[:, :, 4:] = 1  # regenerate the right half of the latent grid
  z = np.asarray(
      ddim.gen.edit_latents(
          ddim.params,
          ddim.consts,
          ddim.gen.host_condition(caps),
          z0,
          mask,
          ddim.sample_settings(steps=10, guidance_scale=7.5, eta=0.0, seed=0),
          strength=1.0,
      )
  )
  np.testing.assert_allclose(z[:, :, :4], z0[:, :, :4], atol=1e-5)  # known latents kept
  assert np.abs(z[:, :, 4:] - z0[:, :, 4:]).mean() > 0.1

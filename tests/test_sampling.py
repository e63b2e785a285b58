"""Stage 3 end to end: the API and CLI sample with one compile; same seed, same images."""

import json

import numpy as np
from PIL import Image
import pytest

import helpers
from psvae_jax import api
from psvae_jax import runtime

PROMPTS = [
    "a red circle on the left and a blue square on the right",
    "a green triangle in the center",
]


def test_workdirs(trained_dit):
  for stage in ("psvae", "dit"):
    assert (trained_dit / stage / "config.json").exists()
  assert (trained_dit / "psvae" / "latent_stats.npz").exists()
  assert list((trained_dit / "dit" / "samples").glob("samples_*.png"))


def test_generate_compiles_once_and_is_deterministic(trained_dit):
  pipe = api.load(str(trained_dit / "dit"))
  counter = runtime.CompileCounter()
  prompts = [PROMPTS[i % 2] for i in range(8)]
  a = pipe.generate(prompts, steps=50, guidance_scale=7.5, seed=0)
  first = counter.count
  assert a.shape == (8, 32, 32, 3) and a.dtype == np.uint8
  b = pipe.generate(prompts[::-1], steps=20, guidance_scale=3.0, eta=0.5, seed=1)
  c = pipe.generate(prompts, steps=50, guidance_scale=7.5, seed=0)
  d = pipe.generate(prompts, steps=50, guidance_scale=7.5, seed=0, shift=3.0)  # the sampling shift
  e = pipe.generate(prompts, steps=10, guidance_interval=(0.3, 0.9), guidance_rescale=0.7)
  # One settings object, as the sample CLI passes it: the same images as the keywords.
  f = pipe.generate(prompts, pipe.sample_settings(steps=50, guidance_scale=7.5, seed=0))
  assert (
      counter.count == first
  ), "another guidance scale/steps/eta/seed/prompt/shift/interval/rescale must not recompile"
  np.testing.assert_array_equal(a, c)
  np.testing.assert_array_equal(a, f)
  assert not np.array_equal(a, b) and not np.array_equal(a, e)
  # (a 4-step DiT's velocity is ~constant, so any grid gives ~the same images: tests/test_shift.py
  # checks what the shift does; here that it reaches the sampler, traced.)
  assert d.shape == a.shape
  with pytest.raises(ValueError, match="shift"):
    pipe.generate(prompts, steps=5, shift=0.0)
  # An image depends on its seed and index, not on the batch it is generated in.
  one = pipe.generate(prompts[:1], steps=50, guidance_scale=7.5, seed=0)
  np.testing.assert_array_equal(one[0], a[0])


def test_encode_decode_roundtrip(trained_dit):
  from psvae_jax.shapes import world  # pylint: disable=g-import-not-at-top

  pipe = api.load(str(trained_dit / "dit"))
  images = np.stack([world.generate(1000 + i, 32, 0)[0] for i in range(4)])
  z = pipe.encode(images)
  assert z.shape == (4, 8, 8, 16)
  recon = pipe.decode(z)
  assert recon.shape == images.shape and recon.dtype == np.uint8
  # Each reconstruction is nearer its own image than the others' (the latent carries the image).
  err = lambda a, b: float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
  own = err(recon, images)
  assert own < min(err(recon, np.roll(images, k, axis=0)) for k in (1, 2, 3)), own


def test_sample_cli(trained_dit, tmp_path):
  out = tmp_path / "grid.png"
  r = helpers.run_module(
      "psvae_jax.sample",
      f"--workdir={trained_dit / 'dit'}",
      f"--prompt={PROMPTS[0]}",
      "--num_images=2",
      "--steps=5",
      "--shift=2.5",
      f"--out={out}",
      f"--out_dir={tmp_path / 'each'}",
      devices=1,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert Image.open(out).size[0] > 32
  assert len(list((tmp_path / "each").glob("*.png"))) == 2
  settings = json.loads((tmp_path / "grid.png.json").read_text())  # what made the grid
  assert settings["prompt"] == PROMPTS[0] and settings["steps"] == 5 and settings["shift"] == 2.5
  assert "sample: wrote" in r.stdout
  # The default output is the tool's own lines: no Orbax / JAX INFO logs (issue 15).
  assert len((r.stdout + r.stderr).splitlines()) <= 10, r.stderr[-3000:]


def test_training_grids_record_their_prompts(trained_dit):
  notes = sorted((trained_dit / "dit" / "samples").glob("samples_*.txt"))
  assert notes, list((trained_dit / "dit" / "samples").iterdir())
  text = notes[-1].read_text()
  assert "guidance_scale=" in text and "\n0: " in text, text

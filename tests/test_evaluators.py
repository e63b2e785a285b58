"""Evaluators: rFID / PSNR / SSIM do not move with the eval batch size or the device count.

The "autoencoder" is a fixed jitted blur + colour shift (an image-to-image map whose output
differs from its input), the feature net a random-init shapes proxy: what is under test is
the evaluators' batching, padding masks, sharding and float64 reductions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from psvae_jax import parallel
from psvae_jax.evals import checkers
from psvae_jax import pixels

from psvae_jax.evals import evaluators
from psvae_jax.evals import features
from psvae_jax.evals import image_metrics
from psvae_jax.evals import runner
from psvae_jax.shapes import proxy
from psvae_jax.shapes import world

N = 72  # not a multiple of 32 or 64: the last batch is padded


def _data(n):
  imgs, caps = zip(*(world.generate(i, 32, seed=7) for i in range(n)))
  return {"image": pixels.to_float(np.stack(imgs)), "caption": list(caps)}


@jax.jit
def _fake_autoencoder(x):
  blur = image_metrics.gaussian_filter2d(x, sigma=0.8)
  return jnp.clip(blur * 0.9 + 0.05, -1, 1)


_CACHE = {}


def _results(batch_size, devices):
  if (batch_size, devices) not in _CACHE:
    _CACHE[batch_size, devices] = _compute(batch_size, devices)
  return _CACHE[batch_size, devices]


def _compute(batch_size, devices):
  mesh = parallel.make_mesh(-1, 1, devices=jax.devices()[:devices])
  module, params = proxy.random_proxy(0)
  ctx = evaluators.EvalContext(mesh=mesh, batch_size=batch_size, eval_data=_data)

  def reconstruct(images):
    out = []
    for i, j in ctx.batches(len(images)):
      x, _ = ctx.put(images[i:j])
      out.append(np.asarray(_fake_autoencoder(x))[: j - i])
    return np.concatenate(out)

  ctx.reconstruct = reconstruct
  ctx.feature_nets["proxy"] = (jax.jit(proxy.feature_fn(module, params)), proxy.FEATURE_DIM)
  evals = {
      "rfid_proxy": {"type": "rfid", "feature": "proxy", "num_images": N},
      "psnr": {"type": "psnr", "num_images": N},
      "ssim": {"type": "ssim", "num_images": N},
  }
  return evaluators.run_all(evals, ctx)


def test_reconstruction_metrics_do_not_depend_on_batch_size_or_devices():
  base = _results(8, 8)
  assert base["rfid_proxy/rfid"] > 0 and 10 < base["psnr/psnr"] < 60
  for bs, dev in ((32, 8), (64, 8), (8, 1)):
    r = _results(bs, dev)
    for k, tol in (("psnr/psnr", 1e-6), ("ssim/ssim", 1e-6), ("rfid_proxy/rfid", 1e-3)):
      rel = abs(r[k] - base[k]) / abs(base[k])
      print(f"batch {bs} devices {dev} {k}: {r[k]:.8g} vs {base[k]:.8g} rel {rel:.1e}")
      assert rel <= tol, (bs, dev, k, rel)
  assert base["rfid_proxy/num_samples"] == N and "eval images" in base["rfid_proxy/reference"]


def test_ssim_evaluator_matches_skimage():
  r = _results(32, 8)
  data = _data(N)
  rec = np.asarray(_fake_autoencoder(data["image"]))
  ref = np.mean(
      [
          structural_similarity(
              (a + 1) / 2,
              (b + 1) / 2,
              channel_axis=-1,
              data_range=1.0,
              gaussian_weights=True,
              sigma=1.5,
              use_sample_covariance=False,
          )
          for a, b in zip(rec, data["image"])
      ]
  )
  assert abs(r["ssim/ssim"] - ref) <= 1e-4


def test_unknown_evaluator_type_is_named():
  with pytest.raises(ValueError, match="fdi"):
    evaluators.get_evaluator({"type": "fdi"})


def test_checker_and_feature_net_registries():
  """Adherence checkers and feature nets come from registries (conftest registers the shapes)."""
  caps = [world.generate(i, 32)[1] for i in range(3)]
  assert checkers.for_captions(caps) is checkers.get("shapes") is not None
  assert checkers.for_captions(caps + ["a photo of a dog"]) is None
  assert checkers.for_captions([]) is None
  with pytest.raises(
      ValueError, match=r"'clip'; registered: \['classifier', 'inception', 'proxy'\]"
  ):
    features.feature_net("clip", "weights.safetensors", 32)


def test_in_training_runs_configured_evaluators_with_saved_proxy(tmp_path):
  """The periodic-eval entry point (tasks' evaluate): loads the proxy file, numbers only."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from psvae_jax.weights import common  # pylint: disable=g-import-not-at-top

  _, params = proxy.random_proxy(0)
  path = str(tmp_path / "fid_proxy.safetensors")
  save_file({k: np.asarray(v) for k, v in common.flatten(params).items()}, path)
  config = ml_collections.ConfigDict(
      dict(
          eval=dict(batch_size=32),
          data=dict(image_size=32),
          evals=dict(
              rfid_proxy=dict(type="rfid", feature="proxy", weights=path, num_images=N),
              psnr=dict(type="psnr", num_images=N),
          ),
      )
  )
  mesh = parallel.make_mesh(-1, 1)
  out = runner.in_training(
      config, mesh, _data, reconstruct=lambda x: np.asarray(jax.jit(_fake_autoencoder)(x))
  )
  base = _results(32, 8)
  assert set(out) == {"rfid_proxy/rfid", "rfid_proxy/num_samples", "psnr/psnr", "psnr/num_images"}
  assert abs(out["rfid_proxy/rfid"] - base["rfid_proxy/rfid"]) <= 1e-3 * base["rfid_proxy/rfid"]
  assert abs(out["psnr/psnr"] - base["psnr/psnr"]) <= 1e-5 * base["psnr/psnr"]


def test_fid_conditions_prompt_file_and_class_balanced(tmp_path):
  """fid generates for the eval captions, a prompt file's lines or balanced labels, cycled to N."""
  seen = []

  def generate(captions, steps, guidance_scale, seed, labels=None):
    seen.append((captions, None if labels is None else list(labels)))
    n = len(captions if labels is None else labels)
    return np.random.default_rng(n).integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)

  mesh = parallel.make_mesh(-1, 1)
  ctx = evaluators.EvalContext(
      mesh=mesh,
      batch_size=8,
      eval_data=_data,
      generate=generate,
      feature_nets={"f": (lambda x: x.reshape(x.shape[0], -1)[:, :4].astype(jnp.float32), 4)},
  )
  ref = tmp_path / "ref.npz"
  np.savez(ref, mu=np.zeros(4), sigma=np.eye(4))
  (tmp_path / "p.txt").write_text("a red circle on the left\n\na blue square at the top\n")
  base = {"type": "fid", "num_samples": 5, "feature": "f", "reference": str(ref)}
  out = evaluators.FID({**base, "prompts_file": str(tmp_path / "p.txt")}).run(ctx)
  assert seen[-1] == ((["a red circle on the left", "a blue square at the top"] * 3)[:5], None)
  assert "2 prompts" in out["conditions"] and np.isfinite(out["fid"])
  out = evaluators.FID({**base, "class_balanced": 2}).run(ctx)
  assert seen[-1] == (None, [0, 1, 0, 1, 0]) and "class-balanced" in out["conditions"]
  evaluators.FID(base).run(ctx)
  assert seen[-1][0] == list(_data(5)["caption"])
  (tmp_path / "empty.txt").write_text("\n")
  with pytest.raises(ValueError, match="no prompts"):
    evaluators.FID({**base, "prompts_file": str(tmp_path / "empty.txt")}).run(ctx)

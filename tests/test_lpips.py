"""Parity tests: flax LPIPS (VGG) vs a torch.nn re-statement of torchvision + lpips
(bench/_torch_mirrors.torch_lpips_module, also the stage-2 bench's LPIPS)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bench import _torch_mirrors
from psvae_jax.models import lpips as lpips_model
from psvae_jax.weights import convert as convert_lib
from psvae_jax.weights import lpips as lpips_weights


@pytest.fixture(scope="module")
def torch_model_and_files(tmp_path_factory):
  model = _torch_mirrors.torch_lpips_module(seed=0)
  d = tmp_path_factory.mktemp("lpips")
  vgg_sd = {f"features.{k}": v for k, v in model.features.state_dict().items()}
  # The real torchvision file also holds the classifier: it must be ignored.
  vgg_sd["classifier.0.weight"] = torch.zeros(8, 4)
  vgg_sd["classifier.0.bias"] = torch.zeros(8)
  heads_sd = {k: v for k, v in model.state_dict().items() if k.startswith("lin")}
  torch.save(vgg_sd, d / "vgg16.pth")
  torch.save(heads_sd, d / "vgg.pth")
  return model, str(d / "vgg16.pth"), str(d / "vgg.pth"), heads_sd


def _images(size, n=2, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
  y = np.clip(x + 0.3 * rng.normal(size=x.shape), -1, 1).astype(np.float32)
  return x, y


def _to_torch(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# Module-level jit: LPIPS modules compare equal, so same-shape calls share a compile.
@functools.partial(jax.jit, static_argnums=0)
def _distance_and_taps(module, params, x, y):
  return (
      lpips_model.lpips_distance(module, params, x, y),
      module.apply(params, x, method=lpips_model.LPIPS.features),
  )


@pytest.mark.parametrize("size", [64, 32])
def test_lpips_matches_torch(torch_model_and_files, size):
  model, vgg_path, heads_path, _ = torch_model_and_files
  module, params = lpips_weights.load_lpips(vgg_path, heads_path)
  x, y = _images(size)
  with torch.no_grad():
    taps_x = model.taps(_to_torch(x))
    ref = model.distance_from_taps(taps_x, model.taps(_to_torch(y))).numpy()
  ref_taps = [t.numpy().transpose(0, 2, 3, 1) for t in taps_x]
  got, taps = _distance_and_taps(module, params, x, y)
  assert got.shape == (2,)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-5)
  assert [t.shape[1:] for t in taps] == lpips_model.tap_shapes(size)
  for t, r in zip(taps, ref_taps):
    assert t.shape == r.shape
    np.testing.assert_allclose(np.asarray(t), r, rtol=1e-4, atol=1e-5 * np.abs(r).max())


def test_safetensors_roundtrip(torch_model_and_files, tmp_path):
  _, vgg_path, heads_path, _ = torch_model_and_files
  vgg_st, heads_st = str(tmp_path / "vgg16.safetensors"), str(tmp_path / "vgg.safetensors")
  assert convert_lib.main([f"--src={vgg_path}", f"--out={vgg_st}"]) == 0
  assert convert_lib.main([f"--src={heads_path}", f"--out={heads_st}"]) == 0
  _, p_pth = lpips_weights.load_lpips(vgg_path, heads_path)
  _, p_st = lpips_weights.load_lpips(vgg_st, heads_st)
  jax.tree_util.tree_map(np.testing.assert_array_equal, p_pth, p_st)


def test_bad_heads_file_is_named(torch_model_and_files, tmp_path):
  _, vgg_path, _, heads_sd = torch_model_and_files
  bad = dict(heads_sd)
  del bad["lin2.model.1.weight"]
  bad["lin1.model.1.weight"] = torch.zeros(1, 100, 1, 1)
  bad["lin9.model.1.weight"] = torch.zeros(1, 3, 1, 1)
  path = str(tmp_path / "bad.pth")
  torch.save(bad, path)
  with pytest.raises(ValueError) as e:
    lpips_weights.load_lpips(vgg_path, path)
  msg = str(e.value)
  assert "lin2/kernel" in msg and "missing" in msg
  assert "lin1/kernel: got (1, 1, 100, 1), expected (1, 1, 128, 1)" in msg
  assert "lin9.model.1.weight" in msg
  assert "classifier" not in msg


def test_missing_vgg_conv_is_named(torch_model_and_files, tmp_path):
  _, vgg_path, heads_path, _ = torch_model_and_files
  sd = torch.load(vgg_path, weights_only=True)
  del sd["features.28.bias"]
  path = str(tmp_path / "vgg_bad.pth")
  torch.save(sd, path)
  with pytest.raises(ValueError, match="vgg/features_28/bias"):
    lpips_weights.load_lpips(path, heads_path)


def test_random_lpips_small_images():
  module, params = lpips_weights.random_lpips(jax.random.key(0), image_size=32)
  x, y = _images(32, seed=1)  # 32 px: the relu5_3 tap is 2x2.
  d, taps = _distance_and_taps(module, params, jnp.asarray(x), jnp.asarray(y))
  assert taps[-1].shape == (2, 2, 2, 512)
  d = np.asarray(d)
  assert d.shape == (2,) and np.all(np.isfinite(d)) and np.all(d > 0)
  d_same, _ = _distance_and_taps(module, params, x, x)
  np.testing.assert_allclose(np.asarray(d_same), 0.0, atol=1e-7)

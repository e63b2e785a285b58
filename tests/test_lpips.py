"""Parity tests: flax LPIPS (VGG) vs a torch.nn re-statement of torchvision + lpips."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from psvae_jax.models import lpips as lpips_model
from psvae_jax.weights import convert as convert_lib
from psvae_jax.weights import lpips as lpips_weights

# torchvision vgg16 cfg "D"; "M" is a max-pool.
_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_TAP_ENDS = (4, 9, 16, 23, 30)  # lpips slice boundaries into `features`.
_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


def _torch_vgg_features() -> nn.Sequential:
  """torchvision.models.vgg16().features, same module indices (features.N)."""
  layers, c_in = [], 3
  for v in _CFG:
    if v == "M":
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
      c_in = v
  features = nn.Sequential(*layers)
  for m in features:
    if isinstance(m, nn.Conv2d):  # He init keeps activations O(1) through 13 convs.
      nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
      nn.init.uniform_(m.bias, -0.1, 0.1)
  return features


class _NetLinLayer(nn.Module):
  """lpips.NetLinLayer(use_dropout=True): keys `model.1.weight`."""

  def __init__(self, c_in):
    super().__init__()
    self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c_in, 1, 1, bias=False))

  def forward(self, x):
    return self.model(x)


class _TorchLPIPS(nn.Module):
  """lpips.LPIPS(net='vgg', lpips=True, spatial=False, version='0.1') forward."""

  def __init__(self, features):
    super().__init__()
    self.features = features
    for k, c in enumerate((64, 128, 256, 512, 512)):
      setattr(self, f"lin{k}", _NetLinLayer(c))
      nn.init.uniform_(getattr(self, f"lin{k}").model[1].weight, 0.0, 0.1)

  def taps(self, x):
    h, out, start = (x - _SHIFT) / _SCALE, [], 0
    for end in _TAP_ENDS:
      h = self.features[start:end](h)
      out.append(h)
      start = end
    return out

  def distance_from_taps(self, taps0, taps1):
    total = 0
    for k, (f0, f1) in enumerate(zip(taps0, taps1)):
      f0 = f0 / (torch.sqrt(torch.sum(f0**2, dim=1, keepdim=True)) + 1e-10)
      f1 = f1 / (torch.sqrt(torch.sum(f1**2, dim=1, keepdim=True)) + 1e-10)
      total = total + getattr(self, f"lin{k}")((f0 - f1) ** 2).mean([2, 3], keepdim=True)
    return total[:, 0, 0, 0]

  def forward(self, x, y):
    return self.distance_from_taps(self.taps(x), self.taps(y))


@pytest.fixture(scope="module")
def torch_model_and_files(tmp_path_factory):
  torch.manual_seed(0)
  model = _TorchLPIPS(_torch_vgg_features()).eval()
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

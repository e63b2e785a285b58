"""FID Inception-v3: parity with a torch.nn re-creation of pytorch-fid's network, and the loader.

torchvision is not importable here, so the test re-creates pytorch-fid's
``fid_inception_v3()`` (torchvision's Inception3 trunk with FIDInceptionA/C/E_1/E_2) with
torch.nn, with the same module names, random weights (He-normal convs, BatchNorm affine and running
statistics drawn near the identity, so activations stay O(1) through the 94 convs and the comparison
is well conditioned).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from psvae_jax.models import inception as inception_lib
from psvae_jax.weights import inception as inception_weights


class BasicConv2d(nn.Module):

  def __init__(self, cin, cout, **kw):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class FIDInceptionA(nn.Module):

  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

  def forward(self, x):
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3(x)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([b3, bd, F.max_pool2d(x, 3, 2)], 1)


class FIDInceptionC(nn.Module):

  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_1(x)
    for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
      bd = m(bd)
    bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = x
    for m in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = m(b7)
    return torch.cat([b3, b7, F.max_pool2d(x, 3, 2)], 1)


class FIDInceptionE(nn.Module):

  def __init__(self, cin, max_pool):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b1 = self.branch1x1(x)
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    if self.max_pool:  # FIDInceptionE_2
      pooled = F.max_pool2d(x, 3, 1, 1)
    else:  # FIDInceptionE_1
      pooled = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class TorchFIDInception(nn.Module):
  """pytorch-fid InceptionV3([3], resize_input=True, normalize_input=True) on [0, 1] NCHW."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.Mixed_5b = FIDInceptionA(192, 32)
    self.Mixed_5c = FIDInceptionA(256, 64)
    self.Mixed_5d = FIDInceptionA(288, 64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = FIDInceptionC(768, 128)
    self.Mixed_6c = FIDInceptionC(768, 160)
    self.Mixed_6d = FIDInceptionC(768, 160)
    self.Mixed_6e = FIDInceptionC(768, 192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = FIDInceptionE(1280, False)
    self.Mixed_7c = FIDInceptionE(2048, True)
    self.fc = nn.Linear(2048, 1008)  # in the FID state dict, unused for pool3

  def forward(self, x):
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, 3, 2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)
    for name in (
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
        "Mixed_7a",
        "Mixed_7b",
        "Mixed_7c",
    ):
      x = getattr(self, name)(x)
    return F.adaptive_avg_pool2d(x, (1, 1))[:, :, 0, 0]  # (B, 2048)


@pytest.fixture(scope="module")
def torch_model():
  torch.manual_seed(0)
  model = TorchFIDInception()
  for m in model.modules():
    if isinstance(m, nn.Conv2d):  # He init keeps ReLU activations O(1) through 94 convs
      nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    if isinstance(m, nn.BatchNorm2d):  # random affine and running statistics near identity
      m.weight.data.uniform_(0.8, 1.2)
      m.bias.data.uniform_(-0.1, 0.1)
      m.running_mean.uniform_(-0.1, 0.1)
      m.running_var.uniform_(0.8, 1.2)
  return model.eval()


def _test_images():
  return np.random.default_rng(1).integers(0, 256, (2, 37, 45, 3), dtype=np.uint8)


def _to_torch(images):
  return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def _state_dict(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def test_bilinear_resize_matches_torch_interpolate():
  rng = np.random.default_rng(0)
  for h, w in ((32, 45), (512, 300)):  # up- and downsampling
    x = rng.uniform(0, 1, (2, h, w, 3)).astype(np.float32)
    ours = np.asarray(inception_lib.resize_bilinear(x, 299))
    ref = (
        F.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2),
            size=(299, 299),
            mode="bilinear",
            align_corners=False,
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    np.testing.assert_allclose(ours, ref, atol=1e-5)  # matmul vs lerp rounding


def test_pool3_features_match_torch(torch_model, tmp_path):
  """Same random weights -> pool3 features within 1e-4 max abs (uint8 input, 37x45 -> 299)."""
  images = _test_images()
  with torch.no_grad():
    ref = torch_model(_to_torch(images)).numpy()
  path = str(tmp_path / "pt_inception.pth")
  torch.save(torch_model.state_dict(), path)  # also exercises the .pth path of the loader
  module, params = inception_weights.load_inception(path)
  ours = np.asarray(module.apply({"params": params}, images))
  assert ours.shape == (2, 2048)
  assert float(np.std(ref)) > 0.05, "degenerate reference activations"
  err = float(np.max(np.abs(ours - ref)))
  print(f"inception pool3 parity: max abs {err:.3g}, feature std {np.std(ref):.3g}")
  assert err <= 1e-4


def test_torchvision_imagenet_weights_are_refused(torch_model):
  sd = _state_dict(torch_model)
  tv = dict(
      sd,
      **{"fc.weight": np.zeros((1000, 2048), np.float32), "fc.bias": np.zeros((1000,), np.float32)},
  )
  with pytest.raises(ValueError, match="torchvision"):
    inception_weights.params_from_state_dict(tv)
  aux = dict(sd, **{"AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1), np.float32)})
  with pytest.raises(ValueError, match="AuxLogits"):
    inception_weights.params_from_state_dict(aux)


def test_mismatched_weights_name_the_entries(torch_model):
  sd = _state_dict(torch_model)
  del sd["Mixed_6b.branch7x7_2.conv.weight"]
  sd["Mixed_5b.branch_pool.bn.weight"] = np.ones((7,), np.float32)
  sd["extra.weight"] = np.ones((3,), np.float32)
  with pytest.raises(ValueError) as e:
    inception_weights.params_from_state_dict(sd)
  msg = str(e.value)
  assert "Mixed_6b/branch7x7_2/conv/kernel" in msg  # missing
  assert "Mixed_5b/branch_pool/bn/scale: got (7,), expected (32,)" in msg  # mis-shaped
  assert "(source) extra.weight" in msg  # unexpected

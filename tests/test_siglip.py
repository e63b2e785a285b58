"""Parity tests: the flax SigLIP / SigLIP2 vision tower + importer against tiny random Hugging
Face models (transformers' PyTorch SiglipVisionModel / Siglip2VisionModel), incl. position
embeddings resized to other grids."""

import jax
import numpy as np
import pytest
import torch
import transformers

import helpers
from psvae_jax.models import siglip
from psvae_jax.weights import siglip as siglip_weights

_TOL = 1e-5
_CFG = dict(
    hidden_size=32,
    intermediate_size=72,  # not a whole multiple of the width, as so400m's 4304 / 1152
    num_hidden_layers=2,
    num_attention_heads=2,
    patch_size=4,
)


def _perturb(model):
  return helpers.perturb_torch(model).eval()


def _images(hw, seed=1):
  return np.random.default_rng(seed).uniform(-1, 1, (2, hw[0], hw[1], 3)).astype(np.float32)


def _flax(tmp_path):
  module, params = siglip_weights.load_siglip(str(tmp_path))
  return lambda x: np.asarray(jax.jit(module.apply)({"params": params}, x))


@pytest.mark.parametrize("hw", [(40, 40), (32, 48)])  # the stored 10x10 grid; resized to 8x12
def test_siglip_matches_transformers(tmp_path, hw):
  torch.manual_seed(0)
  cfg = transformers.SiglipVisionConfig(image_size=40, **_CFG)
  model = _perturb(transformers.SiglipVisionModel(cfg))
  model.save_pretrained(str(tmp_path))
  x = _images(hw)
  with torch.no_grad():
    ref = model(
        pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)), interpolate_pos_encoding=True
    ).last_hidden_state.numpy()
  out = _flax(tmp_path)(x)
  gh, gw = hw[0] // 4, hw[1] // 4
  assert out.shape == (2, gh, gw, 32)
  err = np.abs(out.reshape(2, gh * gw, 32) - ref).max()
  assert err <= _TOL, err


def _patchify(x, p):
  """Siglip2ImageProcessor's patches: (B, H, W, C) -> (B, N, p*p*C), (row, column, channel)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


@pytest.mark.parametrize("hw", [(40, 40), (24, 56), (64, 64)])  # 10x10 stored; 6x14; 16x16
def test_siglip2_matches_transformers(tmp_path, hw):
  torch.manual_seed(0)
  cfg = transformers.Siglip2VisionConfig(num_patches=100, **_CFG)
  model = _perturb(transformers.Siglip2VisionModel(cfg))
  model.save_pretrained(str(tmp_path))
  x = _images(hw)
  gh, gw = hw[0] // 4, hw[1] // 4
  with torch.no_grad():
    ref = model(
        pixel_values=torch.from_numpy(_patchify(x, 4)),
        pixel_attention_mask=torch.ones(2, gh * gw, dtype=torch.long),
        spatial_shapes=torch.tensor([[gh, gw]] * 2),
    ).last_hidden_state.numpy()
  out = _flax(tmp_path)(x)
  err = np.abs(out.reshape(2, gh * gw, 32) - ref).max()
  assert err <= _TOL, err


def test_full_model_directory_and_refusals(tmp_path):
  """A text + vision SiglipModel directory loads its vision tower; a DINOv2 one is refused."""
  torch.manual_seed(0)
  cfg = transformers.SiglipConfig(
      vision_config=dict(image_size=16, **_CFG),
      text_config=dict(
          hidden_size=32,
          intermediate_size=64,
          num_hidden_layers=1,
          num_attention_heads=2,
          vocab_size=50,
      ),
  )
  model = _perturb(transformers.SiglipModel(cfg))
  model.save_pretrained(str(tmp_path / "full"))
  x = _images((16, 16))
  with torch.no_grad():
    ref = model.vision_model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)))
  out = _flax(tmp_path / "full")(x)
  assert np.abs(out.reshape(2, 16, 32) - ref.last_hidden_state.numpy()).max() <= _TOL
  transformers.Dinov2Model(
      transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
  ).save_pretrained(str(tmp_path / "dino"))
  with pytest.raises(ValueError, match="Not a SigLIP"):
    siglip_weights.load_siglip(str(tmp_path / "dino"))


def test_sizes():
  so = siglip.siglip_config("so400m")
  assert (so["hidden_size"], so["mlp_dim"], so["num_layers"], so["pos_grid"]) == (
      1152,
      4304,
      27,
      16,
  )
  with pytest.raises(ValueError, match="Unknown SigLIP size"):
    siglip.siglip_config("H")


def test_psvae_on_a_siglip2_directory(tmp_path):
  """model.encoder.kind=siglip2: the stage-1 task loads the directory, feeds it SigLIP-normalised
  pixels (its features equal transformers' on the same image), E_s starts from its last block;
  a DINOv2 directory under kind=siglip2 and paper size without weights refuse with one line."""
  import functools  # pylint: disable=g-import-not-at-top

  from configs import svae as svae_config  # pylint: disable=g-import-not-at-top
  from psvae_jax import builders  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import optim  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import preflight  # pylint: disable=g-import-not-at-top
  from psvae_jax.train.tasks import autoencoder  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  cfg = transformers.Siglip2VisionConfig(num_patches=64, **_CFG)  # 8x8 grid: 32 px, patch 4
  model = _perturb(transformers.Siglip2VisionModel(cfg))
  model.save_pretrained(str(tmp_path / "siglip2"))
  config = svae_config.get_config("tiny")
  config.model.encoder.update(kind="siglip2", weights=str(tmp_path / "siglip2"))
  config.model.sem_init_from_encoder = True
  task = autoencoder.AutoencoderTask(config)
  tx = optim.make_optimizer(
      config.optim, 10, functools.partial(optim.label_params, groups=task.param_groups)
  )
  state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(jax.random.key(0))
  params = task.warm_start(state.params)
  x = _images((32, 32))
  feats = task.model.apply({"params": params}, x, method=task.model.features)
  with torch.no_grad():
    ref = model(
        pixel_values=torch.from_numpy(_patchify(x, 4)),
        pixel_attention_mask=torch.ones(2, 64, dtype=torch.long),
        spatial_shapes=torch.tensor([[8, 8]] * 2),
    ).last_hidden_state.numpy()
  assert np.abs(np.asarray(feats).reshape(2, 64, 32) - ref).max() <= _TOL
  last = jax.tree.leaves(params["encoder"]["layer_1"])
  for a, b in zip(jax.tree.leaves(params["sem_enc"]["block0"]), last):
    np.testing.assert_array_equal(a, b)

  wrong = svae_config.get_config("tiny")
  wrong.model.encoder.update(kind="dinov2", weights=str(tmp_path / "siglip2"))
  with pytest.raises(ValueError, match="set --config.model.encoder.kind=siglip2"):
    builders.build_psvae(wrong.model)
  paper = svae_config.get_config("siglip2_so400m")
  with pytest.raises(preflight.ConfigError, match="weights=HF_SIGLIP2_DIR"):
    preflight.check(paper)

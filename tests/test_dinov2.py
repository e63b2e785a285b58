"""Parity tests: flax DinoV2 + importer against tiny random Hugging Face models."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from psvae_jax.models import vit
from psvae_jax.weights import dinov2 as dinov2_weights

_TOL = 1e-5
_BASE_CFG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    mlp_ratio=4,
    image_size=40,
    patch_size=4,
    initializer_range=0.1,
)  # stored grid: 10 x 10


def _make_hf(tmp_path, registers=False, seed=0, **overrides):
  """Builds, perturbs and saves a tiny HF DINOv2; returns the torch model."""
  torch.manual_seed(seed)
  cfg = dict(_BASE_CFG, **overrides)
  if registers:
    model = transformers.Dinov2WithRegistersModel(
        transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **cfg)
    )
  else:
    model = transformers.Dinov2Model(transformers.Dinov2Config(**cfg))
  model.eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      # HF initialises LayerScale / LayerNorm / biases / registers to constants;
      # perturb everything so that any mis-mapping changes the output.
      if name.endswith("lambda1"):
        p.uniform_(0.5, 1.5)
      elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif p.ndim == 1 or "token" in name:
        p.add_(0.2 * torch.randn_like(p))
  model.save_pretrained(str(tmp_path))
  return model


def _compare(model, module, params, hw, num_registers, seed=1):
  """Runs both models on the same images; returns max abs error on patches."""
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((2, hw[0], hw[1], 3)).astype(np.float32)
  with torch.no_grad():
    ref = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
  ref = ref.last_hidden_state[:, 1 + num_registers :].numpy()
  out = np.asarray(jax.jit(module.apply)({"params": params}, images))
  p = module.patch_size
  assert out.shape == (2, hw[0] // p, hw[1] // p, module.hidden_size)
  return float(np.max(np.abs(out.reshape(ref.shape) - ref)))


@pytest.mark.parametrize("in_size,out_size", [(10, 8), (10, 13), (37, 16), (7, 7), (5, 3)])
@pytest.mark.parametrize("antialias", [False, True])
def test_interpolation_matches_torch(in_size, out_size, antialias):
  rng = np.random.default_rng(0)
  grid = rng.standard_normal((in_size, in_size + 1, 3)).astype(np.float32)
  out_hw = (out_size, out_size + 2)
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(grid.transpose(2, 0, 1))[None],
      size=out_hw,
      mode="bicubic",
      align_corners=False,
      antialias=antialias,
  )
  ref = ref[0].numpy().transpose(1, 2, 0)
  out = np.asarray(
      vit.interpolate_pos_embed_bicubic(jnp.asarray(grid), out_hw, antialias=antialias)
  )
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", [(32, 32), (48, 36)])
def test_dinov2_parity(tmp_path, hw):
  model = _make_hf(tmp_path)
  module, params = dinov2_weights.load_dinov2(str(tmp_path))
  assert module.pos_grid == 10 and not module.pos_embed_antialias
  err = _compare(model, module, params, hw, num_registers=0)
  assert err <= _TOL, err


@pytest.mark.parametrize("hw", [(32, 32), (48, 40)])
def test_dinov2_with_registers_parity(tmp_path, hw):
  model = _make_hf(tmp_path, registers=True)
  module, params = dinov2_weights.load_dinov2(str(tmp_path))
  assert module.num_register_tokens == 4 and module.pos_embed_antialias
  err = _compare(model, module, params, hw, num_registers=4)
  assert err <= _TOL, err


def test_dinov2_swiglu_parity(tmp_path):
  model = _make_hf(tmp_path, use_swiglu_ffn=True)
  module, params = dinov2_weights.load_dinov2(str(tmp_path))
  assert module.use_swiglu
  err = _compare(model, module, params, (44, 44), num_registers=0)
  assert err <= _TOL, err


def test_in_memory_key_names_with_prefix_from_bin(tmp_path):
  """transformers-5 names (q_proj, gate_proj, ...) behind `dinov2.`, as .bin."""
  model = _make_hf(tmp_path, use_swiglu_ffn=True)
  sd = {"dinov2." + k: v.detach().clone() for k, v in model.state_dict().items()}
  assert any("gate_proj" in k for k in sd) and any("q_proj" in k for k in sd)
  os.remove(tmp_path / "model.safetensors")
  torch.save(sd, str(tmp_path / "pytorch_model.bin"))
  module, params = dinov2_weights.load_dinov2(str(tmp_path))
  err = _compare(model, module, params, (32, 32), num_registers=0)
  assert err <= _TOL, err


def test_bad_checkpoint_names_missing_and_misshaped(tmp_path):
  _make_hf(tmp_path)
  path = str(tmp_path / "model.safetensors")
  sd = dict(load_file(path))
  del sd["encoder.layer.1.norm1.bias"]
  sd["encoder.layer.0.attention.attention.query.weight"] = np.zeros((32, 31), np.float32)
  sd["encoder.layer.0.mystery.weight"] = np.zeros((3,), np.float32)
  save_file(sd, path)
  with pytest.raises(ValueError) as info:
    dinov2_weights.load_dinov2(str(tmp_path))
  msg = str(info.value)
  assert "layer_1/norm1/bias" in msg
  assert "layer_0/q_proj/kernel" in msg
  assert "encoder.layer.0.mystery.weight" in msg
  assert "mask_token" not in msg


def test_tiny_config_and_block_shapes():
  # Shape/dtype checks only: eval_shape traces everything without compiling.
  module = vit.DinoV2(**vit.dinov2_config("tiny", registers=True))
  x = jax.ShapeDtypeStruct((1, 24, 40, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  assert variables["params"]["pos_embed"].shape == (1, 65, 64)
  assert variables["params"]["register_tokens"].shape == (1, 4, 64)
  assert jax.eval_shape(module.apply, variables, x).shape == (1, 6, 10, 64)
  assert vit.dinov2_config("g")["use_swiglu"]
  json.dumps(vit.dinov2_config("L"))  # plain, serialisable kwargs
  block = vit.Block(
      hidden_size=32, num_heads=4, layerscale_init=None, use_swiglu=True, dtype=jnp.bfloat16
  )
  y = jax.ShapeDtypeStruct((2, 5, 32), jnp.float32)
  bvars = jax.eval_shape(block.init, jax.random.PRNGKey(1), y)
  assert "layer_scale1" not in bvars["params"]
  assert bvars["params"]["gate_proj"]["kernel"].shape == (32, 88)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(bvars))
  out = jax.eval_shape(block.apply, bvars, y)
  assert out.shape == (2, 5, 32) and out.dtype == jnp.bfloat16


def test_export_is_read_by_transformers_and_back(tmp_path):
  # A flax DinoV2 (every parameter perturbed: a mis-mapped or mis-laid-out tensor changes the
  # output) saved as a Hugging Face directory: transformers' Dinov2Model reads it without a
  # missing or unexpected key and gives the same features; our importer gives the same params.
  module = vit.DinoV2(**dict(vit.dinov2_config("tiny"), pos_grid=10))
  params = module.init(jax.random.key(0), jnp.zeros((1, 40, 40, 3)))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype), params)
  out = str(tmp_path / "exported")
  dinov2_weights.save_dinov2(out, module, params, image_size=40)
  model, info = transformers.Dinov2Model.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  model.eval()
  assert _compare(model, module, params, (40, 40), num_registers=0) <= _TOL
  again_module, again = dinov2_weights.load_dinov2(out)
  assert again_module == module
  flat, flat_again = (dinov2_weights.common.flatten(p) for p in (params, again))
  for k, v in flat.items():
    np.testing.assert_array_equal(np.asarray(v), np.asarray(flat_again[k]), err_msg=k)
  with pytest.raises(ValueError, match="pos_grid"):
    dinov2_weights.save_dinov2(out, module, params, image_size=32)

"""Paper-size runs do what the paper says or refuse: E_s from the loaded encoder, preflight."""

import functools
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import torch
import transformers

from configs import dit as dit_config
from configs import psvae as psvae_config
from configs import svae as svae_config
from psvae_jax import builders
from psvae_jax.models.autoencoder import PSVAE
from psvae_jax.train import loop
from psvae_jax.train import optim
from psvae_jax.train import preflight
from psvae_jax.train.tasks import autoencoder
from psvae_jax.weights import dinov2 as dinov2_weights

from conftest import ROOT  # pylint: disable=g-bad-import-order

_NUM_LAYERS, _NUM_SEM = 3, 2


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
  """A tiny random HF DINOv2 on disk -> stage-1 task -> init, warm_start, reset (as the loop)."""
  hf_dir = tmp_path_factory.mktemp("dinov2")
  torch.manual_seed(0)
  model = transformers.Dinov2Model(
      transformers.Dinov2Config(
          hidden_size=32,
          num_hidden_layers=_NUM_LAYERS,
          num_attention_heads=2,
          mlp_ratio=4,
          image_size=32,
          patch_size=4,
          initializer_range=0.1,
      )
  )
  with torch.no_grad():  # HF sets LayerScale / norms / biases to constants: make them differ
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.2 * torch.randn_like(p))
  model.eval().save_pretrained(str(hf_dir))
  config = svae_config.get_config("tiny")
  config.model.encoder.weights = str(hf_dir)
  config.model.num_sem_blocks = _NUM_SEM
  config.model.sem_init_from_encoder = True  # the paper's init (tiny turns it off)
  task = autoencoder.AutoencoderTask(config)
  tx = optim.make_optimizer(
      config.optim, 10, functools.partial(optim.label_params, groups=task.param_groups)
  )
  state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(jax.random.key(0))
  params = task.warm_start(state.params)
  state = jax.jit(functools.partial(loop.reset_params, task=task))(state, params)
  return model, hf_dir, task, state


def test_sem_blocks_are_the_loaded_encoders_last_blocks(warm):
  _, hf_dir, _, state = warm
  _, loaded = dinov2_weights.load_dinov2(str(hf_dir))
  for params in (state.params, state.ema_params):
    np.testing.assert_array_equal(
        params["encoder"]["layer_0"]["q_proj"]["kernel"], loaded["layer_0"]["q_proj"]["kernel"]
    )
    for i in range(_NUM_SEM):
      want = loaded[f"layer_{_NUM_LAYERS - _NUM_SEM + i}"]
      got = params["sem_enc"][f"block{i}"]
      jax.tree.map(np.testing.assert_array_equal, got, want)
    jax.tree.map(np.testing.assert_array_equal, params["sem_enc"]["norm"], loaded["norm"])


def test_every_encode_path_feeds_e_s_the_pre_layernorm_stream(warm):
  model, _, task, state = warm
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  params = dict(state.params, sem_enc=dict(state.params["sem_enc"]))
  moments = params["sem_enc"]["to_moments"]  # zero-init: make mu depend on the input
  params["sem_enc"]["to_moments"] = dict(
      moments, kernel=jax.random.normal(jax.random.key(1), moments["kernel"].shape)
  )
  apply = functools.partial(task.model.apply, {"params": params})
  f, stream = apply(images, method=PSVAE.encoder_outputs)
  # The stream is HF's last hidden state before the final LayerNorm (patch tokens).
  x = ((images + 1) * 0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  with torch.no_grad():
    out = model(
        pixel_values=torch.from_numpy(x.astype(np.float32).transpose(0, 3, 1, 2)),
        output_hidden_states=True,
    )
  np.testing.assert_allclose(
      np.asarray(stream).reshape(2, 64, 32), out.hidden_states[-1][:, 1:].numpy(), atol=1e-4
  )
  np.testing.assert_allclose(
      np.asarray(f).reshape(2, 64, 32), out.last_hidden_state[:, 1:].numpy(), atol=1e-4
  )
  mu, _ = apply(images, method=PSVAE.encode)  # stage 3, the API, latent stats
  mu_stream, _ = apply(stream, method=PSVAE.encode_features)  # training loss, eval
  np.testing.assert_allclose(mu, mu_stream, atol=1e-6)
  assert not np.allclose(mu, apply(f, method=PSVAE.encode_features)[0], atol=1e-3)


def test_random_means_random_init():
  config = svae_config.get_config("dinov2_b")
  config.model.encoder.weights = "random"  # must not be read as a directory
  kw = builders.encoder_kwargs(config.model.encoder)
  assert (kw["hidden_size"], kw["num_layers"]) == (768, 12)
  preflight.check(config)


def test_preflight_checks():
  preflight.check(svae_config.get_config("tiny"))
  preflight.check(psvae_config.get_config("tiny"))
  ok = svae_config.get_config("dinov2_l")
  ok.model.encoder.weights = "/ckpt/dinov2-large"
  preflight.check(ok)  # stage 1 needs no LPIPS files
  c = psvae_config.get_config("dinov2_b")
  c.init_from = "/runs/svae"
  with pytest.raises(
      preflight.ConfigError, match=r"--config\.lpips\.vgg and --config\.lpips\.heads"
  ):
    preflight.check(c)
  c.lpips.vgg = "random"
  preflight.check(c)


def _refuses(tmp_path, config):
  workdir = tmp_path / "w"
  t0 = time.time()
  r = subprocess.run(
      [sys.executable, "-m", "psvae_jax.main", f"--config={config}", f"--workdir={workdir}"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=60,
  )
  seconds = time.time() - t0
  lines = (r.stdout + r.stderr).strip().splitlines()
  assert r.returncode != 0 and len(lines) == 1, (r.returncode, lines)
  assert not workdir.exists()
  print(f"{config}: refused in {seconds:.2f} s")  # pytest -s shows it
  return lines[0]


def test_cli_stage1_without_encoder_weights_refuses(tmp_path):
  line = _refuses(tmp_path, "configs/svae.py:dinov2_b")
  assert line.startswith("error:") and "--config.model.encoder.weights" in line


def test_cli_stage2_without_init_from_refuses(tmp_path):
  line = _refuses(tmp_path, "configs/psvae.py:dinov2_b")
  assert line.startswith("error:") and "--config.init_from" in line


def test_preflight_stage3_and_intervals():
  c = dit_config.get_config("B_text")
  with pytest.raises(preflight.ConfigError, match=r"--config\.autoencoder="):
    preflight.check(c)
  c.autoencoder = "/runs/psvae"
  with pytest.raises(preflight.ConfigError, match=r"--config\.text_encoder="):
    preflight.check(c)
  c.text_encoder = "/ckpt/clip"
  preflight.check(c)
  c.eval_every = 0  # 0 = never: allowed
  preflight.check(c)
  c.log_every = -1
  with pytest.raises(preflight.ConfigError, match=r"--config\.log_every=-1"):
    preflight.check(c)
  k = dit_config.get_config("B_class")
  k.autoencoder = "/runs/psvae"
  preflight.check(k)  # class models need no text encoder
  f = dit_config.get_config("paper_fusion")
  f.autoencoder = "/runs/psvae"
  with pytest.raises(preflight.ConfigError, match=r"--config\.generator\.weights="):
    preflight.check(f)  # the published backbone's shapes alone do not train
  f.generator.weights = "/ckpt/qwen2.5-0.5b"
  preflight.check(f)  # no text encoder: the Qwen2 blocks read the prompt
  f.model.source_condition = True
  preflight.check(f)  # instruction editing: the source enters as tokens

"""The paper-size architecture end to end on the CPU, at reduced input size.

A random DINOv2-B-shaped Hugging Face directory (768 wide, 12 heads, patch 14; 2 layers instead
of 12; E_s, D_s one block each; DiT-B 2 blocks deep) saved by `transformers`, through the paper
configs (`svae.py:dinov2_b`, `psvae.py:dinov2_b`, `dit.py:B_text`) with only sizes and step counts
overridden: stage 1 -> stage 2 -> stage 3 -> sample -> edit -> evaluate, a few steps each, in one
subprocess on one CPU device. It checks what went wrong silently before: E_s starts from the
loaded encoder's last blocks, interval knobs of 0 mean "never", the latent statistics describe
what stage 3 trains on.
"""

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import torch
import transformers

from configs import dit as dit_config
from configs import eval as eval_config
from configs import psvae as psvae_config
from configs import svae as svae_config
from psvae_jax import api
from psvae_jax import checkpoint
from psvae_jax.evals import runner as eval_runner
from psvae_jax import shapes_plugin as plugin
from psvae_jax.shapes import text as demo_text
from psvae_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENC_PX, PIX_PX = 56, 64  # 4x4 DINOv2 tokens (patch 14) -> 4x4x96 latent -> 16x conv decoder


def _dinov2_b_dir(path) -> str:
  torch.manual_seed(0)
  cfg = transformers.Dinov2Config(
      hidden_size=768,
      num_hidden_layers=2,
      num_attention_heads=12,
      patch_size=14,
      image_size=224,
      layerscale_value=0.5,
  )
  transformers.Dinov2Model(cfg).save_pretrained(str(path))
  return str(path)


def _small(c, steps: int):
  """Paper configs with the sizes a CPU test affords; everything else as the variant sets it."""
  c.num_train_steps = steps
  c.batch_size = 8
  c.data.image_size = PIX_PX
  c.data.num_eval = 8
  c.eval.num_images, c.eval.batch_size, c.eval.num_grid = 8, 8, 4
  c.optim.warmup_steps = 1
  # bf16 compute (the paper configs' default) is checked against fp32 in test_precision.py on
  # the tiny configs; on XLA:CPU it compiles and runs this chain ~1.5x slower.
  c.dtype = "float32"
  return c


def _ae_sizes(c):
  c.model.encoder.image_size = ENC_PX
  c.model.pixel_decoder.ch, c.model.pixel_decoder.groups = 16, 8
  c.latent_stats_images = 16
  c.model.num_sem_blocks = 1  # E_s / D_s: 1 block (the paper: 3)
  return c


def test_paper_size_chain(tmp_path):
  """Runs `chain` in a subprocess on ONE CPU device.

  In the test process (8 simulated devices, data-parallel) every 768-wide array is replicated 8x
  in host memory: ~12 GiB resident and twice the time.
  """
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
      PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
  )
  r = subprocess.run(
      [sys.executable, os.path.abspath(__file__), str(tmp_path)],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=1500,
  )
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
  assert "paper-size chain: OK" in r.stdout, r.stdout[-3000:]


def chain(tmp_path: pathlib.Path):
  """stage 1 -> stage 2 -> stage 3 -> sample -> edit -> evaluate at paper width (see module doc)."""
  enc_dir = _dinov2_b_dir(tmp_path / "dinov2-b")

  # Stage 1, with every interval knob at 0 (never; the last step is still saved).
  c1 = _ae_sizes(_small(svae_config.get_config("dinov2_b"), steps=2))
  c1.model.encoder.weights = enc_dir
  c1.log_every = c1.eval_every = c1.ckpt_every = 0
  loop.train_and_evaluate(c1, str(tmp_path / "svae"))
  assert (
      checkpoint.Checkpointer(
          str(tmp_path / "svae" / "checkpoints"), async_save=False
      ).latest_step()
      == 2
  )
  assert not (tmp_path / "svae" / "metrics.json").exists()  # eval_every=0: never evaluated

  # Stage 2 from stage 1 (LPIPS on random VGG weights: the files are the user's).
  c2 = _ae_sizes(_small(psvae_config.get_config("dinov2_b"), steps=2))
  c2.init_from = str(tmp_path / "svae")
  c2.lpips.vgg = "random"
  loop.train_and_evaluate(c2, str(tmp_path / "psvae"))
  m2 = json.loads((tmp_path / "psvae" / "metrics.json").read_text())
  assert np.isfinite(m2["psnr"]), m2
  assert (tmp_path / "psvae" / "latent_stats.npz").exists()

  # Stage 3: DiT-B with a CLIP-shaped text encoder directory and its tokenizer.
  text = demo_text.build_demo_text_encoder(
      str(tmp_path / "text"), demo_text.shapes_vocabulary(), hidden_size=64, layers=1
  )
  c3 = _small(dit_config.get_config("B_text"), steps=2)
  c3.autoencoder, c3.text_encoder = str(tmp_path / "psvae"), text
  c3.data.max_length = 16
  c3.model.depth = 2  # DiT-B's width, 2 of its 12 blocks
  c3.sample.steps = 3
  loop.train_and_evaluate(c3, str(tmp_path / "dit"))
  assert (tmp_path / "dit" / "samples").is_dir()

  # Sample, edit, evaluate from the stage-3 workdir.
  pipe = api.load(str(tmp_path / "dit"))
  images = pipe.generate(["a red circle on the left"] * 2, steps=3, seed=0)
  assert images.shape == (2, PIX_PX, PIX_PX, 3) and images.dtype == np.uint8
  edited = pipe.edit(images, ["a blue square on the right"] * 2, strength=0.5, steps=3)
  assert edited.shape == images.shape
  results = eval_runner.evaluate(str(tmp_path / "dit"), evaluate_config())
  assert np.isfinite(results["psnr/psnr"]) and np.isfinite(results["ssim/ssim"]), results


def evaluate_config():
  c = eval_config.get_config("demo")
  c.batch_size = 8
  c.evals = ml_collections.ConfigDict(
      dict(psnr=dict(type="psnr", num_images=8), ssim=dict(type="ssim", num_images=8))
  )
  return c


if __name__ == "__main__":
  import jax  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == 1, jax.devices()
  plugin.register()  # the paper configs run on the demo's shapes data here
  chain(pathlib.Path(sys.argv[1]))
  print("paper-size chain: OK")

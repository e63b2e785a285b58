"""Stage 2 (PS-VAE): unfreeze the encoder, keep a frozen copy as the semantic target, add pixels.

  python -m psvae_jax.main --config=configs/psvae.py:tiny --workdir=runs/psvae \
      --config.init_from=runs/svae

Loss: alpha*L_sem + gamma*L_pix + lambda*LPIPS + beta*KL (1, 1, 0.1, 1e-4, the seed's
weights); `--config.loss.pix=0.1 --config.loss.cos=1` gives the paper's 1:0.1 + cosine.
Variants as in configs/svae.py: `dinov2_b`, `dinov2_l`, `tiny`. The paper-size ones refuse
to start without `--config.init_from` and, with `loss.lpips > 0`, without
`--config.lpips.vgg` and `--config.lpips.heads` (psvae_jax/train/preflight.py).
"""

import ml_collections

from configs import common
from configs import svae


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, svae.VARIANTS, "dinov2_b")
  c = svae.autoencoder_config("psvae", variant)
  if variant == "tiny":
    c.num_train_steps = 450
    c.ckpt_every = 150
    c.eval_every = 450
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 20
  return c

"""The PatchGAN discriminator of LDM / taming-transformers (`NLayerDiscriminator`), in flax.

  disc = PatchGAN(ndf=64, n_layers=3)        # LDM's autoencoder discriminator
  logits = disc.apply({"params": p}, images)  # (B, H', W', 1): one real/fake logit per patch

Layers: a 4x4 stride-2 conv (3 -> ndf) with LeakyReLU(0.2); n_layers - 1 more 4x4 stride-2
convs doubling the width (capped at 8 ndf), each normalised; one 4x4 stride-1 conv (normalised);
a 4x4 stride-1 conv to one channel. Padding 1 everywhere, conv weights N(0, 0.02) and norm
scales N(1, 0.02) as taming's `weights_init`.

One deliberate change: taming normalises with BatchNorm, whose running statistics are mutable
state and whose batch statistics depend on how the batch is sharded; here it is GroupNorm
(32 groups or fewer), per sample, so the train step stays a pure function and gives the same
result on 1 or 8 devices.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class PatchGAN(nn.Module):
  """Images (B, H, W, 3) in [-1, 1] -> patch logits (B, H / 2**n_layers - 2, ..., 1)."""

  ndf: int = 64
  n_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda ch, stride, name, bias=True: nn.Conv(
        ch,
        (4, 4),
        strides=(stride, stride),
        padding=((1, 1), (1, 1)),
        use_bias=bias,
        dtype=self.dtype,
        kernel_init=nn.initializers.normal(0.02),
        name=name,
    )
    norm = lambda ch, name: nn.GroupNorm(
        num_groups=min(32, ch), dtype=self.dtype, scale_init=_scale_init, name=name
    )
    x = nn.leaky_relu(conv(self.ndf, 2, "conv0")(x.astype(self.dtype)), 0.2)
    ch = self.ndf
    for n in range(1, self.n_layers + 1):
      ch = self.ndf * min(2**n, 8)
      stride = 2 if n < self.n_layers else 1
      x = conv(ch, stride, f"conv{n}", bias=False)(x)
      x = nn.leaky_relu(norm(ch, f"norm{n}")(x), 0.2)
    return conv(1, 1, "conv_out")(x).astype(jnp.float32)

"""psvae_jax: PS-VAE and a latent diffusion transformer in JAX/Flax.

TensorFlow is only imported for I/O (CLU's writers, tfds): its C++ INFO lines (oneDNN notices) are
not a user's business, so they are off unless the environment asks for them.
"""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

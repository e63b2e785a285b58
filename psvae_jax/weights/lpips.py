"""Importer for LPIPS (VGG16) weights: torchvision backbone + lpips v0.1 heads.

Two source files, read offline (no downloads):

* ``vgg_path``: torchvision's ``vgg16-397923af.pth`` state dict (or a
  safetensors file with the same keys). Keys ``features.N.weight`` (O, I, 3, 3)
  and ``features.N.bias`` (O,) for the 13 convs; ``classifier.*`` keys are
  deliberately ignored (LPIPS uses only the conv stack).
* ``heads_path``: the lpips package's ``weights/v0.1/vgg.pth`` (or safetensors)
  with keys ``lin{k}.model.1.weight`` of shape (1, C_k, 1, 1).

Torch conv kernels (O, I, kh, kw) become flax kernels (kh, kw, I, O).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from psvae_jax.models.lpips import LPIPS, TAP_CHANNELS, VGG16_CONVS
from psvae_jax.weights import common

# Source keys that are deliberately not imported.
IGNORED_VGG_PREFIXES: tuple[str, ...] = ("classifier.",)
# Buffers a full lpips.LPIPS state dict may carry next to the heads; they are
# constants of the model (see psvae_jax.models.lpips.SHIFT / SCALE).
IGNORED_HEAD_KEYS: tuple[str, ...] = ("scaling_layer.shift", "scaling_layer.scale")

_VGG_CONV_INDICES: tuple[int, ...] = tuple(i for st in VGG16_CONVS for i, _ in st)
_INIT_SIZE = 32  # Spatial size used only to trace the module's parameter shapes.


def _torch_conv_to_flax(w: np.ndarray) -> np.ndarray:
  """(O, I, kh, kw) -> (kh, kw, I, O); other ranks pass through for error reporting."""
  w = np.asarray(w)
  return np.transpose(w, (2, 3, 1, 0)) if w.ndim == 4 else w


def _abstract_params(module: LPIPS) -> dict[str, Any]:
  x = jnp.zeros((1, _INIT_SIZE, _INIT_SIZE, 3), jnp.float32)
  return jax.eval_shape(module.init, jax.random.key(0), x, x)["params"]


def convert_vgg(sd: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
  """torchvision vgg16 state dict -> (flat flax params under ``vgg/``, unused keys)."""
  out, used = {}, set()
  for idx in _VGG_CONV_INDICES:
    for src, dst, fn in (
        (f"features.{idx}.weight", "kernel", _torch_conv_to_flax),
        (f"features.{idx}.bias", "bias", np.asarray),
    ):
      if src in sd:
        out[f"vgg/features_{idx}/{dst}"] = fn(sd[src])
        used.add(src)
  unused = [k for k in sd if k not in used and not k.startswith(IGNORED_VGG_PREFIXES)]
  return out, unused


def convert_heads(sd: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
  """lpips v0.1 heads state dict -> (flat flax params ``lin{k}/kernel``, unused keys)."""
  out, used = {}, set()
  for k in range(len(TAP_CHANNELS)):
    src = f"lin{k}.model.1.weight"
    if src in sd:
      out[f"lin{k}/kernel"] = _torch_conv_to_flax(sd[src])
      used.add(src)
  unused = [k for k in sd if k not in used and k not in IGNORED_HEAD_KEYS]
  return out, unused


def load_lpips(
    vgg_path: str, heads_path: str, dtype: Any = jnp.float32
) -> tuple[LPIPS, dict[str, Any]]:
  """Builds an LPIPS module and its variables from the two weight files.

  Args:
    vgg_path: torchvision ``vgg16-397923af.pth`` or an equivalent safetensors.
    heads_path: lpips ``weights/v0.1/vgg.pth`` or an equivalent safetensors.
    dtype: compute dtype of the backbone.

  Returns:
    ``(module, variables)`` with ``variables = {"params": ...}``, ready for
    ``module.apply(variables, x, y)``.

  Raises:
    ValueError: naming missing, unexpected or mis-shaped entries; flax paths
      ``vgg/features_N/kernel`` come from ``features.N.weight`` and
      ``linK/kernel`` from ``linK.model.1.weight``.
  """
  module = LPIPS(dtype=dtype)
  vgg, vgg_unused = convert_vgg(common.read_state_dict(vgg_path))
  heads, heads_unused = convert_heads(common.read_state_dict(heads_path))
  params = common.build_params(
      {**vgg, **heads},
      _abstract_params(module),
      unused_source_keys=(
          [f"{vgg_path}: {k}" for k in vgg_unused] + [f"{heads_path}: {k}" for k in heads_unused]
      ),
      what=(
          f"LPIPS weights (vgg={vgg_path}, heads={heads_path}; "
          "vgg/features_N/kernel <- features.N.weight, "
          "linK/kernel <- linK.model.1.weight)"
      ),
  )
  return module, {"params": params}


def random_lpips(
    rng: jax.Array, image_size: int = _INIT_SIZE, dtype: Any = jnp.float32
) -> tuple[LPIPS, dict[str, Any]]:
  """Randomly initialised LPIPS: for tests and demos only, NOT a perceptual metric.

  Convs get He-normal kernels (std sqrt(2 / fan_in), keeping ReLU activations
  O(1) through the 13 layers) and small uniform biases; the heads are
  non-negative (as the trained lpips heads are clamped), so distances are >= 0
  and 0 for identical inputs. The numbers are drawn with numpy seeded from
  ``rng`` (deterministic per key): threefry over VGG16's 14.7M parameters
  takes tens of seconds on a small CPU.

  Args:
    rng: PRNG key (typed or raw uint32).
    image_size: spatial size of the dummy input used to trace parameter shapes.
    dtype: compute dtype of the backbone.

  Returns:
    ``(module, variables)`` with ``variables = {"params": ...}``.
  """
  module = LPIPS(dtype=dtype)
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  abstract = common.flatten(jax.eval_shape(module.init, jax.random.key(0), x, x)["params"])
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  gen = np.random.default_rng(np.asarray(rng, np.uint32).ravel().tolist())
  flat = {}
  for name in sorted(abstract):
    shape = abstract[name].shape
    if name.startswith("lin"):  # (1, 1, C, 1)
      flat[name] = gen.uniform(0.0, 1.0 / shape[2], shape)
    elif name.endswith("bias"):  # (O,)
      flat[name] = gen.uniform(-0.1, 0.1, shape)
    else:  # (3, 3, I, O)
      fan_in = shape[0] * shape[1] * shape[2]
      flat[name] = gen.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
  params = common.unflatten({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()})
  return module, {"params": params}

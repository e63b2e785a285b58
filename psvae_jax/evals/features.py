"""FID feature nets by kind: "inception" and "classifier" built in, others registered (the shapes
demo's "proxy").

  fn, dim = features.feature_net("inception", "pt_inception-2015-12-05.pth", image_size)
  fn(uint8-range images (B, H, W, 3)) -> features (B, dim)

A loader takes (weights file, image size) and returns (jitted feature function, feature
dimension). "classifier" is a small convnet trained on the user's labelled data
(psvae_jax/evals/feature_net.py); `psvae_jax.shapes_plugin.register()` registers "proxy" (a
small classifier trained on the shapes, psvae_jax/shapes/proxy.py).
"""

from __future__ import annotations

from typing import Callable

from psvae_jax import runtime
from psvae_jax.evals import feature_net
from psvae_jax.weights import inception

Loader = Callable[[str, int], tuple[Callable, int]]


def _inception(weights: str, image_size: int) -> tuple[Callable, int]:
  del image_size  # pool3 features of any input size
  module, params = inception.load_inception(weights)
  return runtime.no_grad_jit(lambda x: module.apply({"params": params}, x)), 2048


_LOADERS: dict[str, Loader] = {
    "inception": _inception,
    feature_net.KIND: feature_net.load_feature_net,
}


def register_feature_net(kind: str, loader: Loader) -> None:
  """Registers (or replaces) the loader of feature nets of `kind`."""
  _LOADERS[kind] = loader


def feature_net(kind: str, weights: str, image_size: int) -> tuple[Callable, int]:
  """(jitted uint8 images -> features, dim) of `kind` with its weights file."""
  if kind not in _LOADERS:
    raise ValueError(
        f"Unknown feature net {kind!r}; registered: {sorted(_LOADERS)} (the "
        "demo's 'proxy': psvae_jax.shapes_plugin.register())."
    )
  return _LOADERS[kind](weights, image_size)

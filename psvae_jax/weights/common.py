"""Shared machinery for importing foreign checkpoints into flax parameter trees.

Every family loader (DINOv2, VGG/LPIPS, CLIP, T5, Inception) converts a flat source
state dict into a flat ``{"a/b/c": array}`` dict keyed by flax parameter paths and
hands it to :func:`build_params`, which checks it against the module's abstract
parameters and fails loudly, naming every missing, unexpected and mis-shaped entry.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np


def flatten(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
  """Flattens a nested dict into ``{"a/b/c": leaf}``."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[sep.join(str(getattr(k, "key", k)) for k in path)] = leaf
  return out


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
  """Inverse of :func:`flatten`."""
  out: dict[str, Any] = {}
  for key, value in flat.items():
    node = out
    *parents, leaf = key.split(sep)
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def build_params(
    converted: Mapping[str, np.ndarray],
    expected: Mapping[str, Any],
    *,
    unused_source_keys: Iterable[str] = (),
    what: str = "checkpoint",
) -> dict[str, Any]:
  """Checks converted arrays against the module's abstract params; returns the tree.

  Args:
    converted: flat ``{"a/b/c": array}`` produced from the source checkpoint.
    expected: the module's (abstract) params, e.g. from ``jax.eval_shape(init)``.
    unused_source_keys: source entries the converter did not consume.
    what: a name for the error message.

  Raises:
    ValueError: listing missing, unexpected and mis-shaped entries.
  """
  want = {k: tuple(v.shape) for k, v in flatten(expected).items()}
  missing = sorted(set(want) - set(converted))
  unexpected = sorted(set(converted) - set(want))
  unexpected += [f"(source) {k}" for k in sorted(unused_source_keys)]
  misshaped = sorted(
      f"{k}: got {tuple(np.shape(converted[k]))}, expected {want[k]}"
      for k in set(want) & set(converted)
      if tuple(np.shape(converted[k])) != want[k]
  )
  if missing or unexpected or misshaped:
    lines = [f"Cannot import {what}:"]
    for title, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape mismatch", misshaped),
    ):
      if items:
        lines.append(f"  {title} ({len(items)}):")
        lines += [f"    {i}" for i in items]
    raise ValueError("\n".join(lines))
  return unflatten({k: np.asarray(v, np.float32) for k, v in converted.items()})


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file or a torch ``.pth``/``.bin`` (weights_only) as numpy."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Weights file not found: {path}")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

    return dict(load_file(path))
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"Reading {path} needs torch; convert it offline to safetensors with "
        "`python -m psvae_jax.weights.convert --src=FILE.pth --out=FILE.safetensors` "
        "on a machine with torch."
    ) from e
  sd = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
    sd = sd["state_dict"]
  return {k: v.detach().float().numpy() for k, v in sd.items() if hasattr(v, "numpy")}


def read_json(hf_dir: str, name: str = "config.json") -> dict[str, Any]:
  """A JSON file of a Hugging Face checkpoint directory."""
  path = os.path.join(hf_dir, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"No {name} in {hf_dir}")
  with open(path) as f:
    return json.load(f)


def weights_path(hf_dir: str) -> str:
  """``model.safetensors`` if present, else ``pytorch_model.bin``."""
  for name in ("model.safetensors", "pytorch_model.bin"):
    path = os.path.join(hf_dir, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f"No model.safetensors or pytorch_model.bin in {hf_dir}")


def load_hf_params(
    hf_dir: str,
    module: Any,
    convert: Callable[[dict], tuple[dict, list]],
    dummy_inputs: tuple,
    what: str,
) -> dict[str, Any]:
  """Reads a HF directory's weights, converts them and checks them against `module`.

  Args:
    hf_dir: the checkpoint directory.
    module: the flax module the weights are for.
    convert: source state dict -> (flat flax-path dict, unused source keys).
    dummy_inputs: inputs for `module.init` (only their shapes are used).
    what: a name for the error message.
  """
  import jax  # pylint: disable=g-import-not-at-top

  path = weights_path(hf_dir)
  converted, unused = convert(read_state_dict(path))
  expected = jax.eval_shape(module.init, jax.random.PRNGKey(0), *dummy_inputs)["params"]
  return build_params(converted, expected, unused_source_keys=unused, what=f"{what} {path}")

"""Importer for the FID Inception-v3 weights (pytorch-fid's ``pt_inception-2015-12-05-*.pth``).

The source is the state dict pytorch-fid loads into its patched torchvision Inception-v3
(``num_classes=1008``, no aux logits): keys ``<Block>[.<branch>].conv.weight`` (O, I, kh, kw)
and ``.bn.{weight,bias,running_mean,running_var}``, plus ``fc.*`` (1008 classes, unused for
pool3 features). torchvision's ImageNet Inception-v3 weights (``inception_v3_google-*.pth``:
1000-class ``fc``, ``AuxLogits.*``) have the same trunk names but different weights and give
different, lower FIDs: they are refused loudly.

Offline conversion (torch needed once; the result loads without torch)::

  python -m psvae_jax.weights.inception --src=pt_inception-2015-12-05-6726825d.pth \
      --out=inception_fid.safetensors
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from psvae_jax.models import inception as inception_lib
from psvae_jax.weights import common

FID_NUM_CLASSES = 1008  # the 2015 TF graph's classifier (1000 ImageNet classes + 8 unused)
IGNORED_KEYS = ("fc.weight", "fc.bias")
IGNORED_SUFFIXES = (".num_batches_tracked",)


def torch_name_map(params: Any) -> dict[str, str]:
  """flax path "A/b/conv/kernel" -> torch state-dict key "A.b.conv.weight" for every param."""
  suffix = {
      "conv/kernel": "conv.weight",
      "bn/scale": "bn.weight",
      "bn/bias": "bn.bias",
      "bn/mean": "bn.running_mean",
      "bn/var": "bn.running_var",
  }
  out = {}
  for path in common.flatten(params):
    head, _, tail = path.rpartition("/")
    head2, _, leaf_mod = head.rpartition("/")
    key = f"{leaf_mod}/{tail}"
    out[path] = f"{head2.replace('/', '.')}.{suffix[key]}".lstrip(".")
  return out


def check_not_torchvision(sd: dict[str, np.ndarray], path: str = "weights") -> None:
  """Raises if `sd` looks like torchvision's ImageNet Inception-v3 rather than the FID one."""
  aux = sorted(k for k in sd if k.startswith("AuxLogits."))
  fc = sd.get("fc.weight")
  classes = None if fc is None else int(np.shape(fc)[0])
  if aux or (classes is not None and classes != FID_NUM_CLASSES):
    why = []
    if aux:
      why.append(f"{len(aux)} AuxLogits.* entries (e.g. {aux[0]})")
    if classes is not None and classes != FID_NUM_CLASSES:
      why.append(f"fc.weight has {classes} classes, not {FID_NUM_CLASSES}")
    raise ValueError(
        f"{path} looks like torchvision's ImageNet Inception-v3 ({'; '.join(why)}). FID needs "
        "the TF 2015 FID Inception weights used by pytorch-fid "
        "(pt_inception-2015-12-05-6726825d.pth): torchvision's weights give different, "
        "lower FIDs that cannot be compared with published numbers."
    )


def convert(
    sd: dict[str, np.ndarray], module: inception_lib.InceptionV3FID | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
  """FID Inception state dict -> (flat flax params, unused source keys)."""
  module = module or inception_lib.InceptionV3FID()
  names = torch_name_map(inception_lib.abstract_params(module))
  out, used = {}, set()
  for flax_path, key in names.items():
    if key in sd:
      w = np.asarray(sd[key])
      out[flax_path] = np.transpose(w, (2, 3, 1, 0)) if w.ndim == 4 else w  # (kh, kw, I, O)
      used.add(key)
  unused = [
      k for k in sd if k not in used and k not in IGNORED_KEYS and not k.endswith(IGNORED_SUFFIXES)
  ]
  return out, unused


def params_from_state_dict(
    sd: dict[str, np.ndarray], what: str = "state dict", dtype: Any = jnp.float32
) -> tuple[inception_lib.InceptionV3FID, dict[str, Any]]:
  """(module, params) from an in-memory FID Inception state dict (numpy arrays)."""
  check_not_torchvision(sd, what)
  module = inception_lib.InceptionV3FID(dtype=dtype)
  converted, unused = convert(sd, module)
  params = common.build_params(
      converted,
      inception_lib.abstract_params(module),
      unused_source_keys=unused,
      what=f"FID Inception weights {what} (A/b/conv/kernel <- A.b.conv.weight, "
      "bn/{scale,bias,mean,var} <- bn.{weight,bias,running_mean,running_var})",
  )
  return module, params


def load_inception(
    path: str, dtype: Any = jnp.float32
) -> tuple[inception_lib.InceptionV3FID, dict[str, Any]]:
  """Loads the FID Inception from a pytorch-fid ``.pth`` or its safetensors conversion.

  Returns:
    ``(module, params)``: ``module.apply({"params": params}, images)`` gives pool3
    features (B, 2048) for uint8-range images (B, H, W, 3).

  Raises:
    ValueError: for torchvision ImageNet weights, or naming missing, unexpected and
      mis-shaped entries.
  """
  return params_from_state_dict(common.read_state_dict(path), path, dtype)


def random_inception(
    seed: int = 0, dtype: Any = jnp.float32
) -> tuple[inception_lib.InceptionV3FID, dict[str, Any]]:
  """Random weights (He-normal convs, identity BN): for benchmarks and tests, NOT for FID."""
  module = inception_lib.InceptionV3FID(dtype=dtype)
  gen = np.random.default_rng(seed)
  flat = {}
  for name, a in sorted(common.flatten(inception_lib.abstract_params(module)).items()):
    if name.endswith("kernel"):
      fan_in = int(np.prod(a.shape[:3]))
      flat[name] = gen.standard_normal(a.shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    elif name.endswith(("scale", "var")):
      flat[name] = np.ones(a.shape, np.float32)
    else:
      flat[name] = np.zeros(a.shape, np.float32)
  return module, common.unflatten({k: jnp.asarray(v) for k, v in flat.items()})


def convert_file(src: str, out: str) -> int:
  """Validates `src` as FID Inception weights and writes them as safetensors (same keys)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  sd = common.read_state_dict(src)
  params_from_state_dict(sd, src)  # refuses torchvision / mismatched files before writing
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, out)
  return len(sd)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description="Convert pytorch-fid's Inception .pth to safetensors (validated)."
  )
  parser.add_argument("--src", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  n = convert_file(args.src, args.out)
  print(f"wrote {n} tensors to {args.out}")
  return 0


if __name__ == "__main__":
  jax.config.update("jax_platforms", "cpu")
  sys.exit(main())

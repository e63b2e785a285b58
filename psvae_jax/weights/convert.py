"""CLI: convert a torch state-dict file (.pth/.bin/.pt) to safetensors, offline.

Usage::

  python -m psvae_jax.weights.convert --src=FILE.pth --out=FILE.safetensors

Needs torch (loads with ``weights_only=True``, so no pickled code is run). Keys
and dtypes are kept as they are; a top-level ``{"state_dict": {...}}`` wrapper
is unwrapped; non-tensor entries are skipped and listed. The resulting file is
read by :func:`psvae_jax.weights.common.read_state_dict` without torch.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence


def convert(src: str, out: str) -> tuple[list[str], list[str]]:
  """Converts ``src`` to a safetensors file ``out``.

  Args:
    src: torch checkpoint holding a (possibly ``state_dict``-wrapped) dict.
    out: destination ``.safetensors`` path.

  Returns:
    (written keys, skipped non-tensor keys).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top

  sd: Any = torch.load(src, map_location="cpu", weights_only=True)
  if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
    sd = sd["state_dict"]
  if not isinstance(sd, dict):
    raise ValueError(f"{src} does not hold a state dict (got {type(sd).__name__})")
  tensors, skipped = {}, []
  for k, v in sd.items():
    if isinstance(v, torch.Tensor):
      # clone(): safetensors refuses tensors that share storage.
      tensors[str(k)] = v.detach().contiguous().clone()
    else:
      skipped.append(str(k))
  save_file(tensors, out)
  return sorted(tensors), skipped


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description="Convert a torch state-dict file to safetensors.")
  parser.add_argument("--src", required=True, help="torch .pth/.bin/.pt file")
  parser.add_argument("--out", required=True, help="output .safetensors file")
  args = parser.parse_args(argv)
  written, skipped = convert(args.src, args.out)
  print(f"wrote {len(written)} tensors to {args.out}")
  if skipped:
    print(f"skipped {len(skipped)} non-tensor entries: {', '.join(skipped)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

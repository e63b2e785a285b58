"""Class labels given by users: an id or a class name (no JAX, no data pipeline: the CLIs check
them before loading anything)."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np


def resolve_label(label: int | str, class_names: Sequence[str]) -> int:
  """A class id from an id (7, "7") or a class name ("sneaker"); ValueError names the choices."""
  if isinstance(label, (int, np.integer)):
    index = int(label)
  elif str(label).strip().lstrip("-").isdigit():
    index = int(str(label).strip())
  else:
    names = {str(n).lower(): i for i, n in enumerate(class_names)}
    for i, n in enumerate(class_names):  # "7_sneaker" (ordered class folders) is also "sneaker"
      names.setdefault(re.sub(r"^\d+_", "", str(n).lower()), i)
    key = str(label).strip().lower()
    if key not in names:
      raise ValueError(
          f"Unknown class {label!r}; "
          + (f"the classes are {list(class_names)}." if class_names else "no class names saved.")
      )
    return names[key]
  if class_names and not 0 <= index < len(class_names):
    raise ValueError(f"Class id {index} out of range [0, {len(class_names)}).")
  return index

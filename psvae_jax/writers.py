"""Metric writers (CLU: TensorBoard + logs, process 0 only), image grids, metrics.json and
eval_history.jsonl."""

from __future__ import annotations

import json
from typing import Mapping

import jax
import numpy as np
from etils import epath

from psvae_jax import runtime
from psvae_jax import workdir as workdir_lib


def create_writer(workdir: str):
  """A CLU writer for TensorBoard under `workdir`; other processes only log."""
  runtime.hide_gpus_from_tf()  # before CLU imports TF: it must not take the GPUs from JAX
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TF)

  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=True
  )


def grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
  """Tiles (N, H, W, 3) uint8 images into one (rows*H, cols*W, 3) image."""
  n, h, w, c = images.shape
  cols = cols or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
  for i, im in enumerate(images):
    r, k = divmod(i, cols)
    out[
        pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w
    ] = im
  return out


def save_png(path: str, image: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(path)


def write_metrics_json(
    workdir: str, metrics: Mapping[str, float | str], eval_step: int | None = None
) -> None:
  """Merges flat {name: value} into DIR/metrics.json (process 0 only), the one writer of it.

  Numbers are written as floats, strings (an evaluator's reference set, ...) as they are;
  `eval_step` (psvae_jax.evaluate: the step its figures describe) is written as an int.
  """
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / workdir_lib.METRICS
  current = json.loads(path.read_text()) if path.exists() else {}
  current.update({k: (v if isinstance(v, str) else float(v)) for k, v in metrics.items()})
  if eval_step is not None:
    current["eval_step"] = eval_step
  path.write_text(json.dumps(current, indent=2, sort_keys=True))


def append_eval_history(workdir: str, step: int, metrics: Mapping[str, float | str]) -> None:
  """Appends one line {"step", "figures"} to DIR/eval_history.jsonl (process 0 only): every
  periodic eval of a run, for curves read without TensorBoard (`read_eval_history`)."""
  if jax.process_index() != 0:
    return
  figures = {k: (v if isinstance(v, str) else float(v)) for k, v in metrics.items()}
  line = json.dumps({"step": int(step), "figures": figures}, sort_keys=True)
  with (epath.Path(workdir) / workdir_lib.EVAL_HISTORY).open("a") as f:
    f.write(line + "\n")


def read_eval_history(workdir: str) -> dict[int, dict[str, float | str]]:
  """{step: figures} of DIR/eval_history.jsonl, ascending; a step evaluated again (a resumed run)
  keeps its last figures; a torn last line (a run killed while writing) is skipped."""
  path = epath.Path(workdir) / workdir_lib.EVAL_HISTORY
  out = {}
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      out[int(row["step"])] = row["figures"]
  return dict(sorted(out.items()))

"""The demo's editing figures: SDEdit and inpainting of held-out shapes, scored by the checker.

  figures = demo_figures(api.load("runs/demo/dit"), "runs/demo/edits")

writes before/after grids and captions to the output folder and returns edit_adherence,
inpaint_keep_psnr and inpaint_adherence (what `python -m psvae_jax.demo` reports).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from configs import common
from psvae_jax import editing
from psvae_jax import writers
from psvae_jax.shapes import checker
from psvae_jax.shapes import world


def _edit_prompt(objects, rng: np.random.Generator) -> tuple[str, list]:
  """A new caption for a scene: the first object's colour changed."""
  first = objects[0]
  colors = [c for c in world.COLORS if c != first.color]
  new = dataclasses.replace(first, color=colors[int(rng.integers(len(colors)))])
  return world.caption([new, *objects[1:]]), [new, *objects[1:]]


def demo_figures(
    pipe,
    out_dir: str,
    num: int = 32,
    strength: float = 0.7,
    steps: int = 25,
    guidance_scale: float = common.SAMPLE.guidance_scale,
    seed: int = 0,
    first_index: int = 10**6,
) -> dict[str, float]:
  """Edits and inpaints `num` held-out shapes images; writes before/after grids; returns figures.

  - edit_adherence: the checker accepts the edit (strength `strength`) for a caption with the
    first object's colour changed;
  - inpaint: the half of the image holding the first object is masked (white) and regenerated
    with a caption naming a different shape/colour there: inpaint_keep_psnr is the PSNR outside
    the mask vs the input, inpaint_adherence the checker's acceptance of the new caption.
  Edits and inpaints share one compiled sampler (same batch size).
  """
  size = pipe.image_size
  rng = np.random.default_rng(seed)
  images, edit_caps, inpaint_caps, masks = [], [], [], []
  for i in range(num):
    r = np.random.default_rng([seed, first_index + i])
    bg = tuple(int(c) for c in r.integers(0, 41, 3))
    objects = world.sample_scene(r)
    images.append(world.render(objects, size, bg))
    edit_caps.append(_edit_prompt(objects, rng)[0])
    first = objects[0]
    new = dataclasses.replace(
        first,
        shape=[s for s in world.SHAPES if s != first.shape][int(rng.integers(2))],
        color=[c for c in world.COLORS if c != first.color][int(rng.integers(6))],
    )
    inpaint_caps.append(world.caption([new, *objects[1:]]))
    masks.append(_half_mask(first.position, size))
  images = np.stack(images)
  masks = np.stack(masks)
  full = np.ones_like(masks)
  edited = pipe.edit(
      images, edit_caps, strength=strength, steps=steps, guidance_scale=guidance_scale, seed=seed
  )
  inpainted = pipe.inpaint(
      images, masks, inpaint_caps, steps=steps, guidance_scale=guidance_scale, seed=seed
  )
  keep = [editing.psnr(inpainted[i], images[i], masks[i] < 0.5) for i in range(num)]
  figures = {
      "edit_adherence": float(np.mean(checker.score_batch(edited, edit_caps))),
      "inpaint_keep_psnr": float(np.mean(np.minimum(keep, 100.0))),
      "inpaint_adherence": float(np.mean(checker.score_batch(inpainted, inpaint_caps))),
      "edit_settings": dict(num=num, strength=strength, steps=steps, guidance_scale=guidance_scale),
  }
  grid = lambda *rows: writers.grid(
      np.stack([im for row in zip(*rows) for im in row]), cols=len(rows) * 4
  )
  mask_rgb = (masks[..., None] * 255).astype(np.uint8).repeat(3, axis=-1)
  writers.save_png(os.path.join(out_dir, "edit_before_after.png"), grid(images, edited))
  writers.save_png(
      os.path.join(out_dir, "inpaint_before_mask_after.png"), grid(images, mask_rgb, inpainted)
  )
  with open(os.path.join(out_dir, "captions.txt"), "w") as f:
    for i in range(num):
      f.write(f"{i}\tedit: {edit_caps[i]}\tinpaint: {inpaint_caps[i]}\n")
  return figures


def _half_mask(position: str, size: int) -> np.ndarray:
  """{0, 1} (size, size): the half of the image that holds an object at `position`."""
  m = np.zeros((size, size), np.float32)
  half = size // 2
  if position == "left":
    m[:, :half] = 1
  elif position == "right":
    m[:, half:] = 1
  elif position == "top":
    m[:half] = 1
  elif position == "bottom":
    m[half:] = 1
  else:
    q = size // 4
    m[q : size - q, q : size - q] = 1
  return m

"""The demo's report figures, measured on held-out "test" compositions only (world.py's split).

  report = test_figures(api.load("runs/demo/dit"), "runs/demo/report_figures")

Three measurements, each a fraction with its standard error sqrt(p (1 - p) / n) and count n:

- generation: prompt adherence (the checker accepts every object of the caption) of new scenes in
  four groups: seen / unseen compositions x one / two objects. "seen" prompts name compositions
  the training data holds (new noise, never used for tuning); "unseen" ones name a "test"
  composition that no training caption of any stage holds. At the sampling defaults and at
  guidance scale 1.
- inpainting (two-object scenes): the half holding the first object is masked and regenerated
  as a different shape and colour. `inpaint_object` scores the new object alone (its own
  one-object caption, on the composited output); `inpaint_kept` scores the other object, and
  `inpaint_keep_psnr` the unmasked half, on the raw decode *before* compositing (compositing
  copies the input there, which would make both a tautology). `recon_keep_psnr` is the same
  region of the plain autoencoder reconstruction: the ceiling for the raw decode.
- editing (SDEdit): the first object's colour changed. `edit_adherence` is the new caption;
  `edit_preservation` that the rest stayed: the edited object's shape at its position (in any
  colour) and the other object as it was.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from configs import eval as eval_config
from psvae_jax import editing
from psvae_jax import writers
from psvae_jax.evals import runner
from psvae_jax.shapes import checker
from psvae_jax.shapes import world

TEST_INDEX_OFFSET = 30_000_000  # generator indices of the report's scenes (no other split's)


def rate(hits: Sequence[bool]) -> dict[str, float]:
  """{"mean", "se", "n"} of a list of outcomes (se: the binomial standard error)."""
  x = np.asarray(hits, np.float64)
  n = int(x.size)
  p = float(x.mean()) if n else float("nan")
  return {"mean": p, "se": float(np.sqrt(p * (1 - p) / n)) if n else float("nan"), "n": n}


def test_scenes(
    num: int, split: str, num_objects: int | None, image_size: int, seed: int, offset: int = 0
) -> tuple[np.ndarray, list[list[world.ShapeObject]]]:
  """`num` new scenes of a composition split: images uint8 (num, S, S, 3) and their objects."""
  images, scenes = [], []
  for i in range(num):
    background, objects = world.scene(TEST_INDEX_OFFSET + offset + i, seed, split, num_objects)
    images.append(world.render(objects, image_size, background))
    scenes.append(objects)
  return np.stack(images), scenes


def _one(obj: world.ShapeObject) -> str:
  return world.caption([obj])


def _any_color(image: np.ndarray, obj: world.ShapeObject) -> bool:
  """The object's shape at its position, in whatever colour."""
  return any(checker.score(image, _one(dataclasses.replace(obj, color=c))) for c in world.COLORS)


def _grid_with_captions(path: str, images: np.ndarray, captions: Sequence[str], cols: int = 4):
  writers.save_png(path, writers.grid(np.asarray(images), cols=cols))
  with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
    f.write("tiles row-major:\n" + "".join(f"{i}: {c}\n" for i, c in enumerate(captions)))


def generation_figures(
    pipe,
    out_dir: str,
    per_group: int = 64,
    seed: int = 0,
    scales: Sequence[float] = (),
    held_out: str = "test",
) -> dict:
  """Adherence on the four groups (seen / `held_out` compositions x one / two objects), at the
  default guidance scale and at 1 (or `scales`). held_out="val" is for tuning decisions."""
  size = pipe.image_size
  groups = {}
  for k, (split, n_obj) in enumerate([("train", 1), ("train", 2), (held_out, 1), (held_out, 2)]):
    _, scenes = test_scenes(per_group, split, n_obj, size, seed, offset=k * 10**6)
    name = f"{'seen' if split == 'train' else 'unseen'}_{'single' if n_obj == 1 else 'two'}"
    groups[name] = [world.caption(s) for s in scenes]
  prompts = [c for caps in groups.values() for c in caps]
  default = pipe.sample_settings().guidance_scale
  out = {}
  for scale in tuple(scales) or (default, 1.0):
    images = pipe.generate(prompts, guidance_scale=scale, seed=seed)
    hits = checker.score_batch(images, prompts)
    tag = "" if scale == default else f"_cfg{scale:g}"
    i = 0
    for name, caps in groups.items():
      out[f"adherence_{name}{tag}"] = rate(hits[i : i + len(caps)])
      i += len(caps)
    seen = np.concatenate([hits[:per_group], hits[per_group : 2 * per_group]])
    unseen = hits[2 * per_group :]
    out[f"adherence_seen{tag}"] = rate(seen)
    out[f"adherence_unseen{tag}"] = rate(unseen)
    out[f"adherence_single{tag}"] = rate(np.concatenate([hits[:per_group], unseen[:per_group]]))
    out[f"adherence_two{tag}"] = rate(np.concatenate([seen[per_group:], unseen[per_group:]]))
    if scale == default:  # the grids: 16 unseen two-object prompts, 16 unseen single ones
      two = slice(3 * per_group, 3 * per_group + 16)
      one = slice(2 * per_group, 2 * per_group + 16)
      _grid_with_captions(
          os.path.join(out_dir, "unseen_two_objects.png"), images[two], prompts[two]
      )
      _grid_with_captions(
          os.path.join(out_dir, "unseen_single_object.png"), images[one], prompts[one]
      )
  out["generation_settings"] = dict(
      per_group=per_group, seed=seed, steps=pipe.config.sample.steps, guidance_scale=default
  )
  return out


def inpaint_figures(
    pipe,
    out_dir: str,
    num: int = 128,
    seed: int = 0,
    guidance_scale: float | None = None,
    held_out: str = "test",
) -> dict:
  """Inpainting of the first object of two-object scenes (half training compositions, half
  `held_out` ones)."""
  size = pipe.image_size
  guidance_scale = pipe.sample_settings(guidance_scale=guidance_scale).guidance_scale
  half = num // 2
  im_a, sc_a = test_scenes(half, "train", 2, size, seed, offset=5 * 10**6)
  im_b, sc_b = test_scenes(num - half, held_out, 2, size, seed, offset=6 * 10**6)
  images, scenes = np.concatenate([im_a, im_b]), sc_a + sc_b
  rng = np.random.default_rng([seed, 7])
  new_objects, captions, masks = [], [], []
  for objects in scenes:
    first = objects[0]
    new = dataclasses.replace(
        first,
        shape=[s for s in world.SHAPES if s != first.shape][int(rng.integers(2))],
        color=[c for c in world.COLORS if c != first.color][int(rng.integers(6))],
    )
    new_objects.append(new)
    captions.append(world.caption([new, *objects[1:]]))
    masks.append(half_mask(first.position, size))
  masks = np.stack(masks)
  raw = pipe.inpaint(
      images, masks, captions, guidance_scale=guidance_scale, seed=seed, composite=False
  )
  final = np.stack([editing.composite(r, o, m, 1.0) for r, o, m in zip(raw, images, masks)])
  recon = pipe.edit(images, captions, strength=0.0, seed=seed)
  keep = masks < 0.5
  out = {
      "inpaint_object": rate([checker.score(final[i], _one(new_objects[i])) for i in range(num)]),
      "inpaint_kept": rate([checker.score(raw[i], _one(scenes[i][1])) for i in range(num)]),
      "inpaint_keep_psnr": _mean_se(
          [min(editing.psnr(raw[i], images[i], keep[i]), 100.0) for i in range(num)]
      ),
      "recon_keep_psnr": _mean_se(
          [min(editing.psnr(recon[i], images[i], keep[i]), 100.0) for i in range(num)]
      ),
      "inpaint_unseen_captions": float(
          np.mean([world.composition_split(world.parse_caption(c)) != "train" for c in captions])
      ),
      "inpaint_settings": dict(num=num, guidance_scale=guidance_scale, seed=seed),
  }
  k = 16
  mask_rgb = (masks[..., None] * 255).astype(np.uint8).repeat(3, axis=-1)
  _save_tiles(
      out_dir,
      ("inpaint_input_mask_raw_final.png", "inpaint_captions.txt"),
      (images[:k], mask_rgb[:k], raw[:k], final[:k]),
      "rows of (input, mask, raw decode, composited), two per grid row:",
      captions[:k],
  )
  return out


def _save_tiles(out_dir: str, names: tuple[str, str], columns, header: str, captions) -> None:
  """One grid (8 tiles a row) of the columns' images interleaved per example, and a text file
  naming each example's caption under `header`."""
  rows = np.stack([im for t in zip(*columns) for im in t])
  writers.save_png(os.path.join(out_dir, names[0]), writers.grid(rows, 8))
  with open(os.path.join(out_dir, names[1]), "w", encoding="utf-8") as f:
    f.write(header + "\n")
    f.write("".join(f"{i}: {c}\n" for i, c in enumerate(captions)))


def edit_figures(
    pipe,
    out_dir: str,
    num: int = 128,
    strength: float = 0.7,
    seed: int = 0,
    guidance_scale: float | None = None,
) -> dict:
  """SDEdit of new scenes (training compositions, half one object, half two): first object's
  colour changed."""
  size = pipe.image_size
  guidance_scale = pipe.sample_settings(guidance_scale=guidance_scale).guidance_scale
  half = num // 2
  im_a, sc_a = test_scenes(half, "train", 1, size, seed, offset=8 * 10**6)
  im_b, sc_b = test_scenes(num - half, "train", 2, size, seed, offset=9 * 10**6)
  images, scenes = np.concatenate([im_a, im_b]), sc_a + sc_b
  rng = np.random.default_rng([seed, 11])
  captions, edited_first = [], []
  for objects in scenes:
    first = objects[0]
    colors = [c for c in world.COLORS if c != first.color]
    new = dataclasses.replace(first, color=colors[int(rng.integers(len(colors)))])
    edited_first.append(new)
    captions.append(world.caption([new, *objects[1:]]))
  edited = pipe.edit(images, captions, strength=strength, guidance_scale=guidance_scale, seed=seed)
  adherent = checker.score_batch(edited, captions)
  kept = [
      _any_color(edited[i], edited_first[i])
      and all(checker.score(edited[i], _one(o)) for o in scenes[i][1:])
      for i in range(num)
  ]
  out = {
      "edit_adherence": rate(adherent),
      "edit_preservation": rate(kept),
      "edit_unseen_captions": float(
          np.mean([world.composition_split(world.parse_caption(c)) != "train" for c in captions])
      ),
      "edit_settings": dict(num=num, strength=strength, guidance_scale=guidance_scale, seed=seed),
  }
  k = 16
  _save_tiles(
      out_dir,
      ("edit_before_after.png", "edit_captions.txt"),
      (images[:k], edited[:k]),
      "pairs of (input, edited), four per grid row:",
      captions[:k],
  )
  return out


def test_figures(
    pipe,
    out_dir: str,
    per_group: int = 64,
    num_edits: int = 128,
    held_out: str = "test",
    seed: int = 0,
) -> dict:
  """All three on the test split (the report; held_out="val" with another seed: for tuning);
  grids and their captions in `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  out = generation_figures(pipe, out_dir, per_group, seed=seed, held_out=held_out)
  out.update(inpaint_figures(pipe, out_dir, num_edits, seed=seed, held_out=held_out))
  out.update(edit_figures(pipe, out_dir, num_edits, seed=seed))
  return out


def _mean_se(values: Sequence[float]) -> dict[str, float]:
  x = np.asarray(values, np.float64)
  return {
      "mean": float(x.mean()),
      "se": float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan"),
      "n": int(x.size),
  }


def half_mask(position: str, size: int) -> np.ndarray:
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


def summary_table(figures: dict, held_out: str = "test") -> str:
  """The figures as lines "name  mean ± se  (n)", in the order they were measured ("unseen":
  the `held_out` split's compositions)."""
  lines = [f"unseen = held-out {held_out!r} compositions (mean ± standard error, n):"]
  for name, v in figures.items():
    if isinstance(v, dict) and {"mean", "se", "n"} <= set(v):
      lines.append(f"  {name:34s} {v['mean']:.3f} ± {v['se']:.3f}  (n={v['n']})")
  return "\n".join(lines)


def fid_figures(dit_dir: str, proxy_path: str, num_samples: int = 64, num_images: int = 128):
  """fid_proxy (samples of the DiT run in `dit_dir`) and rfid_proxy (its autoencoder's
  reconstructions) with the proxy at `proxy_path`: the fid and rfid evaluators of
  configs/eval.py:demo (figures also land in DIT_DIR/metrics.json and its TensorBoard events).

  Returns {"fid_proxy", "rfid_proxy", "fid_proxy_settings"}."""
  cfg = eval_config.get_config("demo")
  cfg.proxy_weights = proxy_path
  for k in ("psnr", "ssim", "lpips", "adherence"):  # reported elsewhere
    del cfg.evals[k]
  cfg.evals.fid_proxy.num_samples = num_samples
  cfg.evals.fid_proxy.num_reference = 4 * num_samples
  cfg.evals.rfid_proxy.num_images = num_images
  r = runner.evaluate(dit_dir, cfg)
  return {
      "fid_proxy": r["fid_proxy/fid"],
      "rfid_proxy": r["rfid_proxy/rfid"],
      "fid_proxy_settings": {
          k.split("/", 1)[1]: v
          for k, v in r.items()
          if k.startswith("fid_proxy/") and k != "fid_proxy/fid"
      },
  }

"""Evaluators (big_vision style): small classes chosen by `type` in config,
each returning {name: value}.

  evals = {"fid_proxy": {"type": "fid", "feature": "proxy", "num_samples": 128, ...},
           "rfid_proxy": {"type": "rfid", "feature": "proxy"}, "psnr": {"type": "psnr"}, ...}
  results = run_all(evals, ctx)     # {"fid_proxy/fid": ..., "fid_proxy/steps": ..., ...}

An evaluator sees the model only through an `EvalContext`: `reconstruct(images)` (the
autoencoder, [-1, 1] in and out), `generate(captions, steps, guidance_scale, seed)` (uint8
out),
`eval_data(n)` (held-out images and captions) and `features(kind)` (a jitted feature net:
"inception" with FID weights, or "proxy"). Images go through fixed-size padded batches
sharded over the context's mesh; padded rows are masked out, per-image values are reduced
in float64 in image order and FID statistics are exact float64 sums, so results do not
depend on the eval batch size or the device count. Every FID comes with its sampler steps,
guidance scale, number of samples and reference set. Unset steps / guidance_scale take the
sampling defaults (psvae_jax/diffusion/settings.py SampleSettings).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from psvae_jax import parallel
from psvae_jax.diffusion import settings as sample_settings
from psvae_jax.evals import checkers
from psvae_jax import pixels
from psvae_jax import runtime
from psvae_jax.evals import fid as fid_lib
from psvae_jax.evals import image_metrics


@dataclasses.dataclass
class EvalContext:
  mesh: jax.sharding.Mesh
  batch_size: int
  eval_data: Callable[[int], dict[str, Any]]  # n -> {"image": [-1,1] float, "caption": [...]}
  reconstruct: Callable[[np.ndarray], np.ndarray] | None = None
  generate: Callable[..., np.ndarray] | None = None
  feature_nets: dict[str, tuple[Callable, int]] = dataclasses.field(default_factory=dict)
  lpips: tuple[Any, Any] | None = None  # (module, variables)
  lpips_label: str = ""
  # kind -> (jitted uint8 images -> logits, class names): the class_accuracy evaluator's judge
  classifiers: dict[str, tuple[Callable, list[str]]] = dataclasses.field(default_factory=dict)
  num_classes: int = 0  # a class-conditioned model's class count (0: not a class model)
  cache: dict[str, Any] = dataclasses.field(default_factory=dict)

  def batches(self, n: int):
    """(start, stop, padded size) chunks of the compiled eval batch size."""
    parallel.check_batch_divides_mesh(self.batch_size, self.mesh)
    for i in range(0, n, self.batch_size):
      yield i, min(n, i + self.batch_size)

  def put(self, x: np.ndarray) -> tuple[jax.Array, np.ndarray]:
    """Pads a host chunk to the batch size, shards it; returns (array, valid mask)."""
    n = len(x)
    mask = np.arange(self.batch_size) < n
    x = parallel.pad_rows(x, self.batch_size)
    return jax.device_put(x, parallel.batch_sharding(self.mesh, x.ndim)), mask

  def per_image(self, fn: Callable, *arrays: np.ndarray) -> np.ndarray:
    """fn(*batch) -> (B,) per image, over all images, float64, in image order."""
    out = []
    for i, j in self.batches(len(arrays[0])):
      xs = [self.put(a[i:j])[0] for a in arrays]
      out.append(np.asarray(jax.device_get(fn(*xs)), np.float64)[: j - i])
    return np.concatenate(out)

  def stats(self, kind: str, images_u8: np.ndarray) -> fid_lib.FeatureStats:
    """FID statistics of uint8 images under feature net `kind`, over all hosts."""
    fn, dim = self.feature_nets[kind]
    s = fid_lib.FeatureStats(dim)
    for i, j in self.batches(len(images_u8)):
      x, mask = self.put(images_u8[i:j])
      s.update(np.asarray(jax.device_get(fn(x))), mask)
    return s.allreduce()

  def recon(self, n: int) -> tuple[dict[str, Any], np.ndarray]:
    """The eval set and its reconstructions (computed once per context)."""
    if ("recon", n) not in self.cache:
      data = self.eval_data(n)
      self.cache[("recon", n)] = (data, np.clip(self.reconstruct(data["image"]), -1, 1))
    return self.cache[("recon", n)]


_psnr = runtime.no_grad_jit(image_metrics.psnr)
_ssim = runtime.no_grad_jit(image_metrics.ssim)


class PSNR:

  def __init__(self, cfg):
    self.n = cfg.get("num_images", 256)

  def run(self, ctx):
    data, rec = ctx.recon(self.n)
    return {"psnr": float(np.mean(ctx.per_image(_psnr, rec, data["image"]))), "num_images": self.n}


class SSIM(PSNR):

  def run(self, ctx):
    data, rec = ctx.recon(self.n)
    return {"ssim": float(np.mean(ctx.per_image(_ssim, rec, data["image"]))), "num_images": self.n}


class LPIPS(PSNR):

  def run(self, ctx):
    if ctx.lpips is None:
      raise ValueError("lpips evaluator needs LPIPS weights in the context.")
    data, rec = ctx.recon(self.n)
    module, variables = ctx.lpips
    fn = ctx.cache.setdefault(
        "lpips_fn", runtime.no_grad_jit(lambda a, b: module.apply(variables, a, b))
    )
    out = {"lpips": float(np.mean(ctx.per_image(fn, rec, data["image"]))), "num_images": self.n}
    if ctx.lpips_label:
      out["weights"] = ctx.lpips_label
    return out


class RFID(PSNR):
  """FID of the reconstructions against the originals of the same eval images."""

  def __init__(self, cfg):
    super().__init__(cfg)
    self.feature = cfg.get("feature", "inception")

  def run(self, ctx):
    data, rec = ctx.recon(self.n)
    mu1, s1 = ctx.stats(self.feature, pixels.to_uint8(rec)).finalize()
    mu2, s2 = ctx.stats(self.feature, pixels.to_uint8(data["image"])).finalize()
    return {
        "rfid": fid_lib.frechet_distance(mu1, s1, mu2, s2),
        "num_samples": self.n,
        "feature": self.feature,
        "reference": f"originals of {self.n} eval images (seeded, stratified by class)",
    }


class FID:
  """Generation FID: N samples against reference stats.

  Conditions, cycled to N: the eval set's captions (default), the lines of `prompts_file`, or
  with `class_balanced` = K > 0 the labels 0..K-1 equally often (class-conditional models; -1:
  K = the model's class count).
  """

  def __init__(self, cfg):
    self.prompts_file = cfg.get("prompts_file", "")
    self.class_balanced = int(cfg.get("class_balanced", 0))
    self.n = cfg.get("num_samples", 1000)
    self.num_ref = cfg.get("num_reference", 1000)
    if "cfg" in cfg:
      raise ValueError("The evaluator setting 'cfg' is now 'guidance_scale'.")
    self.steps = cfg.get("steps", sample_settings.SampleSettings().steps)
    self.guidance_scale = cfg.get("guidance_scale", sample_settings.SampleSettings().guidance_scale)
    self.seed = cfg.get("seed", 0)
    self.feature = cfg.get("feature", "inception")
    self.ref_path = cfg.get("reference", "")  # .npz (ours or ADM); "" = own pass over eval data

  def reference(self, ctx):
    if self.ref_path:
      mu, sigma, meta = fid_lib.load_stats(self.ref_path)
      return mu, sigma, f"{self.ref_path} {meta}"
    key = ("ref", self.feature, self.num_ref)
    if key not in ctx.cache:
      data = ctx.eval_data(self.num_ref)
      ctx.cache[key] = ctx.stats(self.feature, pixels.to_uint8(data["image"])).finalize()
    return (*ctx.cache[key], f"{self.num_ref} eval images (seeded, stratified by class)")

  def eval_images_needed(self) -> int:
    """Held-out images this evaluator reads (`reference` and captions): checked up front."""
    if self.ref_path:
      return 0 if (self.class_balanced or self.prompts_file) else min(self.n, self.num_ref)
    return self.num_ref

  def num_balanced(self, ctx) -> int:
    if self.class_balanced == -1:
      if not ctx.num_classes:
        raise ValueError("class_balanced=-1 needs a class-conditioned model.")
      return ctx.num_classes
    return self.class_balanced

  def conditions(self, ctx) -> tuple[list[str] | None, np.ndarray | None, str]:
    """(captions, labels, description) for the N samples."""
    k = self.num_balanced(ctx)
    if k > 0:
      return None, np.arange(self.n) % k, f"class-balanced over {k} classes"
    if self.prompts_file:
      try:
        with open(self.prompts_file, encoding="utf-8") as f:
          captions = [line.strip() for line in f if line.strip()]
      except OSError as e:
        raise ValueError(f"fid prompts_file {self.prompts_file!r} cannot be read: {e}") from None
      if not captions:
        raise ValueError(f"fid prompts_file {self.prompts_file!r} holds no prompts.")
      source = f"{len(captions)} prompts of {self.prompts_file}"
    else:
      captions = list(ctx.eval_data(min(self.n, self.num_ref))["caption"])
      source = f"captions of {len(captions)} eval images"
    return [captions[i % len(captions)] for i in range(self.n)], None, source

  def samples(self, ctx) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(uint8 samples, their labels or None, conditions), generated once per settings."""
    captions, labels, source = self.conditions(ctx)
    key = ("gen", self.n, self.steps, self.guidance_scale, self.seed, source)
    if key not in ctx.cache:
      ctx.cache[key] = ctx.generate(
          captions, self.steps, self.guidance_scale, self.seed, labels=labels
      )
    return ctx.cache[key], labels, source

  def run(self, ctx):
    images, _, source = self.samples(ctx)
    mu, sigma = ctx.stats(self.feature, images).finalize()
    ref_mu, ref_sigma, ref_name = self.reference(ctx)
    return {
        "fid": fid_lib.frechet_distance(mu, sigma, ref_mu, ref_sigma),
        "steps": self.steps,
        "guidance_scale": self.guidance_scale,
        "num_samples": self.n,
        "num_reference": 0 if self.ref_path else self.num_ref,
        "feature": self.feature,
        "reference": ref_name,
        "conditions": source,
    }


class ClassAccuracy(FID):
  """Classifier accuracy of class-balanced samples: the share the classifier (`feature`, a
  trained psvae_jax/evals/feature_net.py) assigns to the class they were generated for, with
  its standard error and per class (keyed by class name)."""

  def __init__(self, cfg):
    super().__init__({**dict(cfg), "class_balanced": -1})
    self.feature = cfg.get("feature", "classifier")

  def eval_images_needed(self) -> int:
    return 0

  def run(self, ctx):
    if self.feature not in ctx.classifiers:
      raise ValueError(f"class_accuracy needs the {self.feature!r} classifier in the context.")
    logits_fn, names = ctx.classifiers[self.feature]
    images, labels, source = self.samples(ctx)
    preds = []
    for i, j in ctx.batches(len(images)):
      x, _ = ctx.put(images[i:j])
      preds.append(np.asarray(jax.device_get(jnp.argmax(logits_fn(x), -1)))[: j - i])
    hits = (np.concatenate(preds) == labels).astype(np.float64)
    out = {
        "accuracy": float(hits.mean()),
        "accuracy_se": float(hits.std(ddof=1) / np.sqrt(len(hits))) if len(hits) > 1 else 0.0,
        "steps": self.steps,
        "guidance_scale": self.guidance_scale,
        "num_samples": self.n,
        "conditions": source,
    }
    for c in range(self.num_balanced(ctx)):
      name = names[c] if c < len(names) else str(c)
      out[f"per_class/{name}"] = float(hits[labels == c].mean())
    return out


class Adherence(FID):
  """Prompt adherence of generated samples, by the registered checker that accepts the eval
  captions (psvae_jax/evals/checkers.py; the shapes demo registers "shapes")."""

  def eval_images_needed(self) -> int:
    return self.n

  def run(self, ctx):
    captions = list(ctx.eval_data(self.n)["caption"])
    checker = checkers.for_captions(captions)
    if checker is None:
      raise ValueError(
          f"adherence: no registered checker accepts the eval captions "
          f"(registered: {checkers.registered()}; e.g. {str(captions[:1])[:80]})."
      )
    key = (
        "gen",
        self.n,
        self.steps,
        self.guidance_scale,
        self.seed,
        f"captions of {len(captions)} eval images",
    )
    if key not in ctx.cache:
      ctx.cache[key] = ctx.generate(captions, self.steps, self.guidance_scale, self.seed)
    images = ctx.cache[key]
    return {
        "adherence": checkers.adherence(images, captions, checker),
        "steps": self.steps,
        "guidance_scale": self.guidance_scale,
        "num_samples": self.n,
    }


EVALUATORS = {
    "fid": FID,
    "rfid": RFID,
    "psnr": PSNR,
    "ssim": SSIM,
    "lpips": LPIPS,
    "adherence": Adherence,
    "class_accuracy": ClassAccuracy,
}


def get_evaluator(cfg):
  if cfg["type"] not in EVALUATORS:
    raise ValueError(f"Unknown evaluator type {cfg['type']!r}; known: {sorted(EVALUATORS)}.")
  return EVALUATORS[cfg["type"]](cfg)


def eval_images_needed(evals: dict[str, Any]) -> dict[str, int]:
  """{evaluator name: held-out images it reads}, to check the eval data before generating."""
  out = {}
  for name, cfg in dict(evals).items():
    e = get_evaluator(dict(cfg))
    out[name] = e.eval_images_needed() if hasattr(e, "eval_images_needed") else e.n
  return out


def run_all(evals: dict[str, Any], ctx: EvalContext, progress=None) -> dict[str, Any]:
  """{"<name>/<key>": value} for every configured evaluator (numbers and strings).

  progress: optional callable(str), told when each evaluator starts and finishes (with its
  seconds and the time left at the pace so far).
  """
  out = {}
  items = sorted(dict(evals).items())
  t0 = time.time()
  for i, (name, cfg) in enumerate(items):
    t = time.time()
    if progress:
      progress(f"[{i + 1}/{len(items)}] {name} ({dict(cfg)['type']}) ...")
    for k, v in get_evaluator(dict(cfg)).run(ctx).items():
      out[f"{name}/{k}"] = v
    if progress:
      left = (time.time() - t0) / (i + 1) * (len(items) - i - 1)
      progress(f"[{i + 1}/{len(items)}] {name}: {time.time() - t:.1f} s (about {left:.0f} s left)")
  return out

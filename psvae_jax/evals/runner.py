"""Evaluation wiring: the EvalContext of a workdir or of a training task, and where results go.

  results = runner.evaluate(workdir, config)   # what `python -m psvae_jax.evaluate` runs
  scalars = runner.in_training(config, mesh, eval_data, reconstruct=..., generate=...)

A stage-3 (dit) workdir gets the generation evaluators (samples from its DiT) and the
reconstruction ones (through its autoencoder); an autoencoder workdir only the latter.
Figures go to TensorBoard as `eval/<name>/<key>` (strings such as the reference set as
text summaries) and are merged into DIR/metrics.json as `"<name>/<key>": value`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import jax
import numpy as np
from absl import logging
from etils import epath


from psvae_jax import api
from psvae_jax import frozen_psvae
from psvae_jax import checkpoint
from psvae_jax import writers
from psvae_jax import parallel
from psvae_jax import runtime
from psvae_jax import workdir as workdir_lib
from psvae_jax.data import pipeline
from psvae_jax.data import sources
from psvae_jax.data import specs
from psvae_jax.diffusion import settings as sample_settings
from psvae_jax.evals import evaluators
from psvae_jax.evals import feature_net
from psvae_jax.evals import features
from psvae_jax.weights import lpips


class EvalInputError(ValueError):
  """Evaluation inputs that cannot serve the configured evaluators (one line: what to change)."""


GENERATION_TYPES = ("fid", "adherence", "class_accuracy")


def in_training(config, mesh, eval_data, reconstruct=None, generate=None) -> dict[str, float]:
  """Runs config.evals from a training task's periodic eval; numeric figures only.

  Each evaluator config that needs features names them with `feature` and `weights`
  (a proxy or Inception file); strings (reference set, feature kind) are logged.
  """
  ctx = evaluators.EvalContext(
      mesh=mesh,
      batch_size=config.eval.batch_size,
      eval_data=eval_data,
      reconstruct=reconstruct,
      generate=generate,
  )
  model = config.get("model") or {}
  if model.get("cond_type") == "class":  # class_balanced=-1 and class_accuracy need the count
    ctx.num_classes = int(model.get("num_classes", 0))
  for name, e in config.evals.items():
    e = dict(e)
    kind = e.get("feature") or (feature_net.KIND if e["type"] == "class_accuracy" else "")
    if kind and "weights" not in e:
      raise ValueError(f"config.evals.{name}: feature {kind!r} in training needs its 'weights'.")
    if kind and kind not in ctx.feature_nets:
      ctx.feature_nets[kind] = features.feature_net(kind, e["weights"], config.data.image_size)
    if e["type"] == "class_accuracy" and kind not in ctx.classifiers:
      ctx.classifiers[kind] = feature_net.load_logits(e["weights"])
  evals = {
      k: v
      for k, v in config.evals.items()
      if (dict(v)["type"] in GENERATION_TYPES) == (generate is not None)
  }
  results = evaluators.run_all(evals, ctx)
  logging.info("evaluators: %s", results)
  return {k: float(v) for k, v in results.items() if not isinstance(v, str)}


def _load(workdir: str, mesh):
  """(run config, autoencoder, generate or None) of a workdir; a dit's autoencoder loads once."""
  run_cfg = workdir_lib.read_config(workdir)
  if run_cfg.stage != "dit":
    return run_cfg, frozen_psvae.load_autoencoder(workdir, mesh), None
  pipe = api.load(workdir, mesh)
  generate = lambda caps, steps, guidance_scale, seed, labels=None: pipe.generate(
      caps if labels is None else None,
      labels=labels,
      steps=steps,
      guidance_scale=guidance_scale,
      seed=seed,
  )
  return run_cfg, pipe.gen.ae, generate


def default_variant(workdir: str) -> str:
  """The configs/eval.py variant that fits a workdir: "demo" for the shapes demo's data, "classes"
  for a class-conditioned DiT, else "inception" (reads only config.json)."""
  run = workdir_lib.read_config_dict(workdir)
  data = run.get("data", {})
  if data.get("source") == "latents" and data.get("path"):
    try:
      with open(os.path.join(data["path"], "meta.json"), encoding="utf-8") as f:
        data = json.load(f).get("data", data)
    except OSError:
      pass
  if data.get("source") == "shapes":
    return "demo"
  if run.get("stage") == "dit" and run.get("model", {}).get("cond_type") == "class":
    return "classes"
  return "inception"


def eval_data_config(ae_data, data_spec: str, image_size: int):
  """The held-out data an evaluation reads: `data_spec` (`--data=KIND:ARGS`, its whole eval
  split), else the autoencoder's training data, uncapped where its eval split is a split of its
  own (an eval/ or test/ folder, a tfds split; shapes grow on demand) and as trained where the
  held-out images were carved out of one folder (growing it would take training images)."""
  if data_spec:
    return specs.parse_data_spec(data_spec, image_size)
  cfg = ae_data.copy_and_resolve_references()
  if sources.eval_split_is_separate(cfg):
    cfg.num_eval = 0
  return cfg


def check_eval_data(evals, eval_data) -> dict[str, int]:
  """Reads the held-out images every evaluator needs before anything is generated; ValueError
  (one line: the evaluator, the count, the flag) when the data have fewer."""
  needed = evaluators.eval_images_needed(evals)
  for name, n in sorted(needed.items(), key=lambda kv: -kv[1]):
    if n <= 0:
      continue
    try:
      eval_data(n)
    except ValueError as e:
      raise EvalInputError(
          f"evaluator {name!r} needs {n} held-out images: {e} Lower its size "
          f"(--config.evals.{name}.num_...) or give --data=KIND:ARGS with more."
      ) from None
  return needed


def build_context(workdir: str, config, data_spec: str = ""):
  """The EvalContext of a workdir: reconstruction, generation, feature nets, LPIPS."""
  mesh = parallel.make_mesh(-1, 1)
  run_cfg, ae, generate = _load(workdir, mesh)
  data_cfg = eval_data_config(ae.config.data, data_spec, ae.image_size)
  sets = {}

  def eval_data(n):
    if n not in sets:
      cfg = data_cfg.copy_and_resolve_references()
      if cfg.source == "shapes":  # a generator: the held-out split grows on demand
        cfg.num_eval = max(cfg.num_eval, n)
      sets[n] = pipeline.build_eval_set(cfg, n)
    return sets[n]

  recon_jit = runtime.no_grad_jit(
      lambda p, x: jax.numpy.clip(ae.decode_with(p, ae.encode_with(p, x)[0]), -1, 1)
  )
  ctx = evaluators.EvalContext(
      mesh=mesh, batch_size=config.batch_size, eval_data=eval_data, generate=generate
  )
  if run_cfg.stage == "dit" and run_cfg.model.cond_type == "class":
    ctx.num_classes = int(run_cfg.model.num_classes)

  def reconstruct(images):
    out = []
    for i, j in ctx.batches(len(images)):
      x, _ = ctx.put(np.asarray(images[i:j], np.float32))
      out.append(np.asarray(jax.device_get(recon_jit(ae.params, x)))[: j - i])
    return np.concatenate(out)

  ctx.reconstruct = reconstruct
  kinds = {dict(e).get("feature") for e in config.evals.values()}
  if "proxy" in kinds:
    path = config.proxy_weights or os.path.join(
        os.path.dirname(os.path.abspath(workdir)), "fid_proxy.safetensors"
    )
    if not os.path.isfile(path):
      raise EvalInputError(
          f"The shapes proxy features need {path} (the demo writes it beside its workdirs): pass "
          "--config.proxy_weights=FILE, or another eval config (--config=configs/eval.py:classes "
          "or :inception)."
      )
    ctx.feature_nets["proxy"] = features.feature_net("proxy", path, ae.image_size)
  if feature_net.KIND in kinds:
    if not config.classifier_weights:
      raise EvalInputError(
          "The classifier features need --config.classifier_weights=FILE.safetensors (train one: "
          "python -m psvae_jax.evals.feature_net --data=... --out=FILE.safetensors)."
      )
    ctx.feature_nets[feature_net.KIND] = features.feature_net(
        feature_net.KIND, config.classifier_weights, ae.image_size
    )
    ctx.classifiers[feature_net.KIND] = feature_net.load_logits(config.classifier_weights)
  if "inception" in kinds:
    if not config.inception_weights:
      raise ValueError("Inception FID needs --config.inception_weights=pt_inception-...pth.")
    ctx.feature_nets["inception"] = features.feature_net(
        "inception", config.inception_weights, ae.image_size
    )
  if any(dict(e)["type"] == "lpips" for e in config.evals.values()):
    if config.lpips_vgg:
      ctx.lpips = lpips.load_lpips(config.lpips_vgg, config.lpips_heads)
      ctx.lpips_label = f"vgg={config.lpips_vgg} heads={config.lpips_heads}"
    else:
      ctx.lpips = lpips.random_lpips(jax.random.key(0), ae.image_size)
      ctx.lpips_label = "RANDOM-INIT VGG16 + heads (no weights available): not perceptual"
      logging.warning("lpips: %s", ctx.lpips_label)
  return ctx, run_cfg


def settings_of(name: str, evals, config, data_spec: str) -> str:
  """What a figure of evaluator `name` depends on besides the model: its evaluator config, the
  held-out data, the feature / LPIPS weight files (JSON, sorted keys)."""
  files = {
      k: config.get(k, "")
      for k in ("proxy_weights", "inception_weights", "classifier_weights", "lpips_vgg")
  }
  return json.dumps(
      {"evaluator": dict(evals[name]), "data": data_spec or "workdir", **files}, sort_keys=True
  )


def write_results(
    workdir: str, step: int, results: dict, evals=None, config=None, data_spec: str = ""
) -> dict:
  """CLU scalars/texts under eval/<name>/<key>, DIR/metrics.json and DIR/evaluations.jsonl
  (process 0 writes). Returns {evaluator name: the name its figures were stored under}.

  A figure never changes meaning under one name: metrics.json keeps each evaluator's settings
  (`<name>/settings`); a run with other settings for a stored name is written under
  `<name>@<hash of the settings>` instead (said in a warning). evaluations.jsonl gets one line
  per run (step, settings, results) and is never rewritten.
  """
  names = {}
  if evals is not None:
    path = epath.Path(workdir) / workdir_lib.METRICS
    stored = json.loads(path.read_text()) if path.exists() else {}
    renamed = {}
    for name in evals:
      settings = settings_of(name, evals, config, data_spec)
      key = name
      if stored.get(f"{name}/settings", settings) != settings:
        key = f"{name}@{hashlib.sha1(settings.encode()).hexdigest()[:6]}"
        logging.warning(
            "%s: settings differ from the stored %r figures: written as %r.", name, name, key
        )
      names[name] = key
      renamed[f"{key}/settings"] = settings
    for k, v in results.items():
      name, _, rest = k.partition("/")
      renamed[f"{names.get(name, name)}/{rest}" if rest else k] = v
    results = renamed
    if jax.process_index() == 0:
      line = {"eval_step": step, "time": time.time(), "results": results}
      with (epath.Path(workdir) / "evaluations.jsonl").open("a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
  writer = writers.create_writer(workdir)
  nums = {f"eval/{k}": float(v) for k, v in results.items() if not isinstance(v, str)}
  texts = {f"eval/{k}": v for k, v in results.items() if isinstance(v, str)}
  writer.write_scalars(step, nums)
  if texts:
    writer.write_texts(step, texts)
  writer.flush()
  writers.write_metrics_json(workdir, results, eval_step=step)
  return names


def evaluate(workdir: str, config, data_spec: str = "", progress=None) -> dict:
  """Runs config.evals on a trained workdir, writes them (write_results) and returns them.

  data_spec: `KIND:ARGS` held-out data to evaluate on (default: the workdir's own). The eval
  images every evaluator needs are read and counted before anything is generated.
  progress: optional callable(str) told what runs (the CLI prints it).
  """
  ctx, run_cfg = build_context(workdir, config, data_spec)
  evals = dict(config.evals)
  if ctx.generate is None:  # autoencoder workdir: reconstruction evaluators only
    evals = {k: v for k, v in evals.items() if dict(v)["type"] not in GENERATION_TYPES}
  else:  # an unset guidance scale is the model's own (its config's sample.guidance_scale)
    own = sample_settings.SampleSettings.resolve(run_cfg).guidance_scale
    evals = {
        k: {"guidance_scale": own, **dict(v)} if dict(v)["type"] in GENERATION_TYPES else v
        for k, v in evals.items()
    }
  if progress:
    progress(f"loaded {workdir}; reading the held-out images ...")
  needed = check_eval_data(evals, ctx.eval_data)
  results = evaluators.run_all(evals, ctx, progress)
  for name, n in needed.items():
    results.setdefault(f"{name}/num_eval_images", n)
  step = config.step
  if step < 0:
    step = (
        checkpoint.Checkpointer(
            os.path.join(workdir, workdir_lib.CHECKPOINTS), async_save=False
        ).latest_step()
        or 0
    )
  names = write_results(workdir, step, results, evals, config, data_spec)
  results["eval_step"] = step
  results["stored_as"] = names
  logging.info("stage %s step %d: %s", run_cfg.stage, step, json.dumps(results, indent=1))
  return results

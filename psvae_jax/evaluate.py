"""CLI: FID / rFID / PSNR / SSIM / LPIPS / adherence of a trained workdir, written with CLU writers.

  python -m psvae_jax.evaluate --workdir=runs/demo/dit [--config=configs/eval.py:demo]
      [--config.proxy_weights=runs/demo/fid_proxy.safetensors] [--config.batch_size=32]

A stage-3 (dit) workdir gets the generation evaluators (samples from its DiT) and the
reconstruction ones (through its autoencoder); an autoencoder workdir only the latter.
Figures go to TensorBoard as `eval/<name>/<key>` (strings such as the reference set as
text summaries) and are merged into DIR/metrics.json as `"<name>/<key>": value`.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir (dit, psvae or svae).")
_CONFIG = config_flags.DEFINE_config_file("config", "configs/eval.py:demo", "Eval config.",
                                          lock_config=True)


def write_results(workdir: str, step: int, results: dict) -> None:
  """CLU scalars/texts under eval/<name>/<key>, and DIR/metrics.json (process 0 writes)."""
  import jax  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  from psvae_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  writer = metrics_lib.create_writer(workdir)
  nums = {f"eval/{k}": float(v) for k, v in results.items() if not isinstance(v, str)}
  texts = {f"eval/{k}": v for k, v in results.items() if isinstance(v, str)}
  writer.write_scalars(step, nums)
  if texts:
    writer.write_texts(step, texts)
  writer.flush()
  if jax.process_index() == 0:
    path = epath.Path(workdir) / "metrics.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update({k: (v if isinstance(v, str) else float(v)) for k, v in results.items()})
    current["eval_step"] = step
    path.write_text(json.dumps(current, indent=2, sort_keys=True))


def build_context(workdir: str, config):
  """The EvalContext of a workdir: reconstruction, generation, feature nets, LPIPS."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from psvae_jax import autoencoders  # pylint: disable=g-import-not-at-top
  from psvae_jax import parallel  # pylint: disable=g-import-not-at-top
  from psvae_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from psvae_jax.evals import evaluators  # pylint: disable=g-import-not-at-top
  from psvae_jax.models.autoencoder import PSVAE  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(-1, 1)
  run_cfg = autoencoders.read_config(workdir)
  generate, ae_dir = None, workdir
  if run_cfg.stage == "dit":
    from psvae_jax import api  # pylint: disable=g-import-not-at-top
    pipe = api.load(workdir, mesh)
    generate = lambda caps, steps, cfg, seed, labels=None: pipe.generate(
        caps if labels is None else None, steps=steps, cfg=cfg, seed=seed, labels=labels)
    ae_dir = run_cfg.autoencoder
  ae = autoencoders.load_autoencoder(ae_dir, mesh)
  sets = {}

  def eval_data(n):
    if n not in sets:
      data_cfg = ae.config.data.copy_and_resolve_references()
      if data_cfg.source == "shapes":  # a generator: the held-out split grows on demand
        data_cfg.num_eval = max(data_cfg.num_eval, n)
      sets[n] = pipeline.build_eval_set(data_cfg, n)
    return sets[n]

  recon_jit = jax.jit(lambda p, x: jax.numpy.clip(ae.model.apply(
      {"params": p}, ae.model.apply({"params": p}, x, method=PSVAE.encode)[0],
      method=PSVAE.decode), -1, 1))
  ctx = evaluators.EvalContext(mesh=mesh, batch_size=config.batch_size, eval_data=eval_data,
                               generate=generate)

  def reconstruct(images):
    out = []
    for i, j in ctx.batches(len(images)):
      x, _ = ctx.put(np.asarray(images[i:j], np.float32))
      out.append(np.asarray(jax.device_get(recon_jit(ae.params, x)))[:j - i])
    return np.concatenate(out)

  ctx.reconstruct = reconstruct
  kinds = {dict(e).get("feature") for e in config.evals.values()}
  if "proxy" in kinds:
    from psvae_jax.evals import proxy  # pylint: disable=g-import-not-at-top
    path = config.proxy_weights or os.path.join(os.path.dirname(os.path.abspath(workdir)),
                                                "fid_proxy.safetensors")
    module, params = proxy.load_proxy(path, ae.image_size)
    ctx.feature_nets["proxy"] = (jax.jit(proxy.feature_fn(module, params)), proxy.FEATURE_DIM)
  if "inception" in kinds:
    from psvae_jax.weights import inception  # pylint: disable=g-import-not-at-top
    if not config.inception_weights:
      raise ValueError("Inception FID needs --config.inception_weights=pt_inception-...pth.")
    module, params = inception.load_inception(config.inception_weights)
    ctx.feature_nets["inception"] = (jax.jit(lambda x: module.apply({"params": params}, x)),
                                     2048)
  if any(dict(e)["type"] == "lpips" for e in config.evals.values()):
    from psvae_jax.weights import lpips  # pylint: disable=g-import-not-at-top
    if config.lpips_vgg:
      ctx.lpips = lpips.load_lpips(config.lpips_vgg, config.lpips_heads)
      ctx.lpips_label = f"vgg={config.lpips_vgg} heads={config.lpips_heads}"
    else:
      ctx.lpips = lpips.random_lpips(jax.random.key(0), ae.image_size)
      ctx.lpips_label = "RANDOM-INIT VGG16 + heads (no weights available): not perceptual"
      logging.warning("lpips: %s", ctx.lpips_label)
  return ctx, run_cfg


def evaluate(workdir: str, config) -> dict:
  from psvae_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from psvae_jax.evals import evaluators  # pylint: disable=g-import-not-at-top
  ctx, run_cfg = build_context(workdir, config)
  evals = dict(config.evals)
  if ctx.generate is None:  # autoencoder workdir: reconstruction evaluators only
    evals = {k: v for k, v in evals.items() if dict(v)["type"] not in ("fid", "adherence")}
  results = evaluators.run_all(evals, ctx)
  step = config.step
  if step < 0:
    step = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   async_save=False).latest_step() or 0
  write_results(workdir, step, results)
  results["eval_step"] = step
  logging.info("stage %s step %d: %s", run_cfg.stage, step, json.dumps(results, indent=1))
  return results


def main(argv):
  del argv
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.initialize("auto")
  results = evaluate(_WORKDIR.value, _CONFIG.value)
  print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)


def feature_net(kind: str, weights: str, image_size: int):
  """(jitted uint8 images -> features, dim) for "proxy" or "inception" with a weights file."""
  import jax  # pylint: disable=g-import-not-at-top
  if kind == "proxy":
    from psvae_jax.evals import proxy  # pylint: disable=g-import-not-at-top
    module, params = proxy.load_proxy(weights, image_size)
    return jax.jit(proxy.feature_fn(module, params)), proxy.FEATURE_DIM
  from psvae_jax.weights import inception  # pylint: disable=g-import-not-at-top
  module, params = inception.load_inception(weights)
  return jax.jit(lambda x: module.apply({"params": params}, x)), 2048


def in_training(config, mesh, eval_data, reconstruct=None, generate=None) -> dict[str, float]:
  """Runs config.evals from a training task's periodic eval; numeric figures only.

  Each evaluator config that needs features names them with `feature` and `weights`
  (a proxy or Inception file); strings (reference set, feature kind) are logged.
  """
  from psvae_jax.evals import evaluators  # pylint: disable=g-import-not-at-top
  ctx = evaluators.EvalContext(mesh=mesh, batch_size=config.eval.batch_size,
                               eval_data=eval_data, reconstruct=reconstruct, generate=generate)
  for e in config.evals.values():
    e = dict(e)
    if e.get("feature") and e["feature"] not in ctx.feature_nets:
      ctx.feature_nets[e["feature"]] = feature_net(e["feature"], e["weights"],
                                                   config.data.image_size)
  evals = {k: v for k, v in config.evals.items()
           if (dict(v)["type"] in ("fid", "adherence")) == (generate is not None)}
  results = evaluators.run_all(evals, ctx)
  logging.info("evaluators: %s", results)
  return {k: float(v) for k, v in results.items() if not isinstance(v, str)}

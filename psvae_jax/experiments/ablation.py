"""The paper's central claim at CPU scale: which latent makes diffusion learn, side by side.

  launch/ablation.sh OUT     (python -m psvae_jax.experiments.ablation --outdir=OUT; ~25-30 min on
                              2 CPU cores; --dit_steps, --variants to change the budget)

PS-VAE's claim is a trade-off: a pixel VAE reconstructs well but its latent is hard to generate
from; a semantic latent (S-VAE) is easy to generate from but weak at pixels; PS-VAE gets both.
On the shapes world (the demo's data), with the demo's tiny architectures, this trains four
autoencoders on the same data with the same autoencoder step budget, then the same DiT (config,
seed, steps) in each latent:

  pixel_vae     the PS-VAE architecture with the semantic loss off (loss.sem = 0), encoder
                trained from scratch at the decoder's learning rate: a plain KL-VAE;
  svae          stage 1 on the project-trained representation encoder (psvae_jax/experiments/
                rep_encoder.py, a Hugging Face Dinov2 directory): semantic + KL, the pixel decoder
                on the detached latent, for the whole budget;
  psvae         stage 1 then stage 2 on that encoder (the method; the demo's step split);
  psvae_random  the same on a random ViT (the demo's default encoder): what the semantics buy.

Per variant (OUT/ablation.json, OUT/ablation.md, OUT/ablation.png, TensorBoard in OUT/tb):
reconstruction PSNR / SSIM / checker adherence on held-out scenes; linear probes of the latent
(per latent token: shape and colour of the object there; per image: its position from the
flattened latent; rep_encoder.probe_features); generation adherence on held-out "test"
compositions (unseen) and training ones (seen) at the default guidance scale and at 1
(experiments/figures.generation_figures); fid_proxy / rfid_proxy (the shapes-trained feature net,
shapes/proxy.py: NOT Inception FID); and adherence vs DiT step on the validation prompts (the
DiT's periodic eval, DIR/eval_history.jsonl): the convergence curve.
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from psvae_jax.experiments import ablation_report
from psvae_jax import cli

VARIANTS = ("pixel_vae", "svae", "psvae", "psvae_random")


def _scaled(config, scale: float, steps: int | None = None):
  if steps is not None:
    config.num_train_steps = steps
  if scale != 1.0:
    config.num_train_steps = max(2, int(round(config.num_train_steps * scale)))
  n = config.num_train_steps
  config.eval_every = config.ckpt_every = n
  config.log_every = max(1, min(config.log_every, n // 2))
  return config


# Stage-2 steps of the psvae variants: every variant trains stage 1's steps (configs/svae.py:tiny)
# + these (700 in all; the demo's stage 2 trains 900: four autoencoders at that budget would not
# fit the ablation's ~30 minutes).
STAGE2_STEPS = 450


def autoencoder_runs(
    variant: str,
    encoder_dir: str,
    scale: float = 1.0,
    stage2_steps: int = STAGE2_STEPS,
    data_dir: str = "",
) -> list[tuple[str, object]]:
  """[(workdir name, config)] that train `variant`'s autoencoder, in order; the last is it.

  Every variant gets the same number of autoencoder steps: stage 1's + `stage2_steps`.
  data_dir: a labelled folder (train/ + test/ class folders) in place of the shapes."""
  from configs import psvae as psvae_config  # pylint: disable=g-import-not-at-top
  from configs import svae as svae_config  # pylint: disable=g-import-not-at-top

  s1, s2 = svae_config.get_config("tiny"), psvae_config.get_config("tiny")
  if data_dir:
    for c in (s1, s2):
      c.data.update(source="folder", path=data_dir, num_train=0, num_eval=0)
  s2.num_train_steps = stage2_steps
  budget = s1.num_train_steps + s2.num_train_steps
  if variant in ("psvae", "psvae_random"):
    c1, c2 = _scaled(s1, scale), _scaled(s2, scale)
    stage1 = f"{variant}_stage1"
    c1.model.encoder.weights = encoder_dir if variant == "psvae" else ""
    c2.init_from = stage1  # a workdir name: `main` makes it OUT/ae/<name>
    return [(stage1, c1), (variant, c2)]
  if variant == "svae":
    c1 = _scaled(s1, scale, budget)
    c1.model.encoder.weights = encoder_dir
    return [("svae", c1)]
  if variant == "pixel_vae":
    c = _scaled(s2, scale, budget)
    c.loss.sem = 0.0  # no semantic target: a KL-VAE of the same architecture
    c.init_from = ""
    c.model.encoder.weights = ""  # random init, trained from scratch ...
    c.optim.lr = s1.optim.lr  # ... at stage 1's (from-scratch) learning rate, encoder included
    c.optim.lr_groups.encoder = s1.optim.lr
    c.optim.warmup_steps = s1.optim.warmup_steps
    return [("pixel_vae", c)]
  raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")


def latent_probe(ae) -> dict:
  """Linear probes of the autoencoder's posterior mean on the 8x8 token grid."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from psvae_jax.experiments import rep_encoder  # pylint: disable=g-import-not-at-top

  def feats(images):
    out = []
    for i in range(0, len(images), 256):
      x = jnp.asarray(images[i : i + 256], jnp.float32) / 127.5 - 1.0
      out.append(np.asarray(ae.encode(x)[0]))
    return np.concatenate(out)

  return rep_encoder.probe_features(feats, pool=False)


class _Shapes:
  """The shapes world: text-conditioned DiTs, judged by the shapes checker (adherence)."""

  name = "shapes"
  curve_keys = ("adherence", "adherence_cfg1")
  columns = None  # ablation_report.markdown_table's default

  def __init__(self, f, out: str):
    from psvae_jax import shapes_plugin  # pylint: disable=g-import-not-at-top
    from psvae_jax.shapes import proxy  # pylint: disable=g-import-not-at-top
    from psvae_jax.shapes import text as shapes_text  # pylint: disable=g-import-not-at-top

    shapes_plugin.register()
    self.f, self.out, self.data_dir, self.info = f, out, "", {}
    self.curve_name = f"Adherence on {f.curve_prompts} validation prompts"
    self.text_dir = shapes_text.build_demo_text_encoder(
        os.path.join(out, "text_encoder"), shapes_text.shapes_vocabulary()
    )
    self.proxy_path = os.path.join(out, "fid_proxy.safetensors")
    if not os.path.exists(self.proxy_path):
      self.info["proxy"] = proxy.train_proxy(self.proxy_path, steps=60, num_images=768)

  def build_encoder(self, enc_dir: str, steps: int) -> None:
    from psvae_jax.experiments import rep_encoder  # pylint: disable=g-import-not-at-top

    rep_encoder.build(enc_dir, steps=steps)

  def cache_spec(self, image_size: int):
    from psvae_jax.data import specs  # pylint: disable=g-import-not-at-top

    return specs.parse_data_spec(f"shapes:num={self.f.cache_images}", image_size)

  def latent_probe(self, ae) -> dict:
    return latent_probe(ae)

  def dit_config(self, every: int):
    from configs import dit as dit_config  # pylint: disable=g-import-not-at-top

    c3 = dit_config.get_config("tiny")
    c3.text_encoder = self.text_dir
    c3.eval.num_images = self.f.curve_prompts
    c3.eval.batch_size = min(c3.eval.batch_size, self.f.curve_prompts)
    return c3

  def curve(self, history: dict) -> dict:
    return {str(s): f for s, f in history.items()}

  def figures(self, dit_dir: str, variant: str) -> dict:
    from psvae_jax import api  # pylint: disable=g-import-not-at-top
    from psvae_jax.experiments import figures  # pylint: disable=g-import-not-at-top

    pipe = api.load(dit_dir)
    gen = figures.generation_figures(
        pipe, os.path.join(self.out, "figures", variant), per_group=self.f.per_group
    )
    r = {k: v for k, v in gen.items() if k.startswith("adherence")}
    r["generation_settings"] = gen["generation_settings"]
    r.update(figures.fid_figures(dit_dir, self.proxy_path))
    return r


CLASS_COLUMNS = [
    ("PSNR", "psnr"),
    ("SSIM", "ssim"),
    ("probe class", "probe_class"),
    ("class acc.", "class_accuracy"),
    ("class acc. cfg1", "class_accuracy_cfg1"),
    ("FID (classifier)", "fid_classifier"),
    ("rFID (classifier)", "rfid_classifier"),
]


class _Classes:
  """A labelled image folder (Fashion-MNIST): class-conditioned DiTs, judged by a classifier
  trained on the folder (psvae_jax/evals/feature_net.py): its accuracy on class-balanced samples
  and FID / rFID on its features."""

  name = "fashion_mnist"
  curve_keys = ("class_accuracy", "class_accuracy_cfg1")
  columns = CLASS_COLUMNS

  def __init__(self, f, out: str):
    from psvae_jax.experiments import demo_classes  # pylint: disable=g-import-not-at-top
    from psvae_jax.experiments import representation  # pylint: disable=g-import-not-at-top

    self.f, self.out, self.info = f, out, {}
    self.curve_name = f"Classifier accuracy of {f.curve_prompts} class-balanced samples"
    self.data_dir = demo_classes.prepare_fashion_mnist(out, f.idx_dir)
    self.spec = f"folder:path={self.data_dir}"
    self.data = representation.read_labelled(self.spec)
    self.classifier = os.path.join(out, "classifier.safetensors")
    self.info["classifier"] = demo_classes.ensure_classifier(
        self.classifier, self.data_dir, representation.IMAGE_SIZE, f.steps_scale
    )

  def build_encoder(self, enc_dir: str, steps: int) -> None:
    from psvae_jax.experiments import representation  # pylint: disable=g-import-not-at-top

    representation.build_for_classes(enc_dir, self.spec, steps=steps)

  def cache_spec(self, image_size: int):
    from psvae_jax.data import specs  # pylint: disable=g-import-not-at-top

    return specs.parse_data_spec(self.spec, image_size)

  def latent_probe(self, ae) -> dict:
    """The class, read linearly from the flattened posterior mean."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from psvae_jax.experiments import representation  # pylint: disable=g-import-not-at-top

    fn = lambda images: ae.encode(jnp.asarray(images, jnp.float32) / 127.5 - 1.0)[0]
    return {"class": representation.class_probe(fn, self.data)}

  def dit_config(self, every: int):
    from configs import dit as dit_config  # pylint: disable=g-import-not-at-top
    import ml_collections  # pylint: disable=g-import-not-at-top

    del every
    c3 = dit_config.get_config("tiny_class")
    c3.eval.num_images = 16  # the grids; the curve is the classifier's
    c3.eval.num_grid = 16
    acc = dict(
        type="class_accuracy",
        weights=self.classifier,
        num_samples=self.f.curve_prompts,
        steps=c3.sample.steps,
        seed=0,
    )
    c3.evals = ml_collections.ConfigDict(
        dict(
            class_accuracy={**acc, "guidance_scale": c3.sample.guidance_scale},
            class_accuracy_cfg1={**acc, "guidance_scale": 1.0},
        )
    )
    return c3

  def curve(self, history: dict) -> dict:
    return {
        str(s): {k: v[f"{k}/accuracy"] for k in self.curve_keys if f"{k}/accuracy" in v}
        for s, v in history.items()
    }

  def figures(self, dit_dir: str, variant: str) -> dict:
    from configs import eval as eval_config  # pylint: disable=g-import-not-at-top
    from psvae_jax.evals import runner  # pylint: disable=g-import-not-at-top

    del variant
    cfg = eval_config.get_config("classes")
    cfg.classifier_weights = self.classifier
    n = self.f.eval_samples
    for name in ("fid", "class_accuracy", "class_accuracy_cfg1"):
      cfg.evals[name].num_samples = n
    cfg.evals.fid.num_reference = min(n, len(self.data["test_labels"]))
    for name in ("rfid", "psnr", "ssim"):
      cfg.evals[name].num_images = len(self.data["test_labels"])
    r = runner.evaluate(dit_dir, cfg)
    out = {
        "fid_classifier": r["fid/fid"],
        "rfid_classifier": r["rfid/rfid"],
        "fid_num_samples": r["fid/num_samples"],
    }
    for k in ("class_accuracy", "class_accuracy_cfg1"):
      out[k] = {
          "mean": r[f"{k}/accuracy"],
          "se": r[f"{k}/accuracy_se"],
          "n": r[f"{k}/num_samples"],
          "guidance_scale": r[f"{k}/guidance_scale"],
      }
    return out


def define_flags() -> None:
  """The CLI's flags (defined when run as a program only: importing must not claim --outdir,
  which the demo's CLI defines too)."""
  flags.DEFINE_string("outdir", "runs/ablation", "Output directory.")
  flags.DEFINE_enum(
      "data",
      "shapes",
      ["shapes", "fashion_mnist"],
      "shapes: text-conditioned, adherence; fashion_mnist: class-conditioned, classifier "
      "accuracy and FID (Debian's dataset-fashion-mnist, --idx_dir).",
  )
  flags.DEFINE_string(
      "idx_dir", "/usr/share/datasets/fashion-mnist", "Fashion-MNIST's *-ubyte.gz files."
  )
  flags.DEFINE_list("variants", list(VARIANTS), f"Which of {VARIANTS} to run.")
  flags.DEFINE_integer("dit_steps", 1000, "DiT training steps per variant.")
  flags.DEFINE_integer("curve_points", 4, "DiT evals per run (the curve's points).")
  flags.DEFINE_integer(
      "curve_prompts", 128, "Validation prompts (fashion_mnist: samples) per curve point."
  )
  flags.DEFINE_float(
      "steps_scale", 1.0, "Multiplies the autoencoder and rep-encoder steps (tests)."
  )
  flags.DEFINE_integer("cache_images", 8192, "Training images in each latent cache (shapes).")
  flags.DEFINE_integer("per_group", 64, "Prompts per group of the final figures (shapes).")
  flags.DEFINE_integer(
      "eval_samples", 500, "Class-balanced samples of the final FID and accuracy (fashion_mnist)."
  )


def main(argv):
  del argv
  f = flags.FLAGS
  cli.quiet_libraries()
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top

  runtime.initialize("off")
  from psvae_jax import frozen_psvae  # pylint: disable=g-import-not-at-top
  from psvae_jax import writers  # pylint: disable=g-import-not-at-top
  from psvae_jax.experiments import stage3  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top

  variants = list(f.variants)
  bad = [v for v in variants if v not in VARIANTS]
  if bad:
    raise app.UsageError(f"--variants: unknown {bad}; choose from {list(VARIANTS)}")
  if f.dit_steps < f.curve_points or f.curve_points < 1:
    raise app.UsageError("--dit_steps must be >= --curve_points >= 1")
  out = os.path.abspath(f.outdir)
  os.makedirs(out, exist_ok=True)
  t0 = time.time()
  seconds = {}
  report = {"settings": {}, "variants": {}, "seconds": seconds}
  world = (_Classes if f.data == "fashion_mnist" else _Shapes)(f, out)

  # The representation encoder that means something (shared by svae and psvae).
  enc_dir = os.path.join(out, "rep_encoder")
  if not os.path.exists(os.path.join(enc_dir, "probe.json")):
    world.build_encoder(enc_dir, steps=max(1, int(round(1200 * f.steps_scale))))
  with open(os.path.join(enc_dir, "probe.json"), encoding="utf-8") as fh:
    report["rep_encoder_probe"] = json.load(fh)
  seconds["rep_encoder"] = time.time() - t0
  report.update(world.info)

  every = f.dit_steps // f.curve_points
  report["settings"] = dict(
      data=world.name,
      dit_steps=f.dit_steps,
      curve_every=every,
      curve_prompts=f.curve_prompts,
      cache_images=f.cache_images,
      per_group=f.per_group,
      eval_samples=f.eval_samples,
      steps_scale=f.steps_scale,
  )
  tb = writers.create_writer(os.path.join(out, "tb"))
  for variant in variants:
    t = time.time()
    r = report["variants"][variant] = {}
    runs = autoencoder_runs(variant, enc_dir, f.steps_scale, data_dir=world.data_dir)
    r["autoencoder_steps"] = sum(c.num_train_steps for _, c in runs)
    for name, c in runs:
      if c.get("init_from"):
        c.init_from = os.path.join(out, "ae", c.init_from)
      m = loop.train_and_evaluate(c, os.path.join(out, "ae", name))
    ae_dir = os.path.join(out, "ae", runs[-1][0])
    for k in ("psnr", "ssim", "recon_adherence", "semantic_cos"):
      r[k] = m.get(k)
    ae = frozen_psvae.load_autoencoder(ae_dir)
    for k, v in world.latent_probe(ae).items():
      r[f"probe_{k}"] = v
    seconds[f"{variant}_autoencoder"] = time.time() - t

    t = time.time()
    c3 = world.dit_config(every)
    c3.num_train_steps = f.dit_steps
    c3.eval_every = c3.ckpt_every = every
    dit_dir = os.path.join(out, "dit", variant)
    cache_dir = os.path.join(out, "latents", variant)
    spec = world.cache_spec(ae.image_size)
    stage3.train_on_latent_cache(c3, ae_dir, spec, cache_dir, dit_dir, ae=ae)
    r["curve"] = world.curve(writers.read_eval_history(dit_dir))
    for s, figs in r["curve"].items():
      tb.write_scalars(
          int(s), {f"{variant}/{k}": v for k, v in figs.items() if k in world.curve_keys}
      )
    seconds[f"{variant}_dit"] = time.time() - t

    t = time.time()
    r.update(world.figures(dit_dir, variant))
    seconds[f"{variant}_figures"] = time.time() - t
    _write(out, report, tb, world)  # after each variant: a stopped run keeps what it measured
    logging.info("ablation: %s done (%.0f s so far)", variant, time.time() - t0)

  seconds["total"] = time.time() - t0
  _write(out, report, tb, world)
  tb.flush()
  print(open(os.path.join(out, "ablation.md"), encoding="utf-8").read())
  took = seconds["total"]
  print(f"ablation: wrote {out}/ablation.json, ablation.md, ablation.png, tb/ ({took:.0f} s)")


def _write(out: str, report: dict, tb, world) -> None:
  with open(os.path.join(out, "ablation.json"), "w", encoding="utf-8") as fh:
    json.dump(report, fh, indent=2, sort_keys=True)
  results = report["variants"]
  with open(os.path.join(out, "ablation.md"), "w", encoding="utf-8") as fh:
    fh.write(
        f"# PS-VAE ablation at CPU scale, {world.name} (mean ± s.e.)\n\n"
        + ablation_report.markdown_table(results, world.columns, world.curve_keys, world.curve_name)
    )
  curves = {k: {int(s): f for s, f in r.get("curve", {}).items()} for k, r in results.items()}
  png = ablation_report.plot_curves(curves, world.curve_keys, os.path.join(out, "ablation.png"))
  tb.write_images(0, {"ablation/curves": png[None]})


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.flags_parser("ablation"))

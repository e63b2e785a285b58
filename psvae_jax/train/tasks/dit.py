"""Stage 3: a DiT in the frozen PS-VAE's normalised latent, conditioned on text or class.

Latents come from a latent cache (data.source="latents": batches carry "latent") or are
encoded on the fly by the frozen autoencoder (batches carry "image"). The autoencoder,
its latent statistics and the text encoder are constants of the step (frozen, sharded,
not checkpointed); only the DiT trains. Condition dropout (p_uncond) swaps in the DiT's
learned null condition.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from psvae_jax import autoencoders
from psvae_jax import generation
from psvae_jax import latent_stats
from psvae_jax.data import pipeline
from psvae_jax.evals import runner as eval_runner
from psvae_jax.models import dit as dit_lib
from psvae_jax.models.autoencoder import PSVAE, reparameterize


def build_dit(config) -> dit_lib.DiT:
  """The DiT of config.model (its output channels follow the input latent's)."""
  m = config.model
  kw = dit_lib.dit_config(m.size)
  if m.get("depth", 0):  # a shallower (or deeper) stack at the size's width (tests, ablations)
    kw["depth"] = m.depth
  return dit_lib.DiT(**kw, patch_size=m.patch_size, cond_type=m.cond_type,
                     num_classes=m.num_classes, dtype=jnp.dtype(config.dtype), remat=m.remat,
                     remat_policy=m.get("remat_policy", "full"),
                     scan_blocks=m.get("scan_blocks", False), attention_impl=m.attention_impl or None)


def text_param_dtype(config) -> jnp.dtype:
  """Storage dtype of the text encoder's params: config.text_encoder_dtype while frozen (bf16
  halves T5-XXL's 19 GB), float32 when it trains (train_text_encoder)."""
  if config.get("train_text_encoder"):
    return jnp.dtype(jnp.float32)
  return jnp.dtype(config.get("text_encoder_dtype", "float32"))


def load_text_encoder(config):
  """(module, params, tokenizer) of config.text_encoder (CLIP text or T5), or Nones for class."""
  if config.model.cond_type != "text":
    return None, None, None
  if not config.text_encoder:
    raise ValueError("A text-conditioned DiT needs --config.text_encoder=DIR (a Hugging Face CLIP "
                     "text or T5 encoder directory with its tokenizer).")
  from psvae_jax.weights import clip  # pylint: disable=g-import-not-at-top
  cfg = clip.read_json(config.text_encoder)
  if cfg.get("model_type", "").startswith("t5"):
    from psvae_jax.weights import t5  # pylint: disable=g-import-not-at-top
    module, params = t5.load_t5_encoder(config.text_encoder, dtype=jnp.dtype(config.dtype),
                                        param_dtype=text_param_dtype(config))
  else:
    module, params = clip.load_clip_text(config.text_encoder, dtype=jnp.dtype(config.dtype),
                                         param_dtype=text_param_dtype(config))
  return module, params, clip.load_tokenizer(config.text_encoder)


def _shapes_captions(captions) -> bool:
  """True when every caption is a synthetic-shapes caption the checker can score."""
  from psvae_jax.data import shapes  # pylint: disable=g-import-not-at-top
  try:
    return bool(captions) and all(shapes.parse_caption(str(c)) for c in captions)
  except ValueError:
    return False


def latent_normalization(config, ae: autoencoders.Autoencoder) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (mean, std) stage 3 normalises with: the statistics of what it trains on.

  Encoding on the fly trains on sampled z (diffusion.latent_sample=True) or on mu; a latent
  cache always yields sampled z. Warns when that latent, normalised, has a std outside
  latent_stats.NORMALIZED_STD_RANGE (judged from the cache's own statistics on a cache).
  """
  sample = bool(config.diffusion.latent_sample)
  on_cache = config.data.source == "latents"
  if on_cache and not sample:
    raise ValueError("--config.diffusion.latent_sample=False trains on mu, but a latent cache "
                     "(data.source=latents) yields sampled z = mu + sigma * eps: keep "
                     "latent_sample=True or encode images on the fly.")
  if ae.stats is None:
    raise ValueError(f"{config.autoencoder} has no {latent_stats.FILE}: finish its stage 2 "
                     "first.")
  mean, std = ae.normalization(sample)
  data, where = ae.stats, f"{config.autoencoder}/{latent_stats.FILE}"
  cached = latent_stats.load(config.data.path) if on_cache else None
  if cached is not None and not cached.legacy:
    data, where = cached, f"{config.data.path}/{latent_stats.FILE}"
  if not (data.legacy and sample):  # (select has warned: z's statistics are unknown)
    latent_stats.check_normalized(*data.select(sample), mean, std,
                                  f"{'sampled z' if sample else 'mu'} as {where} describes it")
  used = "mu" if not sample or ae.stats.legacy else "z"
  logging.info("Stage 3 trains on %s, normalised with the '%s' statistics of %s:\n%s",
               "sampled z" if sample else "mu", used, config.autoencoder,
               latent_stats.describe(ae.stats))
  return mean, std


class DiTTask:
  """Stage 3 (config.stage == "dit")."""

  def __init__(self, config, mesh):
    self.config = config
    self.mesh = mesh
    if not config.autoencoder:
      raise ValueError("Stage 3 needs --config.autoencoder=DIR (a trained PS-VAE workdir).")
    self.ae = autoencoders.load_autoencoder(config.autoencoder, mesh)
    self.latent_mean, self.latent_std = latent_normalization(config, self.ae)
    self.text, text_params, tokenizer = load_text_encoder(config)
    self._text_params = text_params
    generation.resolve_flow_shift(config, self.ae.latent_shape)  # before config.json is written
    self.model = build_dit(config)
    self.gen = generation.Generator(config, self.model, self.text, tokenizer, self.ae, mesh)
    self.objective = self.gen.objective
    self.train_text = config.model.cond_type == "text" and config.train_text_encoder
    self.param_groups = {}

  def init(self, rng):
    """params = {"dit": ...} (+ "text" when the text encoder trains jointly)."""
    h, w, c = self.ae.latent_shape
    x = jnp.zeros((1, h, w, c), jnp.float32)
    t = jnp.zeros((1,), jnp.float32)
    if self.config.model.cond_type == "class":
      return {"dit": self.model.init(rng, x, t, labels=jnp.zeros((1,), jnp.int32))["params"]}, {}
    length = self.config.data.max_length
    ids = jnp.zeros((1, length), jnp.int32)
    hid, pooled = jax.eval_shape(self.text.apply, {"params": self._text_params}, ids, ids)
    params = {"dit": self.model.init(rng, x, t, context=jnp.zeros(hid.shape, jnp.float32),
                                     context_mask=jnp.ones(hid.shape[:2], bool),
                                     pooled=jnp.zeros(pooled.shape, jnp.float32))["params"]}
    if self.train_text:  # placeholder of the right structure; warm_start loads the weights
      params["text"] = jax.tree.map(jnp.zeros_like, self._text_params)
    return params, {}

  def make_frozen(self, params):
    del params
    return {}

  def constants(self):
    consts = {"ae": self.ae.params,
              "latent_mean": jnp.asarray(self.latent_mean, jnp.float32),
              "latent_std": jnp.asarray(self.latent_std, jnp.float32)}
    if self._text_params is not None and not self.train_text:
      consts["text"] = self._text_params
    return consts

  def warm_start(self, params):
    """A jointly trained text encoder starts from the text_encoder directory's weights."""
    if not self.train_text:
      return None
    from psvae_jax.models import builders  # pylint: disable=g-import-not-at-top
    return {**params, "text": builders.place_like(self._text_params, params["text"])}

  def _latents(self, consts, batch, rng):
    if "latent" in batch:
      return self.gen.normalize(consts, batch["latent"].astype(jnp.float32))
    mu, logvar = self.ae.model.apply({"params": consts["ae"]}, batch["image"], method=PSVAE.encode)
    z = reparameterize(rng, mu, logvar) if self.config.diffusion.latent_sample else mu
    return jax.lax.stop_gradient(self.gen.normalize(consts, z))

  def loss(self, params, frozen, consts, batch, rng):
    del frozen
    r_enc, r_t, r_noise, r_drop = jax.random.split(rng, 4)
    z0 = self._latents(consts, batch, r_enc)
    b = z0.shape[0]
    cond = self.gen.condition(params, consts, batch)
    drop = jax.random.uniform(r_drop, (b,)) < self.config.diffusion.p_uncond
    t = self.objective.sample_t(r_t, (b,))
    noise = jax.random.normal(r_noise, z0.shape, jnp.float32)
    z_t = self.objective.sample_x_t(z0, t, noise)
    pred = self.model.apply({"params": params["dit"]}, z_t, self.objective.model_time(t), **cond, drop=drop)
    loss = jnp.mean(self.objective.loss(pred, self.objective.target(z0, noise, t)))
    return loss, {"loss": loss, "latent_std": jnp.std(z0)}

  # ---- evaluation: sample grids (and prompt adherence on the shapes) -----------------------
  def eval_prompts(self):
    if not hasattr(self, "_eval"):
      self._eval = pipeline.build_eval_set(self.config.data, self.config.eval.num_images)
    return self._eval

  def generate(self, params, consts, captions, labels, cfg):
    s = self.config.sample
    return self.gen.generate(params, consts, prompts=None if labels is not None else captions,
                             labels=labels, steps=s.steps, cfg=cfg, eta=s.eta,
                             seed=self.config.seed + 12345)

  def evaluate(self, state, consts, mesh, step):
    del step
    from psvae_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
    data = self.eval_prompts()
    captions = list(data["caption"])
    labels = data.get("label") if self.config.model.cond_type == "class" else None
    scalars, images = {}, {}
    scales = tuple(self.config.eval.get("guidance_scales", ())) or (self.config.sample.cfg, 1.0)
    for cfg in sorted(set(scales)):
      out = self.generate(state.ema_params, consts, captions, labels, cfg)
      suffix = "" if cfg == self.config.sample.cfg else f"_cfg{cfg:g}"
      if _shapes_captions(captions):  # shapes data, directly or through a latent cache
        from psvae_jax.data import shapes  # pylint: disable=g-import-not-at-top
        scalars["adherence" + suffix] = float(np.mean(shapes.score_batch(out, captions)))
      k = min(self.config.eval.num_grid, len(out))
      images["samples" + suffix] = metrics_lib.grid(out[:k])
    logging.info("sample settings: steps=%d cfg=%g eta=%g guidance_interval=%s n=%d",
                 self.config.sample.steps, self.config.sample.cfg, self.config.sample.eta,
                 tuple(self.config.sample.get("guidance_interval", (0.0, 1.0))), len(captions))
    if self.config.get("evals"):  # configured evaluators (fid with a reference .npz, ...)
      gen = lambda caps, steps, cfg, seed, labels=None: self.gen.generate(
          state.ema_params, consts, prompts=caps if labels is None else None, labels=labels,
          steps=steps, cfg=cfg, seed=seed)
      scalars.update(eval_runner.in_training(
          self.config, mesh, lambda n: pipeline.build_eval_set(self.config.data, n),
          generate=gen))
    return scalars, images

  def finish(self, state, consts, mesh, workdir, train_iter):
    del state, consts, mesh, workdir, train_iter

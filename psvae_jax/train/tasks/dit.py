"""Stage 3: a DiT in the frozen PS-VAE's normalised latent, conditioned on text or class.

Latents come from a latent cache (data.source="latents": batches carry "latent") or are
encoded on the fly by the frozen autoencoder (batches carry "image"). The autoencoder,
its latent statistics and the text encoder are constants of the step (frozen, sharded,
not checkpointed; the task receives the autoencoder and text encoder, built by get_task
through psvae_jax.builders); only the DiT trains. Condition dropout (p_uncond) swaps in the DiT's
learned null condition.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging

from configs import common
from psvae_jax import autoencoders
from psvae_jax import builders
from psvae_jax import generation
from psvae_jax import writers
from psvae_jax.data import pipeline
from psvae_jax.evals import checkers as eval_checkers
from psvae_jax.evals import runner as eval_runner
from psvae_jax.models.autoencoder import reparameterize


class DiTTask:
  """Stage 3 (config.stage == "dit")."""

  param_groups: dict[str, str]
  grid_notes: dict[str, str]

  def __init__(self, config, mesh, ae: autoencoders.Autoencoder, text=(None, None, None)):
    """ae: the frozen PS-VAE (autoencoders.load_autoencoder); text: (module, params, tokenizer)
    of the text encoder (builders.load_text_encoder; Nones for a class-conditional config)."""
    self.config = config
    self.mesh = mesh
    self.ae = ae
    self.grid_notes = {}
    self.latent_mean, self.latent_std = autoencoders.latent_normalization(config, ae)
    self.text, self._text_params, tokenizer = text
    generation.resolve_flow_shift(config, ae.latent_shape)  # before config.json is written
    self.model = builders.build_dit(config)
    self.gen = generation.Generator(config, self.model, self.text, tokenizer, ae, mesh)
    self.objective = self.gen.objective
    self.train_text = builders.trains_text_encoder(config)
    self.param_groups = {}

  def init(self, rng):
    """params = {"dit": ...} (+ "text" when the text encoder trains jointly)."""
    return (
        builders.init_dit_params(
            self.config, self.model, rng, self.ae.latent_shape, self.text, self._text_params
        ),
        {},
    )

  def make_frozen(self, params):
    del params
    return {}

  def constants(self):
    return builders.dit_constants(
        self.config, self.ae.params, self.latent_mean, self.latent_std, self._text_params
    )

  def warm_start(self, params):
    """A jointly trained text encoder starts from the text_encoder directory's weights."""
    if not self.train_text:
      return None
    return {**params, "text": builders.place_like(self._text_params, params["text"])}

  def _latents(self, consts, batch, rng):
    if "latent" in batch:
      return self.gen.normalize(consts, batch["latent"].astype(jnp.float32))
    mu, logvar = self.ae.encode_with(consts["ae"], batch["image"])
    z = reparameterize(rng, mu, logvar) if self.config.diffusion.latent_sample else mu
    return jax.lax.stop_gradient(self.gen.normalize(consts, z))

  def loss(self, params, frozen, consts, batch, rng, step=0):
    del step  # no schedule inside the DiT's loss
    del frozen
    r_enc, r_t, r_noise, r_drop = jax.random.split(rng, 4)
    z0 = self._latents(consts, batch, r_enc)
    b = z0.shape[0]
    cond = self.gen.condition(params, consts, batch)
    drop = jax.random.uniform(r_drop, (b,)) < self.config.diffusion.p_uncond
    t = self.objective.sample_t(r_t, (b,))
    noise = jax.random.normal(r_noise, z0.shape, jnp.float32)
    z_t = self.objective.sample_x_t(z0, t, noise)
    pred = self.model.apply(
        {"params": params["dit"]}, z_t, self.objective.model_time(t), **cond, drop=drop
    )
    loss = jnp.mean(self.objective.loss(pred, self.objective.target(z0, noise, t)))
    return loss, {"loss": loss, "latent_std": jnp.std(z0)}

  # ---- evaluation: sample grids (and prompt adherence where a checker reads the captions) ---
  def eval_prompts(self):
    if not hasattr(self, "_eval"):
      self._eval = pipeline.build_eval_set(self.config.data, self.config.eval.num_images)
    return self._eval

  def generate(self, params, consts, captions, labels, guidance_scale):
    s = self.config.sample
    return self.gen.generate(
        params,
        consts,
        prompts=None if labels is not None else captions,
        labels=labels,
        steps=s.steps,
        guidance_scale=guidance_scale,
        eta=s.eta,
        seed=self.config.seed + 12345,
    )

  def evaluate(self, state, consts, mesh, step):
    del step
    data = self.eval_prompts()
    captions = list(data["caption"])
    labels = data.get("label") if self.config.model.cond_type == "class" else None
    scalars, images = {}, {}
    s = self.config.sample
    scales = tuple(self.config.eval.get("guidance_scales", ())) or (s.guidance_scale, 1.0)
    checker = eval_checkers.for_captions(captions)  # a registered one that reads these captions
    for scale in sorted(set(scales)):
      out = self.generate(state.ema_params, consts, captions, labels, scale)
      # Metric names keep their "_cfg<scale>" suffix (e.g. adherence_cfg1): report keys.
      suffix = "" if scale == s.guidance_scale else f"_cfg{scale:g}"
      if checker is not None:  # e.g. shapes data, directly or through a latent cache
        scalars["adherence" + suffix] = eval_checkers.adherence(out, captions, checker)
      k = min(self.config.eval.num_grid, len(out))
      images["samples" + suffix] = writers.grid(out[:k])
      conds = [f"label {int(x)}" for x in labels[:k]] if labels is not None else captions[:k]
      self.grid_notes["samples" + suffix] = "\n".join(
          [
              f"steps={s.steps} guidance_scale={scale:g} eta={s.eta:g} "
              f"guidance_interval={tuple(s.get('guidance_interval', (0.0, 1.0)))} "
              f"seed={self.config.seed + 12345}; tiles row-major:"
          ]
          + [f"{i}: {c}" for i, c in enumerate(conds)]
      )
    logging.info(
        "sample settings: steps=%d guidance_scale=%g eta=%g guidance_interval=%s n=%d",
        s.steps,
        s.guidance_scale,
        s.eta,
        tuple(s.get("guidance_interval", common.SAMPLE.guidance_interval)),
        len(captions),
    )
    if self.config.get("evals"):  # configured evaluators (fid with a reference .npz, ...)
      gen = lambda caps, steps, guidance_scale, seed, labels=None: self.gen.generate(
          state.ema_params,
          consts,
          prompts=caps if labels is None else None,
          labels=labels,
          steps=steps,
          guidance_scale=guidance_scale,
          seed=seed,
      )
      scalars.update(
          eval_runner.in_training(
              self.config,
              mesh,
              lambda n: pipeline.build_eval_set(self.config.data, n),
              generate=gen,
          )
      )
    return scalars, images

  def finish(self, state, consts, mesh, workdir, train_iter):
    del state, consts, mesh, workdir, train_iter

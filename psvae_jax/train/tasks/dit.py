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
import numpy as np
from absl import logging

from flax import traverse_util

from configs import common
from psvae_jax import checkpoint
from psvae_jax import frozen_psvae
from psvae_jax import builders
from psvae_jax import generation
from psvae_jax import parallel
from psvae_jax import paths
from psvae_jax import pixels
from psvae_jax import workdir as workdir_lib
from psvae_jax import writers
from psvae_jax.data import latents
from psvae_jax.data import pipeline
from psvae_jax.diffusion import settings
from psvae_jax.evals import checkers as eval_checkers
from psvae_jax.evals import runner as eval_runner
from psvae_jax.models.autoencoder import reparameterize


def condition_drops(diff_cfg, rng, b: int, source: bool) -> dict[str, jax.Array]:
  """The condition-dropout flags of a batch: {"drop"} (the text / class condition, with
  probability p_uncond), and for source-conditioned models also {"drop_source"}, drawn from one
  uniform u per example so that P(text dropped) = p_uncond, P(source dropped) = p_drop_source and
  P(both) = p_drop_both exactly: text where u < p_uncond, source where p_uncond − p_drop_both
  <= u < p_uncond − p_drop_both + p_drop_source."""
  p_text = float(diff_cfg.p_uncond)
  u = jax.random.uniform(rng, (b,))
  out = {"drop": u < p_text}
  if source:
    p_src, p_both = float(diff_cfg.p_drop_source), float(diff_cfg.p_drop_both)
    lo = p_text - p_both
    out["drop_source"] = (u >= lo) & (u < lo + p_src)
  return out


def check_drops(diff_cfg) -> None:
  """ValueError naming the flag when the three dropout probabilities cannot hold together."""
  p_text = float(diff_cfg.p_uncond)
  p_src = float(diff_cfg.get("p_drop_source", 0.0))
  p_both = float(diff_cfg.get("p_drop_both", 0.0))
  if not (0 <= p_both <= min(p_text, p_src) and p_text + p_src - p_both <= 1):
    raise ValueError(
        f"--config.diffusion.p_drop_both={p_both} must be in [0, min(p_uncond={p_text}, "
        f"p_drop_source={p_src})] with p_uncond + p_drop_source - p_drop_both <= 1."
    )


_EMBEDDINGS = ("token_embedding/embedding", "embed_tokens/embedding", "shared/embedding")


def vocabulary_map(new_tokenizer, old_tokenizer) -> dict[int, int]:
  """{new token id: old token id} for the tokens both tokenizers know (by their strings)."""
  old = old_tokenizer.get_vocab()
  return {i: old[t] for t, i in new_tokenizer.get_vocab().items() if t in old}


def start_from(params, old, patch_size: int, vocab: dict[int, int] | None = None):
  """This run's initialised `params` <- `old`, another run's (host arrays, same paths):

  * a leaf of the same path and shape: old's;
  * `dit/patch_embed/kernel` with a source latent's channels added (instruction editing, its input
    (p, p, C + C_s) per token): old's rows for the latent's C channels, zeros for the source's, so
    the model starts as old did (InstructPix2Pix's start: new inputs zero);
  * a token embedding of another vocabulary: old's rows for the tokens both know (`vocab`: new id
    -> old id, `vocabulary_map`), the others as initialised;
  * a leaf old does not have: as initialised.
  Any other mismatch is a ValueError listing the paths. Returns host arrays."""
  new_flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  old_flat = traverse_util.flatten_dict(jax.device_get(old), sep="/")
  out, bad, fresh = {}, [], []
  for path, x in new_flat.items():
    x = np.asarray(x)
    if path not in old_flat:
      out[path] = x
      fresh.append(path)
      continue
    o = np.asarray(old_flat[path], x.dtype)
    if o.shape == x.shape:
      out[path] = o
    elif path.endswith("patch_embed/kernel") and o.shape[1:] == x.shape[1:]:
      c_old, c_new = o.shape[0] // patch_size**2, x.shape[0] // patch_size**2
      k = np.zeros((patch_size, patch_size, c_new, x.shape[1]), x.dtype)
      k[:, :, :c_old] = o.reshape(patch_size, patch_size, c_old, -1)
      out[path] = k.reshape(x.shape)
    elif path.endswith(_EMBEDDINGS) and vocab is not None and o.shape[1:] == x.shape[1:]:
      e = x.copy()
      for new_id, old_id in vocab.items():
        if new_id < e.shape[0] and old_id < o.shape[0]:
          e[new_id] = o[old_id]
      out[path] = e
    else:
      bad.append(f"{path} {o.shape} -> {x.shape}")
  if bad:
    raise ValueError(f"--config.init_from: parameters of other shapes: {'; '.join(bad)}")
  if fresh:
    logging.info("init_from: %d parameters not in the source run, as initialised", len(fresh))
  return traverse_util.unflatten_dict(out, sep="/")


class DiTTask:
  """Stage 3 (config.stage == "dit")."""

  param_groups: dict[str, str]
  grid_notes: dict[str, str]

  def __init__(self, config, mesh, ae: frozen_psvae.Autoencoder, text=(None, None, None)):
    """ae: the frozen PS-VAE (frozen_psvae.load_autoencoder); text: (module, params, tokenizer)
    of the text encoder (builders.load_text_encoder; Nones for a class-conditional config)."""
    self.config = config
    self.mesh = mesh
    self.ae = ae
    self.grid_notes = {}
    self.latent_mean, self.latent_std = frozen_psvae.latent_normalization(config, ae)
    self.text, self._text_params, tokenizer = text
    settings.resolve_flow_shift(config, ae.latent_shape)  # before config.json is written
    self.model = builders.build_dit(config)
    self.fusion = builders.is_fusion(config)
    self.gen = generation.Generator(config, self.model, self.text, tokenizer, ae, mesh)
    self.objective = self.gen.objective
    self.train_text = builders.trains_text_encoder(config)
    self.param_groups = {}
    if common.edits_by_instruction(config):
      check_drops(config.diffusion)
      if config.data.source == "latents" and not latents.read_meta(config.data.path).get("paired"):
        raise ValueError(
            f"--config.model.source_condition needs pairs, but the latent cache "
            f"{config.data.path} holds no source latents: write it from a paired source "
            "(e.g. --data=shapes_instruct:num=N, or a folder whose captions.jsonl names sources)."
        )

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
    """`init_from` (a stage-3 workdir, e.g. the text-to-image model an instruction model starts
    from): its EMA weights, mapped by `start_from`. Else a jointly trained text encoder starts
    from the text_encoder directory's weights, and a fusion generator's Qwen2 blocks from
    generator.weights' (the rest of it as initialised)."""
    if self.config.get("init_from"):
      return self._from_stage3_run(params)
    if self.fusion:
      dit = dict(params["dit"])
      dit["backbone"] = builders.load_fusion_backbone(self.config, dit["backbone"])
      return {**params, "dit": dit}
    if not self.train_text:
      return None
    return {**params, "text": builders.place_like(self._text_params, params["text"])}

  def _from_stage3_run(self, params):
    src = self.config.init_from
    old_cfg = workdir_lib.read_config(src)
    paths.relocate(old_cfg, src)  # a moved folder: its text encoder recorded relative to it
    if old_cfg.stage != "dit" or builders.generator_kind(old_cfg) != builders.generator_kind(
        self.config
    ):
      raise ValueError(
          f"--config.init_from={src} holds a {old_cfg.stage!r} "
          f"({builders.generator_kind(old_cfg) if old_cfg.stage == 'dit' else ''}) run; a "
          f"stage-3 run of the same generator kind is needed"
      )
    text, text_params, old_tok = builders.load_text_encoder(old_cfg)
    model = builders.build_dit(old_cfg)
    abstract = builders.dit_param_template(old_cfg, model, self.ae.latent_shape, text, text_params)
    shardings = parallel.param_shardings(abstract, self.mesh, min_size=old_cfg.shard_min_size)
    old = checkpoint.restore_params(src, parallel.with_shardings(abstract, shardings))
    vocab = None
    if old_tok is not None and self.gen.tokenizer is not None:
      vocab = vocabulary_map(self.gen.tokenizer, old_tok)
    logging.info("Starting from stage-3 run %s (its EMA weights)", src)
    host = start_from(params, old, self.config.model.patch_size, vocab)
    return builders.place_like(host, params)

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
    cond.update(condition_drops(self.config.diffusion, r_drop, b, "source" in cond))
    t = self.objective.sample_t(r_t, (b,))
    noise = jax.random.normal(r_noise, z0.shape, jnp.float32)
    z_t = self.objective.sample_x_t(z0, t, noise)
    pred = self.model.apply({"params": params["dit"]}, z_t, self.objective.model_time(t), **cond)
    loss = jnp.mean(self.objective.loss(pred, self.objective.target(z0, noise, t)))
    return loss, {"loss": loss, "latent_std": jnp.std(z0)}

  # ---- evaluation: sample grids (and prompt adherence where a checker reads the captions) ---
  def eval_prompts(self):
    if not hasattr(self, "_eval"):
      self._eval = pipeline.build_eval_set(self.config.data, self.config.eval.num_images)
    return self._eval

  def sample_settings(self, **overrides) -> settings.SampleSettings:
    """The run's own sampling settings (its config's `sample`) with the eval seed."""
    return self.gen.sample_settings(seed=self._eval_seed, **overrides)

  def generate(self, params, consts, captions, labels, guidance_scale):
    return self.gen.generate(
        params,
        consts,
        self.sample_settings(guidance_scale=guidance_scale),
        prompts=None if labels is not None else captions,
        labels=labels,
    )

  def _eval_scales(self):
    """(guidance scale, metric-name suffix) per evaluated scale. Metric names keep their
    "_cfg<scale>" suffix (e.g. adherence_cfg1: report keys); the run's own scale has none."""
    own = self.config.sample.guidance_scale
    scales = tuple(self.config.eval.get("guidance_scales", ())) or (own, 1.0)
    return [(x, "" if x == own else f"_cfg{x:g}") for x in sorted(set(scales))]

  @property
  def _eval_seed(self) -> int:
    """The sampler seed of the periodic samples and edits (fixed per run: grids comparable)."""
    return self.config.seed + 12345

  def _note(self, name, sampler_settings, conds):
    """The text written beside grid `name`: the sampler settings, then one line per tile."""
    steps = self.sample_settings().steps
    head = f"steps={steps} {sampler_settings} seed={self._eval_seed}; tiles row-major:"
    self.grid_notes[name] = "\n".join([head] + [f"{i}: {c}" for i, c in enumerate(conds)])

  def evaluate(self, state, consts, mesh, step):
    del step
    if common.edits_by_instruction(self.config):
      return self._evaluate_edits(state, consts)
    data = self.eval_prompts()
    captions = list(data["caption"])
    labels = data.get("label") if self.config.model.cond_type == "class" else None
    scalars, images = {}, {}
    s = self.sample_settings()
    checker = eval_checkers.for_captions(captions)  # a registered one that reads these captions
    for scale, suffix in self._eval_scales():
      out = self.generate(state.ema_params, consts, captions, labels, scale)
      if checker is not None:  # e.g. shapes data, directly or through a latent cache
        scalars["adherence" + suffix] = eval_checkers.adherence(out, captions, checker)
      k = min(self.config.eval.num_grid, len(out))
      images["samples" + suffix] = writers.grid(out[:k])
      conds = [f"label {int(x)}" for x in labels[:k]] if labels is not None else captions[:k]
      self._note(
          "samples" + suffix,
          s.replace(guidance_scale=scale).describe("guidance_scale", "eta", "guidance_interval"),
          conds,
      )
    logging.info(
        "sample settings: %s n=%d",
        s.describe("steps", "guidance_scale", "eta", "guidance_interval"),
        len(captions),
    )
    if self.config.get("evals"):  # configured evaluators (fid with a reference .npz, ...)
      gen = lambda caps, steps, guidance_scale, seed, labels=None: self.gen.generate(
          state.ema_params,
          consts,
          self.gen.sample_settings(steps=steps, guidance_scale=guidance_scale, seed=seed),
          prompts=caps if labels is None else None,
          labels=labels,
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

  def _evaluate_edits(self, state, consts):
    """Instruction editing on the eval pairs: "edit_adherence" (the checker on the target
    captions, where a checker reads them: pairs whose target is empty are left out) per guidance
    scale, and grids of (source, edit) tile pairs."""
    data = self.eval_prompts()
    s = self.sample_settings()
    targets = list(data.get("target_caption", [""] * len(data["caption"])))
    scored = [i for i, c in enumerate(targets) if c]
    checker = eval_checkers.for_captions([targets[i] for i in scored])
    scalars, images = {}, {}
    for scale, suffix in self._eval_scales():
      out = self.gen.instruct(
          state.ema_params,
          consts,
          data["source_image"],
          list(data["caption"]),
          s.replace(guidance_scale=scale),
      )
      if checker is not None and scored:
        scalars["edit_adherence" + suffix] = eval_checkers.adherence(
            out[scored], [targets[i] for i in scored], checker
        )
      k = max(1, min(self.config.eval.num_grid, len(out)) // 2)
      src = pixels.to_uint8(np.asarray(data["source_image"][:k]))
      images["edits" + suffix] = writers.grid(
          np.stack([src, out[:k]], 1).reshape(-1, *src.shape[1:])
      )
      self._note(
          "edits" + suffix,
          s.replace(guidance_scale=scale).describe("guidance_scale", "image_guidance_scale", "eta")
          + " (tile pairs: source, edit)",
          data["caption"][:k],
      )
    return scalars, images

  def finish(self, state, consts, mesh, workdir, train_iter):
    del state, consts, mesh, workdir, train_iter

"""Prompts -> images: the conditioning, the one-jit scan sampler (DDIM / Euler) and decoding.

Used by stage 3's periodic samples, `psvae_jax.api.Pipeline` and `python -m psvae_jax.sample`.
The sampler compiles once per (batch size, resolution): the sampling settings
(`settings.SampleSettings`: steps up to `MAX_STEPS`, guidance, shift, interval, eta, seed,
resampling), the start index (SDEdit strength) and the prompts are traced values. Every method
takes one resolved `SampleSettings` (`Generator.sample_settings(**overrides)`: unset = the
model's own).

Two timestep shifts: the training shift `diffusion.flow_shift` (FlowObjective.sample_t; with
`diffusion.flow_shift_base_dim` > 0 resolved from the latent's size by `settings.resolve_flow_shift`
at stage-3 start) and the sampling shift `sample.shift` of the Euler grid and the SDEdit
start time (`SampleSettings.resolve`: a workdir whose config has none samples with its training
shift, as before the two were separate).
"""

from __future__ import annotations

import functools
from typing import Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from psvae_jax import frozen_psvae
from psvae_jax import parallel
from psvae_jax import pixels
from psvae_jax import runtime
from psvae_jax.diffusion import objectives
from psvae_jax.diffusion import samplers
from psvae_jax.diffusion import settings
from psvae_jax.models import fusion
from psvae_jax.weights import clip

MAX_STEPS = settings.MAX_STEPS  # scan length; any steps <= MAX_STEPS reuse the compile
SampleSettings = settings.SampleSettings


def initial_noise(seed: int, indices: np.ndarray, shape: tuple[int, ...]) -> jax.Array:
  """Per-image noise from fold_in(key(seed), index): an image does not depend on batch size."""
  key = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape))(
      jnp.asarray(indices, jnp.int32)
  )


class Generator:
  """Conditioning + sampling + decoding for one trained stage-3 model.

  Attributes:
    dit: the DiT module, or the fusion generator (models/fusion.py: it reads the prompt's tokens
      itself); text: the frozen text encoder module (or None for class and fusion models);
    ae: the frozen autoencoder (psvae_jax.frozen_psvae.Autoencoder); objective: eps or flow.
  """

  def __init__(self, config, dit, text_module, tokenizer, ae, mesh):
    self.config, self.dit, self.text, self.tokenizer, self.ae = (
        config,
        dit,
        text_module,
        tokenizer,
        ae,
    )
    self.mesh = mesh
    self.objective = objectives.make(config.diffusion)
    self.latent_shape = ae.latent_shape  # (h, w, C)

  # ---- conditioning -----------------------------------------------------------------------
  def tokenize(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    ids, mask = clip.tokenize(self.tokenizer, list(prompts), self.config.data.max_length)
    return {"input_ids": ids, "attention_mask": mask}

  def prompt_warnings(self, prompts: Sequence[str]) -> list[str]:
    """Unknown words, truncation and empty prompts (`clip.prompt_warnings`); also logged (INFO:
    the callers decide how to show them: the sample CLI prints them, the API keeps them)."""
    warnings = clip.prompt_warnings(self.tokenizer, list(prompts), self.config.data.max_length)
    for w in warnings:
      logging.info("prompt warning: %s", w)
    return warnings

  def condition(self, params, consts, batch) -> dict[str, jax.Array]:
    """DiT keyword arguments for a batch (token ids or labels), without the drop flags.

    The text encoder's weights are params["text"] when it trains jointly, else consts["text"]
    (frozen: no gradient flows into it).
    """
    if common.edits_by_instruction(self.config):
      return {**self._text_or_class(params, consts, batch), "source": self.source(consts, batch)}
    return self._text_or_class(params, consts, batch)

  def source(self, consts, batch) -> jax.Array:
    """An instruction-editing batch's source latent, normalised (B, h, w, C): "source" (already
    normalised: sampling), "source_latent" (the source's mu: a latent cache) or "source_image"
    (pixels in [-1, 1]: encoded to mu by the frozen autoencoder)."""
    if "source" in batch:
      return batch["source"].astype(jnp.float32)
    if "source_latent" in batch:
      return self.normalize(consts, batch["source_latent"].astype(jnp.float32))
    if "source_image" not in batch:
      raise ValueError(
          "model.source_condition is set but the batch has no source (source_image, "
          "source_latent or source): the data must give pairs (data.source of pairs)."
      )
    return jax.lax.stop_gradient(self.encode(consts, batch["source_image"]))

  @property
  def is_fusion(self) -> bool:
    """True for the fusion generator (models/fusion.py), which reads the prompt's tokens."""
    return isinstance(self.dit, fusion.FusionGenerator)

  def _text_or_class(self, params, consts, batch) -> dict[str, jax.Array]:
    if self.config.model.cond_type == "class":
      return {"labels": batch["label"].astype(jnp.int32)}
    if self.is_fusion:  # the generator reads the tokens
      return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    trained = "text" in params
    text_params = params["text"] if trained else consts["text"]
    hidden, pooled = self.text.apply(
        {"params": text_params}, batch["input_ids"], batch["attention_mask"]
    )
    if not trained:
      hidden, pooled = jax.lax.stop_gradient((hidden, pooled))
    return {
        "context": hidden,
        "context_mask": batch["attention_mask"].astype(bool),
        "pooled": pooled,
    }

  # ---- latents ------------------------------------------------------------------------------
  def normalize(self, consts, z):
    return frozen_psvae.normalize(z, consts["latent_mean"], consts["latent_std"])

  def denormalize(self, consts, z):
    return frozen_psvae.denormalize(z, consts["latent_mean"], consts["latent_std"])

  def decode(self, consts, z_norm):
    x = self.ae.decode_with(consts["ae"], self.denormalize(consts, z_norm))
    return jnp.clip(x, -1.0, 1.0)

  def encode(self, consts, images):
    return self.ae.encode_normalized_with(
        consts["ae"], images, consts["latent_mean"], consts["latent_std"]
    )

  # ---- sampling -----------------------------------------------------------------------------
  def sample_settings(self, **overrides) -> SampleSettings:
    """This model's sampling settings: its config's `sample`, then the overrides not None."""
    return SampleSettings.resolve(self.config, **overrides)

  @functools.partial(runtime.no_grad_jit, static_argnums=(0,), static_argnames=("use_inpaint",))
  def sample_latents(
      self, params, consts, batch, z_start, s, start_index, inpaint=None, *, use_inpaint=False
  ):
    """One jit, one lax.scan: z_start (noise, or noised latents for SDEdit) -> clean latents; `s`
    the traced settings (`samplers.traced`).

    A source-conditioned model guides on two conditions (samplers._guided): the unconditional
    side is the pair (source without the text, neither), `s.image_guidance_scale` the source's
    scale. A fusion generator's prompt (and source) keys and values are computed once, before the
    scan."""
    cond = self.condition(params, consts, batch)
    b = z_start.shape[0]
    yes, no = jnp.zeros((b,), bool), jnp.ones((b,), bool)
    c_on = {**cond, "drop": yes}
    c_off = {**cond, "drop": no}
    if "source" in cond:
      c_on["drop_source"] = yes
      c_off = ({**c_off, "drop_source": yes}, {**c_off, "drop_source": no})
    if self.is_fusion:  # the condition's keys and values once per prompt, not once per step
      cache = lambda c: {
          "text_cache": self.dit.apply(
              {"params": params["dit"]},
              c["input_ids"],
              c["attention_mask"],
              c["drop"],
              c.get("source"),
              c.get("drop_source"),
              method=fusion.FusionGenerator.text_cache,
          )
      }
      c_on = cache(c_on)
      c_off = tuple(map(cache, c_off)) if isinstance(c_off, tuple) else cache(c_off)
    model_fn = lambda z, t, c: self.dit.apply({"params": params["dit"]}, z, t, **c)
    kw = dict(
        max_steps=MAX_STEPS,
        start_index=start_index,
        carry_sharding=parallel.batch_sharding(self.mesh, z_start.ndim),
        inpaint=inpaint if use_inpaint else None,
    )
    if isinstance(self.objective, objectives.EpsilonObjective):
      return samplers.ddim_sample(model_fn, self.objective.schedule, z_start, c_on, c_off, s, **kw)
    return samplers.euler_sample(model_fn, z_start, c_on, c_off, s, **kw)

  @functools.partial(runtime.no_grad_jit, static_argnums=(0,))
  def _decode_jit(self, consts, z):
    return self.decode(consts, z)

  def generate(self, params, consts, s: SampleSettings, *, prompts=None, labels=None) -> np.ndarray:
    """Text (or class) -> uint8 images (N, H, W, 3); same settings (seed), same images."""
    if common.edits_by_instruction(self.config):
      raise ValueError(
          "This model edits by instruction (model.source_condition): it needs a source image "
          "per sample; use instruct (pipe.instruct, sample --init_image --instruction)."
      )
    n = len(prompts) if prompts is not None else len(labels)
    if n == 0:
      raise ValueError("Nothing to generate: no prompts or labels.")
    # The batch is split over all devices.
    if prompts is not None:
      prompts = parallel.pad_to_multiple(prompts, self.mesh.size)
    if labels is not None:
      labels = parallel.pad_to_multiple(np.asarray(labels), self.mesh.size)
    batch = self.host_condition(prompts=prompts, labels=labels)
    z_t = initial_noise(s.seed, np.arange(n + (-n) % self.mesh.size), self.latent_shape)
    return self.to_images(consts, self.run(params, consts, batch, z_t, s))[:n]

  def host_condition(self, prompts=None, labels=None) -> dict[str, np.ndarray]:
    if self.config.model.cond_type == "class":
      if labels is None:
        raise ValueError("This is a class-conditional model: pass labels, not prompts.")
      return {"label": np.asarray(labels, np.int32)}
    if prompts is None:
      raise ValueError("This is a text-conditional model: pass prompts.")
    return self.tokenize(prompts)

  def timesteps(self, steps: int) -> np.ndarray:
    """The DDIM grid of `steps` (host side: the SDEdit start)."""
    return samplers.ddim_timesteps(
        steps, self.objective.schedule.num_timesteps, max_steps=MAX_STEPS
    )

  def run(self, params, consts, batch, z_start, s: SampleSettings, *, start_index=0, inpaint=None):
    """Samples from z_start with the settings `s` (resolved: `sample_settings()`)."""
    put = lambda x: jax.device_put(  # a global jax.Array (already on the mesh) stays there
        x if isinstance(x, jax.Array) else np.asarray(x),
        parallel.batch_sharding(self.mesh, np.ndim(x)),
    )
    batch = {k: put(v) for k, v in batch.items()}
    z_start = jax.device_put(z_start, parallel.batch_sharding(self.mesh, z_start.ndim))
    inp = (
        None
        if inpaint is None
        else tuple(jax.device_put(x, parallel.batch_sharding(self.mesh, x.ndim)) for x in inpaint)
    )
    return self.sample_latents(
        params,
        consts,
        batch,
        z_start,
        samplers.traced(s),
        jnp.int32(start_index),
        inp,
        use_inpaint=inpaint is not None,
    )

  def start_latents(self, z0, noise, s: SampleSettings, start_index: int) -> jax.Array:
    """SDEdit start: z0 noised to the start step's level; start 0 (strength 1) is the noise itself
    (so strength 1 is plain generation), start == steps (strength 0) is z0 (Euler: on the grid of
    the sampling shift `s.shift`)."""
    if start_index <= 0:
      return noise
    if isinstance(self.objective, objectives.EpsilonObjective):
      return samplers.ddim_start_latents(
          self.objective.schedule, z0, jnp.asarray(self.timesteps(s.steps)), start_index, noise
      )
    return samplers.euler_start_latents(z0, noise, s.steps, start_index, s.shift)

  def edit_latents(self, params, consts, batch, z0, mask, s: SampleSettings, *, strength):
    """SDEdit / inpainting in the latent: normalised z0 (B, h, w, C), mask (B, h, w, 1) with
    1 = regenerate -> clean latents.

    Noise to strength·T, then the scan sampler from there with the known region (mask 0) reset
    to the noised z0 after each step. Edits (mask all 1) and inpaints share one compile per
    batch size: strength, masks and every setting (`s.resample`: RePaint jumps per step,
    samplers._resampled) are traced.
    """
    start = samplers.sdedit_start_index(s.steps, strength)
    noise = initial_noise(s.seed, np.arange(z0.shape[0]), self.latent_shape)
    z0 = jnp.asarray(z0, jnp.float32)
    mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), z0.shape)
    z_start = self.start_latents(z0, noise, s, start)
    return self.run(params, consts, batch, z_start, s, start_index=start, inpaint=(z0, mask, noise))

  def instruct_latents(
      self, params, consts, source, instructions: Sequence[str], s: SampleSettings
  ) -> jax.Array:
    """Instruction editing: normalised source latents (N, h, w, C), or those rows already padded to
    the mesh (as `encode_images` returns them, still on the devices), and one instruction each ->
    clean latents (padded to the mesh: the first N rows are the edits).

    From noise, as InstructPix2Pix samples: the source enters as the DiT's channel-concatenated
    condition, guided by `s.image_guidance_scale` (s_I) and the instruction by `s.guidance_scale`
    (s_T). Same seed, same edits; one compile per batch size."""
    if not common.edits_by_instruction(self.config):
      raise ValueError(
          "This model was not trained for instruction editing (model.source_condition is off): "
          "use edit (SDEdit) with a caption of the result instead."
      )
    n = len(instructions)
    prompts = parallel.pad_to_multiple(list(instructions), self.mesh.size)
    if n == 0 or source.shape[0] not in (n, len(prompts)):
      raise ValueError(f"Got {source.shape[0]} source images but {n} instructions.")
    if source.shape[0] != len(prompts):
      source = parallel.pad_to_multiple(np.asarray(source, np.float32), self.mesh.size)
    batch = {**self.host_condition(prompts=prompts), "source": source}
    z_t = initial_noise(s.seed, np.arange(len(prompts)), self.latent_shape)
    return self.run(params, consts, batch, z_t, s)

  @functools.partial(runtime.no_grad_jit, static_argnums=(0,))
  def _encode_jit(self, consts, images):
    return self.encode(consts, images)

  def encode_images(self, consts, images: np.ndarray) -> jax.Array:
    """Float [-1, 1] images (N, S, S, 3) -> normalised posterior means, padded to the mesh."""
    x = parallel.pad_to_multiple(np.asarray(images, np.float32), self.mesh.size)
    return self._encode_jit(consts, jax.device_put(x, parallel.batch_sharding(self.mesh, 4)))

  def instruct(
      self, params, consts, images: np.ndarray, instructions: Sequence[str], s: SampleSettings
  ):
    """Instruction editing of float [-1, 1] images (N, S, S, 3) -> uint8 (N, S, S, 3) edits."""
    n = len(images)
    if n != len(instructions):
      raise ValueError(f"Got {n} source images but {len(instructions)} instructions.")
    z = self.encode_images(consts, images)  # padded to the mesh, stays on the devices
    return self.to_images(consts, self.instruct_latents(params, consts, z, instructions, s))[:n]

  def to_images(self, consts, z0) -> np.ndarray:
    return pixels.to_uint8(parallel.to_host(self._decode_jit(consts, z0)))  # all processes

  def __hash__(self):
    return id(self)

  def __eq__(self, other):
    return self is other

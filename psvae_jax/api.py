"""Python API: load a trained stage-3 workdir and generate, encode and decode.

from psvae_jax import api
pipe = api.load("runs/demo/dit")
images = pipe.generate(["a red circle on the left and a blue square on the right"], seed=0)
# sampling settings as keywords (unset = the model's own: its config's `sample`), or one object:
# pipe.generate(prompts, settings=pipe.sample_settings(steps=25, guidance_scale=3.0))
z = pipe.encode(images)            # normalised latents (B, h, w, C)
again = pipe.decode(z)             # uint8 (B, H, W, 3)
edited = pipe.edit(images, ["a blue circle on the left and a blue square on the right"],
                   strength=0.7)  # SDEdit; any input size, returned at that size
filled = pipe.inpaint(images, masks, prompts)  # masks: white (>= 0.5) = regenerate
# a model trained with model.source_condition (configs/dit.py:tiny_instruct) edits by instruction:
out = api.load("runs/instruct/dit").instruct(images, "make the circle blue")
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from configs import common
from psvae_jax import frozen_psvae
from psvae_jax import builders
from psvae_jax import checkpoint
from psvae_jax import editing
from psvae_jax import generation
from psvae_jax import latent_stats
from psvae_jax import parallel
from psvae_jax import paths
from psvae_jax import pixels
from psvae_jax import workdir as workdir_lib
from psvae_jax.data import sources
from psvae_jax.diffusion import settings

SampleSettings = settings.SampleSettings


class Pipeline:
  """A trained DiT with its frozen PS-VAE and text encoder, sharded over a mesh."""

  def __init__(
      self,
      workdir: str,
      mesh: jax.sharding.Mesh | None = None,
      autoencoder: str | None = None,
      text_encoder: str | None = None,
  ):
    config = workdir_lib.read_config(workdir)
    # A moved demo folder: the recorded relative paths, or the overrides (psvae_jax/paths.py).
    paths.relocate(config, workdir, autoencoder=autoencoder, text_encoder=text_encoder)
    if config.stage != "dit":
      raise ValueError(
          f"{workdir} holds a {config.stage!r} run; api.load wants a stage-3 (dit) workdir."
      )
    self.mesh = mesh or parallel.make_mesh(-1, 1)
    self.config = config
    self.class_names = workdir_lib.class_names(workdir)
    self.warnings: list[str] = []  # the last generate / edit call's prompt warnings
    if not config.autoencoder:
      raise ValueError(f"{workdir}'s config names no autoencoder (config.autoencoder).")
    self.ae = frozen_psvae.load_autoencoder(  # latent statistics: the DiT's own copy
        config.autoencoder, self.mesh, stats_dir=latent_stats.stats_dir(workdir, config.autoencoder)
    )
    latent_mean, latent_std = frozen_psvae.latent_normalization(config, self.ae)
    text, text_params, tokenizer = builders.load_text_encoder(config)
    settings.resolve_flow_shift(config, self.ae.latent_shape)
    dit = builders.build_dit(config)
    self.gen = generation.Generator(config, dit, text, tokenizer, self.ae, self.mesh)
    abstract = builders.dit_param_template(config, dit, self.ae.latent_shape, text, text_params)
    shardings = parallel.param_shardings(abstract, self.mesh, min_size=config.shard_min_size)
    self.params = checkpoint.restore_params(
        workdir, parallel.with_shardings(abstract, shardings), key="ema_params"
    )
    consts = builders.dit_constants(config, self.ae.params, latent_mean, latent_std, text_params)
    self.consts = jax.device_put(
        consts, parallel.param_shardings(consts, self.mesh, min_size=config.shard_min_size)
    )

  def sample_settings(self, base: SampleSettings | None = None, **overrides) -> SampleSettings:
    """The settings a call samples with: `base` (or, when None, this model's own: its config's
    `sample`, `SampleSettings.resolve`), then the `overrides` (SampleSettings fields) not None.
    One line (ValueError / TypeError) names a bad or unknown setting."""
    if base is None:
      return self.gen.sample_settings(**overrides)
    return base.replace(**overrides)

  @property
  def image_size(self) -> int:
    return self.ae.image_size

  def generate(
      self,
      prompts: Sequence[str] | None = None,
      settings: SampleSettings | None = None,
      *,
      labels: Sequence[int | str] | None = None,
      **overrides,
  ) -> np.ndarray:
    """Prompts (or class labels) -> uint8 images (N, H, W, 3). Same settings, same images.

    labels: class ids or class names ("sneaker"; `self.class_names`, saved at training start).
    settings: a SampleSettings (None: the model's own, from its config's `sample`);
    overrides: SampleSettings fields on top of it (None = unset), e.g. steps=25, seed=3,
      guidance_scale (1 = no guidance; the model's own: 4 for the demo's), guidance_rescale,
      guidance_interval=(lo, hi) (noise levels where the scale applies), shift (the Euler
      sampler's timestep shift, flow models), eta (DDIM). None of them recompiles.
    """
    s = self.sample_settings(settings, **overrides)
    if prompts is not None and isinstance(prompts, str):
      prompts = [prompts]
    self.warnings = self.prompt_warnings(prompts)
    if labels is not None:
      if isinstance(labels, (str, int, np.integer)):
        labels = [labels]
      labels = [self.label_id(x) for x in labels]
    return self.gen.generate(self.params, self.consts, s, prompts=prompts, labels=labels)

  def prompt_warnings(self, prompts: Sequence[str] | None) -> list[str]:
    """What the text encoder will not see of `prompts` (unknown words, tokens past its length,
    empty prompts), one line each; logged, and kept in `self.warnings` by generate / edit."""
    if prompts is None or self.config.model.cond_type != "text":
      return []
    return self.gen.prompt_warnings(list(prompts))

  def label_id(self, label: int | str) -> int:
    """A class id from an id or a class name of this model (ValueError lists the names)."""
    if self.config.model.cond_type != "class":
      raise ValueError(
          f"labels are for class-conditioned models; this one is {self.config.model.cond_type!r}."
      )
    index = sources.resolve_label(label, self.class_names)
    if not 0 <= index < int(self.config.model.num_classes):
      raise ValueError(f"Class id {index} out of range [0, {self.config.model.num_classes}).")
    return index

  def _put(self, x: np.ndarray) -> jax.Array:
    n = x.shape[0]
    x = parallel.pad_to_multiple(x, self.mesh.size)
    return jax.device_put(x, parallel.batch_sharding(self.mesh, x.ndim)), n

  def encode(self, images: np.ndarray) -> np.ndarray:
    """uint8 (or [-1, 1] float) images at the model's resolution -> normalised latents."""
    x = np.asarray(images)
    if x.dtype == np.uint8:
      x = pixels.to_float(x)
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"Images must be {self.image_size}x{self.image_size}, got {x.shape[1:3]}.")
    return np.asarray(jax.device_get(self.gen.encode_images(self.consts, x)))[: x.shape[0]]

  def decode(self, latents: np.ndarray) -> np.ndarray:
    """Normalised latents (B, h, w, C) -> uint8 images."""
    zs, n = self._put(np.asarray(latents, np.float32))
    return self.gen.to_images(self.consts, zs)[:n]

  # ---- editing (psvae_jax/editing.py holds the host-side parts) -------------------------------
  def edit(
      self,
      images,
      prompts,
      strength: float = 0.7,
      settings: SampleSettings | None = None,
      *,
      fit: str = "crop",
      **overrides,
  ):
    """SDEdit: images (any size) re-generated towards `prompts` from noise level strength·T.

    strength 0 returns the PS-VAE reconstruction, 1 ignores the input (plain generation with the
    same seed). Images are center-cropped ("crop") or padded ("pad") to the model's resolution
    and the results returned at the input's size (a uint8 array if the input was one, else a
    list). One compile per batch size for all strengths (and shared with `inpaint`). settings /
    overrides: as in `generate` (the sampling shift also sets the SDEdit start time of flow
    models).
    """
    s = self.sample_settings(settings, **overrides)
    if s.resample:
      raise editing.EditInputError("resample (RePaint jumps) is for inpaint; edit regenerates all.")
    strength = editing.check_strength(strength)
    square, places = editing.prepare_images(images, self.image_size, fit)
    masks = np.ones(square.shape[:3], np.float32)
    out = self._edit(square, masks, prompts, s, strength=strength, dilation=0)
    return self._restore(images, out, places)

  def inpaint(
      self,
      images,
      masks,
      prompts,
      settings: SampleSettings | None = None,
      *,
      strength: float = 1.0,
      dilation: int = 1,
      feather: float = 1.0,
      fit: str = "crop",
      composite: bool = True,
      **overrides,
  ):
    """Regenerates the masked region (mask >= 0.5, i.e. white) of each image for its prompt.

    Masks of another size than their image are resized; non-binary masks are thresholded at
    0.5. The mask is max-pooled to the latent grid and dilated by `dilation` cells; the known
    latent region is reset to the noised input after every step; with `composite` the result is
    blended (Gaussian edge of sigma `feather` px) with the original pixels outside the mask. An
    all-black mask returns the input (the reconstruction with composite=False); an all-white
    one is plain generation. `strength` < 1 starts the masked region from the noised input.
    settings / overrides: as in `generate`; `resample` = N > 0 adds N RePaint resampling jumps
    per step (re-noise one step, denoise again: N + 1 model calls per step) to harmonise the
    region with its surroundings.
    """
    strength = editing.check_strength(strength)
    try:
      s = self.sample_settings(settings, **overrides)
    except ValueError as e:  # resample out of range, ...: a bad edit input
      raise editing.EditInputError(str(e)) from None
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
      masks = [masks]
    square, places = editing.prepare_images(images, self.image_size, fit)
    if len(masks) != len(places):
      raise editing.EditInputError(f"Got {len(places)} images but {len(masks)} masks.")
    originals = [
        editing.as_uint8_image(im)
        for im in (
            list(images) if not isinstance(images, np.ndarray) or images.ndim == 4 else [images]
        )
    ]
    pix = np.stack([editing.prepare_mask(m, p, self.image_size) for m, p in zip(masks, places)])
    out = self._edit(square, pix, prompts, s, strength=strength, dilation=dilation)
    restored = self._restore(images, out, places)
    if not composite:
      return restored
    blended = [
        editing.composite(r, o, editing.binarize_mask(m, *o.shape[:2]), feather)
        for r, o, m in zip(restored, originals, masks)
    ]
    return np.stack(blended) if isinstance(restored, np.ndarray) else blended

  def instruct(
      self,
      images,
      instructions,
      settings: SampleSettings | None = None,
      *,
      fit: str = "crop",
      **overrides,
  ):
    """Instruction editing (a model trained with model.source_condition): images (any size) and
    one instruction each (or one for all) -> the edited images, at the input's size.

    guidance_scale: the instruction's scale s_T; image_guidance_scale: the source image's s_I
    (higher keeps more of the source); both default to the model's own. settings / overrides: as
    in `generate`. Same seed, same edits."""
    s = self.sample_settings(settings, **overrides)
    if not common.edits_by_instruction(self.config):
      raise editing.EditInputError(
          "This model was not trained for instruction editing (model.source_condition is off); "
          "use edit() with a caption of the wanted result."
      )
    square, places = editing.prepare_images(images, self.image_size, fit)
    n = square.shape[0]
    if isinstance(instructions, str):
      instructions = [instructions] * n
    if len(instructions) != n:
      raise editing.EditInputError(f"Got {n} images but {len(instructions)} instructions.")
    self.warnings = self.prompt_warnings(instructions)
    out = self.gen.instruct(
        self.params, self.consts, pixels.to_float(square), list(instructions), s
    )
    return self._restore(images, out, places)

  def _edit(self, square, pix_masks, prompts, s, *, strength, dilation) -> np.ndarray:
    """uint8 (N, S, S, 3) images and {0, 1} (N, S, S) masks -> uint8 (N, S, S, 3) results."""
    n = square.shape[0]
    if isinstance(prompts, str):
      prompts = [prompts] * n
    if self.config.model.cond_type == "class":
      raise editing.EditInputError("edit/inpaint need a text-conditional model.")
    if common.edits_by_instruction(self.config):
      raise editing.EditInputError(
          "This model edits by instruction (model.source_condition): use instruct()."
      )
    if len(prompts) != n:
      raise editing.EditInputError(f"Got {n} images but {len(prompts)} prompts.")
    self.warnings = self.prompt_warnings(prompts)
    z0 = self.encode(square)  # (N, h, w, C)
    lat_mask = editing.latent_mask(pix_masks, z0.shape[1:3], dilation)  # (N, h, w, 1)
    z0, lat_mask, prompts = (
        parallel.pad_to_multiple(v, self.mesh.size) for v in (z0, lat_mask, prompts)
    )
    batch = self.gen.host_condition(prompts=list(prompts))
    z = self.gen.edit_latents(self.params, self.consts, batch, z0, lat_mask, s, strength=strength)
    return self.gen.to_images(self.consts, z)[:n]

  @staticmethod
  def _restore(images, out: np.ndarray, places):
    if isinstance(images, np.ndarray):
      images = list(images) if images.ndim == 4 else [images]
    restored = [editing.restore_size(r, o, p) for r, o, p in zip(out, images, places)]
    if all(r.shape == restored[0].shape for r in restored):
      return np.stack(restored)
    return restored


def load(
    dit_dir: str,
    mesh: jax.sharding.Mesh | None = None,
    autoencoder: str | None = None,
    text_encoder: str | None = None,
) -> Pipeline:
  """Loads a stage-3 workdir (its config names the autoencoder and text encoder dirs; give them
  to override, e.g. after moving them; a folder moved as a whole is found by itself)."""
  return Pipeline(dit_dir, mesh, autoencoder=autoencoder, text_encoder=text_encoder)


__all__ = ["Pipeline", "SampleSettings", "load"]

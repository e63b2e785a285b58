"""Stage-specific tasks: what a stage trains and how; the loop knows only this interface.

A task has:
  init(rng) -> (params, frozen)            pure; traced by eval_shape and jit
  make_frozen(params) -> frozen            the non-trained copy derived from params
  param_groups: {regex: label}             optimizer groups ("frozen" = never updated)
  constants() -> pytree                    fixed arrays the loss needs (e.g. LPIPS weights)
  loss(params, frozen, consts, batch, rng) -> (loss, {name: scalar})
  warm_start(params) -> params | None      e.g. stage 2 reads stage 1's weights
  evaluate(state, consts, mesh, step) -> ({name: value}, {name: uint8 image})
  finish(state, consts, mesh, workdir)     e.g. latent statistics for stage 3
"""

from psvae_jax import autoencoders
from psvae_jax import builders
from psvae_jax.train.tasks import autoencoder
from psvae_jax.train.tasks import dit


def dit_pieces(config, mesh):
  """(frozen autoencoder, (text module, params, tokenizer)) of a stage-3 config, from files."""
  if not config.autoencoder:
    raise ValueError("Stage 3 needs --config.autoencoder=DIR (a trained PS-VAE workdir).")
  return (autoencoders.load_autoencoder(config.autoencoder, mesh),
          builders.load_text_encoder(config))


def get_task(config, mesh):
  """The task of config.stage ("svae" | "psvae" | "dit")."""
  if config.stage in ("svae", "psvae"):
    return autoencoder.AutoencoderTask(config)
  if config.stage == "dit":
    if config.model.cond_type == "text" and not config.data.tokenizer:
      config.data.tokenizer = config.text_encoder  # the encoder's own tokenizer
    return dit.DiTTask(config, mesh, *dit_pieces(config, mesh))
  raise ValueError(f"Unknown stage {config.stage!r}.")

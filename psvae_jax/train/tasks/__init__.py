"""Stage-specific tasks: what a stage trains and how; the loop knows only `Task` (base.py).

get_task(config, mesh) picks the task of config.stage: AutoencoderTask (stages 1-2, svae and
psvae) or DiTTask (stage 3, dit, given its frozen autoencoder and text encoder from files).
"""

from psvae_jax import autoencoders
from psvae_jax import builders
from psvae_jax.train.tasks import autoencoder
from psvae_jax.train.tasks import dit
from psvae_jax.train.tasks.base import Task


def dit_pieces(config, mesh):
  """(frozen autoencoder, (text module, params, tokenizer)) of a stage-3 config, from files."""
  if not config.autoencoder:
    raise ValueError("Stage 3 needs --config.autoencoder=DIR (a trained PS-VAE workdir).")
  return (autoencoders.load_autoencoder(config.autoencoder, mesh),
          builders.load_text_encoder(config))


def get_task(config, mesh) -> Task:
  """The task of config.stage ("svae" | "psvae" | "dit")."""
  if config.stage in ("svae", "psvae"):
    return autoencoder.AutoencoderTask(config)
  if config.stage == "dit":
    if config.model.cond_type == "text" and not config.data.tokenizer:
      config.data.tokenizer = config.text_encoder  # the encoder's own tokenizer
    return dit.DiTTask(config, mesh, *dit_pieces(config, mesh))
  raise ValueError(f"Unknown stage {config.stage!r}.")

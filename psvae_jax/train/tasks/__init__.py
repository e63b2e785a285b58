"""Stage-specific tasks: what a stage trains and how; the loop knows only `Task` (base.py).

get_task(config, mesh, workdir) picks the task of config.stage: AutoencoderTask (stages 1-2,
svae and psvae) or DiTTask (stage 3, dit, given its frozen autoencoder and text encoder from
files; the DiT workdir keeps its own copy of the autoencoder's latent statistics).
"""

from psvae_jax import frozen_psvae
from psvae_jax import builders
from psvae_jax import latent_stats
from psvae_jax.train.tasks import autoencoder
from psvae_jax.train.tasks import dit
from psvae_jax.train.tasks.base import Task


def dit_pieces(config, mesh, workdir: str | None = None):
  """(frozen autoencoder, (text module, params, tokenizer)) of a stage-3 config, from files.

  With the DiT's `workdir`, the autoencoder's latent_stats.npz is first copied there (kept if
  one is there already) and the statistics are read from that copy.
  """
  if not config.autoencoder:
    raise ValueError("Stage 3 needs --config.autoencoder=DIR (a trained PS-VAE workdir).")
  stats_dir = latent_stats.keep_copy(config.autoencoder, workdir) if workdir else None
  return (
      frozen_psvae.load_autoencoder(config.autoencoder, mesh, stats_dir=stats_dir),
      builders.load_text_encoder(config),
  )


def get_task(config, mesh, workdir: str | None = None) -> Task:
  """The task of config.stage ("svae" | "psvae" | "dit"), training in `workdir`."""
  if config.stage in ("svae", "psvae"):
    return autoencoder.AutoencoderTask(config)
  if config.stage == "dit":
    if config.model.cond_type == "text" and not config.data.tokenizer:
      # the text encoder's own tokenizer (a fusion generator's: its Qwen2 directory's)
      fusion = builders.is_fusion(config)
      config.data.tokenizer = config.generator.weights if fusion else config.text_encoder
    return dit.DiTTask(config, mesh, *dit_pieces(config, mesh, workdir))
  raise ValueError(f"Unknown stage {config.stage!r}.")

"""CLI: the latent cache (stage 3's training data), a dataset encoded once with a frozen PS-VAE.

  python -m psvae_jax.cache_latents --autoencoder=runs/demo/psvae --out=runs/demo/latents \
      --data=shapes:num=2048 [--batch_size=256] [--dtype=bfloat16|float16|float32] \
      [--store=mean_std|sample] [--split=train]

`--data` names a source as `KIND:ARGS`, ARGS being comma-separated `key=value` fields of
the data config (configs/common.py `c.data`), the first of which may be a bare value:
  shapes:num=2048,seed=0                  synthetic shapes (num = data.num_train)
  folder:/data/images,num_train=10000     an image folder (a bare directory also works)
  tfds:imagenet2012,path=/data/tfds,label_captions=true
                                          a prepared tfds dataset (path = data_dir)
`image_size` defaults to the autoencoder's (a different one is an error); images are
center-cropped, never flipped. Bad records are skipped and counted in meta.json.
The writer is psvae_jax/data/cache.py; the format psvae_jax/data/latents.py.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app
from absl import flags

from psvae_jax import frozen_psvae
from psvae_jax import cli
from psvae_jax import runtime
from psvae_jax.data import cache
from psvae_jax.data import latents
from psvae_jax.data import sources
from psvae_jax.data import specs


def define_flags() -> None:
  """Defines the app's flags (not at import, so other apps can import this module)."""
  flags.DEFINE_string("autoencoder", None, "Trained PS-VAE workdir.")
  flags.DEFINE_string("data", None, "Source spec, e.g. shapes:num=2048 (see above).")
  flags.DEFINE_string("out", None, "Output directory of the cache.")
  flags.DEFINE_integer("batch_size", 256, "Global encoding batch size.")
  flags.DEFINE_enum("dtype", "bfloat16", list(latents.DTYPES), "Stored dtype.")
  flags.DEFINE_enum(
      "store",
      "mean_std",
      ["mean_std", "sample"],
      "Store mu and std (sampled at read time) or one sample.",
  )
  flags.DEFINE_enum("split", "train", ["train", "eval"], "Source split.")
  flags.DEFINE_integer("seed", 0, "Seed of --store=sample.")
  flags.mark_flags_as_required(["autoencoder", "data", "out"])


def main(argv: list[str]) -> None:
  del argv
  cli.quiet_libraries()  # Orbax INFO lines only with -v 1; the cache's progress lines stay
  runtime.initialize()
  f = flags.FLAGS
  # Input errors before any work, in one line: an existing cache, a missing autoencoder or data.
  if (pathlib.Path(f.out).expanduser() / latents.META_FILE).exists():
    sys.exit(
        f"cache: error: {f.out} already holds a latent cache; remove it or pick another --out."
    )
  if not (pathlib.Path(f.autoencoder).expanduser() / "config.json").is_file():
    sys.exit(
        f"cache: error: --autoencoder={f.autoencoder} is not a trained workdir (no config.json)."
    )
  ae = frozen_psvae.load_autoencoder(f.autoencoder)
  try:
    data_cfg = specs.parse_data_spec(f.data, ae.image_size)
    sources.get_source(data_cfg, f.split)  # the data exist and can be listed
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"cache: error: {e}")
  cache.write_cache(
      ae,
      data_cfg,
      f.out,
      batch_size=f.batch_size,
      dtype=f.dtype,
      store=f.store,
      split=f.split,
      seed=f.seed,
      autoencoder_dir=f.autoencoder,
  )


if __name__ == "__main__":
  # Run as a program: the demo's shapes world provides data.source="shapes" (--data=shapes:...).
  # Not when imported: the library does not depend on psvae_jax.shapes.
  from psvae_jax import shapes_plugin  # pylint: disable=g-import-not-at-top

  shapes_plugin.register()
  define_flags()
  app.run(main, flags_parser=cli.flags_parser("cache"))

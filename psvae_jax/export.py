"""Portable export: a trained run's EMA weights as safetensors + its config as JSON, no Orbax.

  python -m psvae_jax.export --workdir=runs/demo/dit --out=exports/demo
  python -m psvae_jax.export --workdir=runs/demo/psvae --out=exports/psvae   (an autoencoder)

A DiT export holds everything `api.load(OUT)` needs:

  OUT/config.json             the run's config (autoencoder / text_encoder pointing inside OUT)
  OUT/ema_params.safetensors  the EMA params, one tensor per "a/b/kernel" leaf (float as trained)
  OUT/latent_stats.npz        the latent statistics the DiT trained with
  OUT/data.json               class names (class-conditioned models), when the run has them
  OUT/autoencoder/            the frozen PS-VAE: config.json, ema_params.safetensors,
                              latent_stats.npz
  OUT/text_encoder/           a copy of the text encoder directory (weights + tokenizer) when it
                              is at most --max_copy_mb; else config.json names the original and
                              `api.load(OUT, text_encoder=DIR)` overrides it
  OUT/generator/              a fusion generator's Qwen2 directory without its weight files
                              (config.json and tokenizer: the trained blocks are in the params)
  OUT/paths.json, OUT/export.json (source workdir, step, sha256 of every file)

An autoencoder export (a stage-1/2 workdir) is the autoencoder/ part alone, loaded by
`frozen_psvae.load_autoencoder(OUT)`. Loading reads the safetensors file in place of
checkpoints/ (`checkpoint.restore_params`). OUT is written as OUT.partial and renamed when
complete: an interrupted export leaves no OUT that looks whole; an existing OUT is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

from absl import app
from absl import flags
import jax
import numpy as np

from psvae_jax import frozen_psvae
from psvae_jax import checkpoint
from psvae_jax import cli
from psvae_jax import latent_stats
from psvae_jax import workdir as workdir_lib

DEFAULT_MAX_COPY_MB = 2048


# Weight files a fusion generator's Qwen2 directory holds: not copied into an export.
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".index.json")


def save_params(path: str, params) -> None:
  """Params pytree -> safetensors, one tensor per leaf named by `checkpoint.flat_key`."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  tensors = {}
  for p, leaf in leaves:
    value = np.asarray(jax.device_get(leaf))
    if value.dtype == jax.numpy.bfloat16:  # safetensors.numpy has no bfloat16: stored as fp32
      value = value.astype(np.float32)
    tensors[checkpoint.flat_key(p)] = np.ascontiguousarray(value)
  save_file(tensors, path)


def _step(workdir: str) -> int | None:
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, workdir_lib.CHECKPOINTS), async_save=False)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def _dir_mb(path: str) -> float:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / (
      1 << 20
  )


def _export_autoencoder(ae: frozen_psvae.Autoencoder, stats_from: str, out: str) -> None:
  os.makedirs(out)
  with open(os.path.join(out, workdir_lib.CONFIG), "w", encoding="utf-8") as f:
    json.dump(ae.config.to_dict(), f, indent=2)
  save_params(os.path.join(out, checkpoint.EXPORTED_PARAMS), ae.params)
  stats = os.path.join(stats_from, workdir_lib.LATENT_STATS)
  if os.path.exists(stats):
    shutil.copy2(stats, os.path.join(out, workdir_lib.LATENT_STATS))


def export(workdir: str, out: str, max_copy_mb: float = DEFAULT_MAX_COPY_MB) -> dict:
  """Writes the export of `workdir` (a DiT or autoencoder run) to `out`; returns export.json."""
  from psvae_jax import api  # pylint: disable=g-import-not-at-top

  out = os.path.abspath(out)
  if os.path.exists(out):
    raise FileExistsError(f"--out={out} exists: give a new directory (nothing was written).")
  config = workdir_lib.read_config(workdir)
  tmp = out + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  info = {"source": os.path.abspath(workdir), "step": _step(workdir), "stage": config.stage}
  if config.stage in ("svae", "psvae"):
    _export_autoencoder(frozen_psvae.load_autoencoder(workdir), workdir, tmp)
  elif config.stage == "dit":
    pipe = api.load(workdir)
    cfg = pipe.config  # relocated: the paths that exist
    _export_autoencoder(pipe.ae, cfg.autoencoder, os.path.join(tmp, "autoencoder"))
    save_params(os.path.join(tmp, checkpoint.EXPORTED_PARAMS), pipe.params)
    shutil.copy2(
        os.path.join(latent_stats.stats_dir(workdir, cfg.autoencoder), workdir_lib.LATENT_STATS),
        os.path.join(tmp, workdir_lib.LATENT_STATS),
    )
    data_json = os.path.join(workdir, workdir_lib.DATA)
    if os.path.exists(data_json):
      shutil.copy2(data_json, os.path.join(tmp, workdir_lib.DATA))
    cfg = cfg.copy_and_resolve_references()
    cfg.autoencoder = os.path.join(out, "autoencoder")
    if cfg.get("text_encoder"):
      size = _dir_mb(cfg.text_encoder)
      info["text_encoder_mb"] = round(size, 1)
      if size <= max_copy_mb:
        shutil.copytree(cfg.text_encoder, os.path.join(tmp, "text_encoder"))
        cfg.text_encoder = os.path.join(out, "text_encoder")
      else:
        info["text_encoder_reference"] = os.path.abspath(cfg.text_encoder)
    if (cfg.get("generator") or {}).get("weights"):  # a fusion generator: its Qwen2 directory's
      # config and tokenizer (the blocks' trained weights are in the exported params)
      os.makedirs(os.path.join(tmp, "generator"))
      for name in sorted(os.listdir(cfg.generator.weights)):
        path = os.path.join(cfg.generator.weights, name)
        if os.path.isfile(path) and not name.endswith(_WEIGHT_FILES):
          shutil.copy2(path, os.path.join(tmp, "generator", name))
      cfg.generator.weights = os.path.join(out, "generator")
    cfg.init_from = ""
    with open(os.path.join(tmp, workdir_lib.CONFIG), "w", encoding="utf-8") as f:
      json.dump(cfg.to_dict(), f, indent=2)
    relative = {  # as paths.record writes it: relative to OUT, so a moved export still loads
        k: os.path.relpath(cfg[k], out) for k in ("autoencoder", "text_encoder") if cfg.get(k)
    }
    if (cfg.get("generator") or {}).get("weights"):
      relative["generator.weights"] = os.path.relpath(cfg.generator.weights, out)
    with open(os.path.join(tmp, workdir_lib.PATHS), "w", encoding="utf-8") as f:
      json.dump(relative, f, indent=2)
  else:
    raise ValueError(f"{workdir} holds a {config.stage!r} run: nothing to export.")
  info["files"] = {
      os.path.relpath(os.path.join(d, f), tmp): _sha256(os.path.join(d, f))
      for d, _, fs in os.walk(tmp)
      for f in sorted(fs)
  }
  with open(os.path.join(tmp, "export.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  os.rename(tmp, out)
  return info


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "A trained DiT or autoencoder workdir.")
  flags.DEFINE_string("out", None, "The export directory to create (must not exist).")
  flags.DEFINE_float(
      "max_copy_mb", DEFAULT_MAX_COPY_MB, "Copy the text encoder into OUT up to this size."
  )


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  if not f.workdir or not f.out:
    sys.exit("export: error: give --workdir=DIR and --out=NEW_DIR. (--help lists the flags)")
  cli.quiet_libraries()
  try:
    info = export(f.workdir, f.out, f.max_copy_mb)
  except (FileExistsError, FileNotFoundError, ValueError) as e:
    sys.exit(f"export: error: {e}")
  size = sum(os.path.getsize(os.path.join(f.out, n)) for n in info["files"]) / (1 << 20)
  print(f"export: wrote {f.out} ({info['stage']}, step {info['step']}, {size:.1f} MB)")


if __name__ == "__main__":
  define_flags()
  cli.quiet_by_default()
  app.run(main, flags_parser=cli.flags_parser("export"))

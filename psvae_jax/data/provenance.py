"""What a workdir records about its data (DIR/data.json), and the check on resume.

Training writes `describe_splits(config.data)` into the workdir when it starts and compares it
when it resumes (`check_recorded`): a resumed run must read the same records (fingerprints and
counts per split) and the same class names. `--label=NAME` resolves against the recorded names.
"""

from __future__ import annotations

from typing import Any

from psvae_jax.data import config
from psvae_jax.data import sources
from psvae_jax import workdir as workdir_lib


def describe(source: Any) -> dict[str, Any]:
  """What a workdir records about a split's source (`check_recorded` compares it)."""
  return {
      "source": repr(source),
      "num_records": len(source),
      "class_names": list(getattr(source, "class_names", []) or []),
      "fingerprint": sources.fingerprint(source),
  }


def describe_splits(data_cfg: Any) -> dict[str, Any]:
  """{"train": describe(...), "eval": describe(...), "class_names": [...]} of a data config.

  Training writes it into the workdir (data.json) at its start and compares it on resume
  (`check_recorded`); the class names are what `--label=NAME` resolves against.
  """
  cfg = config.complete(data_cfg)
  train, held_out = sources.get_source(cfg, "train"), sources.get_source(cfg, "eval")
  return {
      "train": describe(train),
      "eval": describe(held_out),
      "class_names": sources.check_class_names(
          train, held_out, where=f"data.source={cfg.source!r}"
      ),
  }


def check_recorded(recorded: dict[str, Any], now: dict[str, Any], workdir: str) -> None:
  """ValueError when the data of a resumed run differs from what the workdir started with."""
  for split in ("train", "eval"):
    a, b = recorded.get(split, {}), now.get(split, {})
    if a.get("fingerprint") != b.get("fingerprint") or a.get("num_records") != b.get("num_records"):
      raise ValueError(
          f"{workdir}: the {split} data differ from those the run started with ("
          f"{a.get('num_records')} records, fingerprint {a.get('fingerprint')}; now "
          f"{b.get('num_records')}, {b.get('fingerprint')}: {b.get('source')}). A resumed run "
          f"must read the same records (see {workdir}/{workdir_lib.DATA}); start a new workdir for "
          "new data."
      )
  if recorded.get("class_names", []) != now.get("class_names", []):
    raise ValueError(
        f"{workdir}: the class names differ from those the run started with "
        f"({recorded.get('class_names')} vs {now.get('class_names')})."
    )

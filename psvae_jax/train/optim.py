"""Optimizer: AdamW with warmup + cosine, grad clipping,
per-group learning rates and frozen masks."""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jax
import ml_collections
import optax

FROZEN = "frozen"


def schedule(lr: float, warmup_steps: int, total_steps: int, min_ratio: float) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=lr,
      warmup_steps=max(warmup_steps, 1),
      decay_steps=max(total_steps, warmup_steps + 1),
      end_value=lr * min_ratio,
  )


def label_params(params: Any, groups: Mapping[str, str]) -> Any:
  """Labels each leaf with the first group whose regex matches its "a/b/c" path.

  Args:
    params: parameter tree.
    groups: {regex: label}; label "frozen" means the leaf never changes; any
      other label names an entry of the optimizer's `lr_groups`. Unmatched
      leaves get "default".
  """
  compiled = [(re.compile(r), lab) for r, lab in groups.items()]

  def one(path, _):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    for regex, lab in compiled:
      if regex.search(name):
        return lab
    return "default"

  return jax.tree_util.tree_map_with_path(one, params)


def learning_rates(cfg: ml_collections.ConfigDict, total_steps: int, step: int) -> dict[str, float]:
  """{"lr": default group's learning rate, "lr_<group>": each lr_groups entry's} at `step` (the
  values the optimizer applies there; logged as train/lr*)."""
  rate = lambda lr: float(schedule(lr, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)(step))
  out = {"lr": rate(cfg.lr)}
  out.update({f"lr_{label}": rate(lr) for label, lr in cfg.lr_groups.items()})
  return out


def clip_by_player(
    max_norm: float, labels: Callable[[Any], Any] | Any, players: Mapping[str, Any] | None = None
) -> optax.GradientTransformation:
  """Global-norm clipping to `max_norm`, each player on its own: the leaves labelled with a key
  of `players` per label, all other leaves (the model) together. No players: one global norm."""
  if not players:
    return optax.clip_by_global_norm(max_norm)

  def group(name):
    def mask(tree):
      labelled = labels(tree) if callable(labels) else labels
      return jax.tree.map(lambda lab: lab == name if name else lab not in players, labelled)

    return mask

  clips = [optax.masked(optax.clip_by_global_norm(max_norm), group(None))]
  clips += [optax.masked(optax.clip_by_global_norm(max_norm), group(name)) for name in players]
  return optax.chain(*clips)


def make_optimizer(
    cfg: ml_collections.ConfigDict,
    total_steps: int,
    labels: Callable[[Any], Any] | Any,
    players: Mapping[str, Mapping[str, float]] | None = None,
) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay) per label group; "frozen" leaves get zero updates.

  cfg fields: lr, warmup_steps, weight_decay, b1, b2, eps, grad_clip, min_lr_ratio and
  lr_groups ({label: lr}) for groups other than "default".
  players: labels of other players of the same step (the adversarial loss' discriminator:
  {"disc": {"lr": ..., "b1": ..., "b2": ...}}), each with its own Adam settings and clipped by
  its own global norm; the rest (the model) is clipped by its global norm apart from them, so a
  player's large gradient does not shrink the model's step.
  """
  players = dict(players or {})

  def adamw(lr, b1=None, b2=None):
    return optax.adamw(
        schedule(lr, cfg.warmup_steps, total_steps, cfg.min_lr_ratio),
        b1=cfg.b1 if b1 is None else b1,
        b2=cfg.b2 if b2 is None else b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )

  transforms = {"default": adamw(cfg.lr), FROZEN: optax.set_to_zero()}
  for label, lr in cfg.lr_groups.items():
    transforms[label] = adamw(lr)
  for label, p in players.items():
    transforms[label] = adamw(p.get("lr") or cfg.lr, p.get("b1"), p.get("b2"))
  chain = [clip_by_player(cfg.grad_clip, labels, players)] if cfg.grad_clip > 0 else []
  chain.append(optax.multi_transform(transforms, labels))
  return optax.chain(*chain)

"""Losses of DESIGN.md section 1: semantic (MSE + cosine), pixel (L1/MSE), KL."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cosine(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Per-token cosine similarity over the last axis: (..., d) -> (...)."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  num = jnp.sum(a * b, axis=-1)
  den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return num / jnp.maximum(den, eps)


def semantic_loss(pred: jax.Array, target: jax.Array, cos_weight: float = 0.0) -> jax.Array:
  """L_sem = MSE(f_hat, f) + w_cos * mean(1 - cos(f_hat, f)) per token."""
  mse = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))
  if cos_weight:
    mse = mse + cos_weight * jnp.mean(1.0 - cosine(pred, target))
  return mse


def pixel_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """L_pix = 1/2 L1 + 1/2 MSE, means over all pixels."""
  d = pred.astype(jnp.float32) - target.astype(jnp.float32)
  return 0.5 * jnp.mean(jnp.abs(d)) + 0.5 * jnp.mean(jnp.square(d))


def kl_loss(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mu, sigma^2) || N(0, I)), averaged per latent element."""
  return jnp.mean(-0.5 * (1.0 + logvar - jnp.square(mu) - jnp.exp(logvar)))


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """The discriminator's hinge loss (taming / LDM): ½ (mean relu(1 - real) + mean relu(1 +
  fake))."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def generator_adv_loss(logits_fake: jax.Array) -> jax.Array:
  """The generator's adversarial loss: -mean D(x_hat)."""
  return -jnp.mean(logits_fake)


def adaptive_weight(nll_grad: jax.Array, adv_grad: jax.Array, max_weight: float = 1e4):
  """LDM's adaptive adversarial weight: ||d nll / d W|| / (||d adv / d W|| + 1e-4), clipped to
  [0, max_weight] and not differentiated (W: the pixel decoder's last layer's kernel)."""
  w = jnp.linalg.norm(nll_grad.ravel()) / (jnp.linalg.norm(adv_grad.ravel()) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))

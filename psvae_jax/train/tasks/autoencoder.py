"""Stages 1 (S-VAE) and 2 (PS-VAE): init, loss, evaluation and latent statistics.

Stage 1 trains E_s and D_s on the frozen encoder's features, and D_p on a detached
latent (only so stage 1 can be judged in pixels). Stage 2 trains everything and keeps a
frozen copy of the encoder (state.frozen["encoder"]) as the semantic target.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from psvae_jax import builders
from psvae_jax import checkpoint
from psvae_jax import latent_stats
from psvae_jax import losses
from psvae_jax import parallel
from psvae_jax import writers
from psvae_jax import pixels
from psvae_jax import runtime
from psvae_jax import workdir as workdir_lib
from psvae_jax.data import pipeline  # noqa
from psvae_jax.evals import checkers as eval_checkers
from psvae_jax.evals import image_metrics
from psvae_jax.evals import runner as eval_runner
from psvae_jax.models import pixel_decoder
from psvae_jax.models.autoencoder import PSVAE, reparameterize


def inherit_stage1_model(config) -> None:
  """Stage 2 builds the model stage 1 trained: `model` is taken from init_from's config.json.

  The architecture must match stage 1's checkpoint exactly, and stage 1 may have read it from
  its encoder weights directory (`model.encoder.weights`, a HF config.json), which stage 2's
  command does not repeat. Fields that differ from stage 2's config are logged.
  """
  if config.stage != "psvae" or not config.init_from:
    return
  stage1 = workdir_lib.read_config(config.init_from)
  if stage1.stage != "svae":
    raise ValueError(
        f"--config.init_from={config.init_from} holds a {stage1.stage!r} run, "
        "not a stage-1 (svae) workdir."
    )
  mine = traverse_util.flatten_dict(config.model.to_dict(), sep=".")
  for key, value in traverse_util.flatten_dict(stage1.model.to_dict(), sep=".").items():
    if key not in mine:
      continue
    if isinstance(mine[key], tuple) and isinstance(value, list):
      value = tuple(value)
    if value != mine[key]:
      logging.info(
          "model.%s = %r from stage 1 (%s), was %r.", key, value, config.init_from, mine[key]
      )
      node = config.model
      *path, leaf = key.split(".")
      for part in path:
        node = node[part]
      node[leaf] = value


class AutoencoderTask:
  """The S-VAE / PS-VAE stage, chosen by config.stage ("svae" | "psvae")."""

  param_groups: dict[str, str]
  grid_notes: dict[str, str]

  def __init__(self, config):
    inherit_stage1_model(config)
    self.config = config
    self.grid_notes = {}  # reconstruction grids: the held-out images themselves
    self.stage2 = config.stage == "psvae"
    self.dtype = jnp.dtype(config.dtype)
    self.model: PSVAE = builders.build_psvae(config.model, dtype=self.dtype)
    # Stage 1 freezes the encoder through the optimizer mask (and stop_gradient).
    self.param_groups = {r"^encoder/": "encoder" if self.stage2 else "frozen"}
    self._lpips = None
    if config.loss.lpips > 0:
      self._lpips = builders.build_lpips(config.lpips, config.data.image_size)
    # The optional adversarial loss (stage 2, loss.adv > 0): a PatchGAN under params["disc"]
    # (not part of the autoencoder), trained in the same step as another player: its own Adam
    # settings (adv.lr, adv.b1, adv.b2: LDM's (0.5, 0.9)) and its own gradient clipping
    # (optim.make_optimizer's players).
    self.disc = builders.build_discriminator(config)
    self.players = {}
    if self.disc is not None:
      self.param_groups[r"^disc/"] = "disc"
      adv = config.adv
      if adv.start_step < 0:  # before config.json is written: the run records its start
        adv.start_step = int(round(adv.get("start_fraction", 0.5) * config.num_train_steps))
        logging.info(
            "adv.start_step = %d (adv.start_fraction %g of %d steps)",
            adv.start_step,
            adv.get("start_fraction", 0.5),
            config.num_train_steps,
        )
      self.players["disc"] = {
          "lr": float(adv.get("lr", 0.0)),
          "b1": float(adv.get("b1", config.optim.b1)),
          "b2": float(adv.get("b2", config.optim.b2)),
      }

  # ---- init -----------------------------------------------------------------------------
  def init(self, rng: jax.Array):
    s = self.config.data.image_size
    dummy = jnp.zeros((1, s, s, 3), jnp.float32)
    params = self.model.init(rng, dummy)["params"]
    if self.disc is not None:
      params["disc"] = self.disc.init(jax.random.fold_in(rng, 1), dummy)["params"]
    # E_s's copy of the encoder's last blocks is made in warm_start, once the encoder's
    # weights are loaded (here the encoder is still random).
    return params, self.make_frozen(params)

  def make_frozen(self, params):
    return {"encoder": jax.tree.map(jnp.copy, params["encoder"])} if self.stage2 else {}

  def constants(self):
    return {} if self._lpips is None else {"lpips": self._lpips[1]}

  def warm_start(self, params):
    """Stage 2: stage 1's EMA weights (E_s included, as stage 1 trained it).

    Otherwise the pretrained encoder weights, if given, and then (with
    `model.sem_init_from_encoder`) E_s's blocks as copies of that loaded encoder's last
    blocks. Returns None when nothing changes.
    """
    if self.stage2:
      if not self.config.init_from:
        logging.warning("Stage 2 without --config.init_from: starting from scratch.")
      else:
        logging.info("Initialising from stage-1 workdir %s", self.config.init_from)
        ae = {k: v for k, v in params.items() if k != "disc"}  # stage 1 has no discriminator
        restored = checkpoint.restore_params(self.config.init_from, ae, key="ema_params")
        return {**restored, **({"disc": params["disc"]} if "disc" in params else {})}
    weights = builders.encoder_weights_dir(self.config.model.encoder)
    if not weights and not self.config.model.sem_init_from_encoder:
      return None
    if weights:
      params = {
          **params,
          "encoder": builders.load_encoder_params(
              weights, params["encoder"], builders.encoder_kind(self.config.model.encoder)
          ),
      }
    else:
      logging.warning(
          "Encoder with RANDOM weights (model.encoder.weights=%r).",
          self.config.model.encoder.weights,
      )
    if self.config.model.sem_init_from_encoder:
      params = builders.sem_blocks_from_encoder(params)
    return params

  # ---- training ---------------------------------------------------------------------------
  def loss(self, params, frozen, consts, batch, rng, step=0):
    cfg = self.config.loss
    x = batch["image"]
    apply = functools.partial(self.model.apply, {"params": params})
    f, stream = apply(x, method=PSVAE.encoder_outputs)  # target space / what E_s reads
    if self.stage2:
      target = jax.lax.stop_gradient(self.model.apply({"params": frozen}, x, method=PSVAE.features))
    else:
      f = target = jax.lax.stop_gradient(f)
      stream = jax.lax.stop_gradient(stream)
    mu, logvar = apply(stream, method=PSVAE.encode_features)
    z = reparameterize(rng, mu, logvar)
    f_hat = apply(z, method=PSVAE.decode_features)
    z_pix = z if self.stage2 else jax.lax.stop_gradient(z)
    x_hat = apply(z_pix, method=PSVAE.decode)

    l_sem = losses.semantic_loss(f_hat, target, cfg.cos)
    l_kl = losses.kl_loss(mu, logvar)
    l_pix = losses.pixel_loss(x_hat, x)
    total = cfg.sem * l_sem + cfg.pix * l_pix + cfg.kl * l_kl
    metrics = {
        "loss": total,
        "loss_sem": l_sem,
        "loss_pix": l_pix,
        "loss_kl": l_kl,
        "sem_recon_cos": jnp.mean(losses.cosine(f_hat, target)),
    }
    if self._lpips is not None:
      l_lp = jnp.mean(self._lpips[0].apply(consts["lpips"], x_hat, x))
      total = total + cfg.lpips * l_lp
      metrics.update(loss=total, loss_lpips=l_lp)
    if self.disc is not None:
      adv, adv_metrics = self._adversarial(params, consts, x, x_hat, z_pix, step)
      total = total + adv
      metrics.update(adv_metrics, loss=total)
    if self.stage2:
      metrics["semantic_cos"] = jnp.mean(losses.cosine(f, target))
    return total, metrics

  def _reconstruction_nll(self, consts, x_hat, x):
    """The pixel terms the adversarial weight balances against: γ·pixel + λ·LPIPS."""
    cfg = self.config.loss
    nll = cfg.pix * losses.pixel_loss(x_hat, x)
    if self._lpips is not None:
      nll = nll + cfg.lpips * jnp.mean(self._lpips[0].apply(consts["lpips"], x_hat, x))
    return nll

  def _last_layer_vjp(self, params, z):
    """The vjp of the decoder output w.r.t. its last layer at (params, z), both held constant
    (one more decoder forward: differentiating the weight's own computation would make the
    step second-order)."""
    params, z = jax.lax.stop_gradient((params, z))
    last = pixel_decoder.last_layer(params["pix_dec"])

    def decode(last_params):
      p = {**params, "pix_dec": {**params["pix_dec"], last: last_params}}
      return self.model.apply({"params": p}, z, method=PSVAE.decode)

    return jax.vjp(decode, params["pix_dec"][last])[1]

  def _adversarial(self, params, consts, x, x_hat, z_pix, step):
    """(loss term, metrics) of the PatchGAN (LDM's recipe) from `adv.start_step` on.

    One differentiated scalar trains both players: the generator term -D(x_hat) reads the
    discriminator through stop_gradient (so it moves only the autoencoder) and the hinge term
    reads x_hat through stop_gradient (so it moves only the discriminator). The generator term is
    weighted by loss.adv x the adaptive weight ||∇_W nll|| / ||∇_W g|| (W: the pixel decoder's
    last kernel; from the decoder's vjp at this z, not differentiated) when adv.adaptive.
    """
    a = self.config.adv
    disc = lambda p, images: self.disc.apply({"params": p}, images)
    frozen_disc = jax.lax.stop_gradient(params["disc"])
    g_loss = losses.generator_adv_loss(disc(frozen_disc, x_hat))
    x_fake = jax.lax.stop_gradient(x_hat)
    logits_real, logits_fake = disc(params["disc"], x), disc(params["disc"], x_fake)
    d_loss = losses.hinge_d_loss(logits_real, logits_fake)
    if a.adaptive:
      last_vjp = self._last_layer_vjp({k: v for k, v in params.items() if k != "disc"}, z_pix)
      nll_x = jax.grad(lambda xh: self._reconstruction_nll(consts, xh, x))(x_fake)
      g_x = jax.grad(lambda xh: losses.generator_adv_loss(disc(frozen_disc, xh)))(x_fake)
      weight = losses.adaptive_weight(
          last_vjp(nll_x)[0]["kernel"], last_vjp(g_x)[0]["kernel"], a.max_weight
      )
    else:
      weight = jnp.ones((), jnp.float32)
    on = (jnp.asarray(step) >= a.start_step).astype(jnp.float32)
    term = on * (self.config.loss.adv * weight * g_loss + d_loss)
    return term, {
        "loss_adv_g": g_loss,
        "loss_disc": d_loss,
        "adv_weight": weight,
        "adv_on": on,
        "disc_logits_real": jnp.mean(logits_real),
        "disc_logits_fake": jnp.mean(logits_fake),
    }

  # ---- evaluation -------------------------------------------------------------------------
  @functools.partial(runtime.no_grad_jit, static_argnums=0)
  def _eval_batch(self, params, frozen, consts, x):
    apply = functools.partial(self.model.apply, {"params": params})
    f, stream = apply(x, method=PSVAE.encoder_outputs)
    target = self.model.apply({"params": frozen}, x, method=PSVAE.features) if self.stage2 else f
    mu, _ = apply(stream, method=PSVAE.encode_features)
    f_hat = apply(mu, method=PSVAE.decode_features)
    x_hat = jnp.clip(apply(mu, method=PSVAE.decode), -1.0, 1.0)
    out = {
        "psnr": image_metrics.psnr(x_hat, x),
        "ssim": image_metrics.ssim(x_hat, x),
        "semantic_cos": jnp.mean(losses.cosine(f, target), axis=(1, 2)),
        "sem_recon_cos": jnp.mean(losses.cosine(f_hat, target), axis=(1, 2)),
    }
    if self._lpips is not None:
      out["lpips"] = self._lpips[0].apply(consts["lpips"], x_hat, x)
    return out, x_hat

  def eval_set(self):
    if not hasattr(self, "_eval_set"):
      self._eval_set = pipeline.build_eval_set(self.config.data, self.config.eval.num_images)
    return self._eval_set

  def reconstruct(self, state, consts, mesh, images: np.ndarray):
    """Per-image metrics and reconstructions for host images, in fixed-size padded batches."""
    bs = self.config.eval.batch_size
    parallel.check_batch_divides_mesh(bs, mesh)
    per_image, recons = {}, []
    for i in range(0, len(images), bs):
      chunk = images[i : i + bs]
      n = len(chunk)
      chunk = parallel.pad_rows(chunk, bs)  # the compiled batch size; padded rows dropped below
      x = jax.device_put(chunk, parallel.batch_sharding(mesh, 4))
      out, x_hat = self._eval_batch(state.ema_params, state.frozen, consts, x)
      for k, v in parallel.to_host(out).items():  # all-gathered across processes
        per_image.setdefault(k, []).append(np.asarray(v)[:n])
      recons.append(parallel.to_host(x_hat)[:n])
    return {k: np.concatenate(v) for k, v in per_image.items()}, np.concatenate(recons)

  def evaluate(self, state, consts, mesh, step):
    del step
    data = self.eval_set()
    per_image, recons = self.reconstruct(state, consts, mesh, data["image"])
    scalars = {k: float(np.mean(v)) for k, v in per_image.items()}
    recon_u8 = pixels.to_uint8(recons)
    checker = eval_checkers.get(self.config.data.source)  # registered for this data (shapes)
    if checker is not None:
      scalars["recon_adherence"] = eval_checkers.adherence(recon_u8, data["caption"], checker)
    k = min(self.config.eval.num_grid, len(recons))
    pairs = np.concatenate([pixels.to_uint8(data["image"][:k]), recon_u8[:k]])
    images = {"reconstructions": writers.grid(pairs, cols=k)}
    if self.config.get("evals"):  # configured evaluators (rfid, lpips, ...): eval/<name>/<key>
      scalars.update(
          eval_runner.in_training(
              self.config,
              mesh,
              lambda n: pipeline.build_eval_set(self.config.data, n),
              reconstruct=lambda x: self.reconstruct(state, consts, mesh, x)[1],
          )
      )
    return scalars, images

  # ---- after training ---------------------------------------------------------------------
  def _encode(self, params, x):
    return self.model.apply({"params": params}, x, method=PSVAE.encode)

  def finish(self, state, consts, mesh, workdir, train_iter):
    """Writes DIR/latent_stats.npz for stage 3 (over config.latent_stats_images): stage 2's is
    what the method diffuses in; stage 1's lets a DiT train on the S-VAE latent too (the
    ablation, psvae_jax/experiments/ablation.py).

    A re-run keeps a file that already describes this step over as many images.
    """
    del consts
    num_images = self.config.latent_stats_images
    step = int(jax.device_get(state.step))
    if latent_stats.is_current(workdir, num_images, step):
      logging.info(
          "latent_stats: %s/%s already describes step %d over %d images; kept.",
          workdir,
          workdir_lib.LATENT_STATS,
          step,
          num_images,
      )
      return
    stats = latent_stats.compute(
        self._encode,
        state.ema_params,
        train_iter,
        mesh,
        max(1, num_images // self.config.batch_size),
        num_images=num_images,
        step=step,
    )
    latent_stats.save(workdir, stats)
    logging.info("%s", latent_stats.describe(stats))

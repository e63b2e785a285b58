"""Stage 2's optional adversarial loss (config loss.adv, adv.*): LDM's PatchGAN, hinge loss,
the adaptive weight against a hand computation, which player each term moves, the start step,
and a trained workdir that loads and exports without its discriminator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import psvae as psvae_config
from configs import svae as svae_config
from psvae_jax import frozen_psvae
from psvae_jax import losses
from psvae_jax.models.autoencoder import PSVAE, reparameterize
from psvae_jax.train import preflight
from psvae_jax.train.tasks import autoencoder

from conftest import SMALL_AE, run_main  # pylint: disable=g-bad-import-order

BATCH = 4


def _config(adv=0.5, start=0, adaptive=True):
  c = psvae_config.get_config("tiny")
  c.model.encoder.num_layers = 1
  c.model.pixel_decoder.num_layers = 1
  c.batch_size = BATCH
  c.loss.adv = adv
  c.adv.update(start_step=start, ndf=16, n_layers=2, adaptive=adaptive)
  return c


def _setup(config):
  task = autoencoder.AutoencoderTask(config)
  params, frozen = task.init(jax.random.key(0))
  rng = np.random.default_rng(0)  # perturb: zero-initialised output layers block gradients
  params = jax.tree.map(lambda x: x + 0.02 * rng.standard_normal(x.shape).astype(x.dtype), params)
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (BATCH, 32, 32, 3)), jnp.float32)
  return task, params, frozen, {"image": x}


def test_hinge_and_generator_losses_by_hand():
  real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-2.0, 0.0, 1.5])
  # relu(1 - real) = [0, .5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2.5] -> mean 7/6
  assert float(losses.hinge_d_loss(real, fake)) == pytest.approx(0.5 * (5 / 6 + 7 / 6))
  assert float(losses.generator_adv_loss(fake)) == pytest.approx(0.5 / 3)  # -mean(fake)
  w = losses.adaptive_weight(jnp.array([3.0, 4.0]), jnp.array([0.0, 10.0]))
  assert float(w) == pytest.approx(5.0 / (10.0 + 1e-4))
  assert float(losses.adaptive_weight(jnp.ones(2), jnp.zeros(2), max_weight=7.0)) == 7.0


def test_adaptive_weight_matches_the_gradient_norms_at_the_last_layer():
  """The task's weight (from the decoder's vjp) = ||d nll/dW|| / (||d g/dW|| + 1e-4) with W the
  pixel decoder's conv_out kernel, each gradient taken here through the whole forward."""
  task, params, frozen, batch = _setup(_config())
  rng = jax.random.key(3)
  _, m = jax.jit(task.loss)(params, frozen, {}, batch, rng)
  x, model = batch["image"], task.model
  _, stream = model.apply({"params": params}, x, method=PSVAE.encoder_outputs)
  mu, logvar = model.apply({"params": params}, stream, method=PSVAE.encode_features)
  z = reparameterize(rng, mu, logvar)

  def decode(w):
    pix = {**params["pix_dec"], "conv_out": {**params["pix_dec"]["conv_out"], "kernel": w}}
    return model.apply({"params": {**params, "pix_dec": pix}}, z, method=PSVAE.decode)

  w0 = params["pix_dec"]["conv_out"]["kernel"]
  nll = lambda w: task.config.loss.pix * losses.pixel_loss(decode(w), x)
  gen = lambda w: -jnp.mean(task.disc.apply({"params": params["disc"]}, decode(w)))
  g_nll, g_gen = jax.grad(nll)(w0), jax.grad(gen)(w0)
  want = np.linalg.norm(g_nll) / (np.linalg.norm(g_gen) + 1e-4)
  assert float(m["adv_weight"]) == pytest.approx(float(want), rel=1e-4)
  assert float(m["adv_weight"]) != pytest.approx(1.0, rel=1e-2)  # it is a real weight here


def test_each_term_moves_only_its_player_and_waits_for_the_start_step():
  config = _config(adaptive=False)
  task, params, frozen, batch = _setup(config)
  rng = jax.random.key(3)
  grads, m = jax.jit(jax.grad(task.loss, has_aux=True))(params, frozen, {}, batch, rng, 5)
  # The discriminator's gradient is the hinge loss's alone, on the detached reconstruction.
  x_hat = jax.lax.stop_gradient(
      task.model.apply(
          {"params": params},
          reparameterize(
              rng, *task.model.apply({"params": params}, batch["image"], method=PSVAE.encode)
          ),
          method=PSVAE.decode,
      )
  )
  d = lambda p: losses.hinge_d_loss(
      task.disc.apply({"params": p}, batch["image"]), task.disc.apply({"params": p}, x_hat)
  )
  want = jax.grad(d)(params["disc"])
  for a, b in zip(jax.tree.leaves(grads["disc"]), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  # The autoencoder's: the same loss without the adversary + adv x the generator term.
  plain = autoencoder.AutoencoderTask(_config(adv=0.0))
  ae = {k: v for k, v in params.items() if k != "disc"}
  g_plain = jax.grad(lambda p: plain.loss(p, frozen, {}, batch, rng)[0])(ae)
  gen = lambda p: config.loss.adv * losses.generator_adv_loss(
      task.disc.apply(
          {"params": params["disc"]},
          task.model.apply(
              {"params": p},
              reparameterize(
                  rng, *task.model.apply({"params": p}, batch["image"], method=PSVAE.encode)
              ),
              method=PSVAE.decode,
          ),
      )
  )
  g_gen = jax.grad(gen)(ae)
  for a, b, c in zip(*(jax.tree.leaves(t["pix_dec"]) for t in (grads, g_plain, g_gen))):
    np.testing.assert_allclose(a, b + c, rtol=1e-3, atol=1e-6)
  assert float(m["adv_on"]) == 1.0
  # Before adv.start_step neither term counts: the discriminator gets no gradient.
  task.config.adv.start_step = 6
  grads, m = jax.grad(task.loss, has_aux=True)(params, frozen, {}, batch, rng, 5)
  assert float(m["adv_on"]) == 0.0 and _zero(grads["disc"])
  loss_plain, _ = plain.loss(ae, frozen, {}, batch, rng)
  assert float(task.loss(params, frozen, {}, batch, rng, 5)[0]) == pytest.approx(
      float(loss_plain), rel=1e-6
  )


def _zero(tree):
  return all(not np.any(np.asarray(x)) for x in jax.tree.leaves(tree))


def test_stage1_with_adv_refuses():
  c = svae_config.get_config("tiny")
  c.loss.adv = 0.5
  with pytest.raises(preflight.ConfigError, match="loss.adv=0.5 is a stage-2 option"):
    preflight.check(c)


def test_the_adversarial_term_starts_at_a_fraction_of_the_run_by_default():
  """adv.start_step -1 (the default): adv.start_fraction (0.5) of num_train_steps, resolved when
  the task is built (before config.json is written); a given start_step is kept."""
  assert psvae_config.get_config("tiny").adv.start_step == -1
  c = _config(start=-1)
  c.num_train_steps = 900
  preflight.check(c)
  autoencoder.AutoencoderTask(c)
  assert c.adv.start_step == 450
  c = _config(start=7)
  autoencoder.AutoencoderTask(c)
  assert c.adv.start_step == 7
  c.adv.start_step = -2
  with pytest.raises(preflight.ConfigError, match=r"start_step=-2"):
    preflight.check(c)
  c.adv.update(start_step=-1, start_fraction=1.5)
  with pytest.raises(preflight.ConfigError, match=r"start_fraction=1.5"):
    preflight.check(c)


def test_trained_with_adv_loads_and_exports_without_the_discriminator(tmp_path, svae_dir):
  from psvae_jax import export  # pylint: disable=g-import-not-at-top

  run_main(
      tmp_path / "psvae",
      "configs/psvae.py:tiny",
      *SMALL_AE,
      "--config.num_train_steps=3",
      "--config.eval_every=3",
      "--config.ckpt_every=3",
      f"--config.init_from={svae_dir}",
      "--config.loss.adv=0.5",
      "--config.adv.start_step=1",
      "--config.adv.ndf=16",
      "--config.adv.n_layers=2",
  )
  ae = frozen_psvae.load_autoencoder(str(tmp_path / "psvae"))
  assert "disc" not in ae.params and "pix_dec" in ae.params
  out = str(tmp_path / "export")
  export.export(str(tmp_path / "psvae"), out)
  again = frozen_psvae.load_autoencoder(out)
  for a, b in zip(jax.tree.leaves(ae.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(a, b)


def test_each_player_is_clipped_by_its_own_norm():
  """One global-norm clip over both players let the discriminator's gradient (norm 9.2 at init
  against the autoencoder's 1.35) set the autoencoder's step; each is now clipped on its own,
  and without players the clip is the one global clip of before."""
  from psvae_jax.train import optim  # pylint: disable=g-import-not-at-top

  grads = {
      "pix_dec": {"w": np.full((4,), 1.35 / 2, np.float32)},
      "disc": {"w": np.full((4,), 4.6, np.float32)},
  }
  labels = lambda tree: optim.label_params(tree, {r"^disc/": "disc"})
  norm = lambda tree: float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree))))
  clip = optim.clip_by_player(1.0, labels, {"disc": {}})
  out, _ = clip.update(grads, clip.init(grads), grads)
  np.testing.assert_allclose(norm(out["pix_dec"]), 1.0, rtol=1e-6)  # 1.35 -> 1, not 1.35 / 9.3
  np.testing.assert_allclose(norm(out["disc"]), 1.0, rtol=1e-6)
  one = optim.clip_by_player(1.0, labels, None)
  both, _ = one.update(grads, one.init(grads), grads)
  np.testing.assert_allclose(norm(both), 1.0, rtol=1e-6)
  np.testing.assert_allclose(norm(both["pix_dec"]), 1.35 / norm(grads), rtol=1e-5)

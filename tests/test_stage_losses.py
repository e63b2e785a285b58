"""Stage losses through the production code: loop.train_step, AutoencoderTask.loss, DiTTask.loss.

- Stages 1/2: which parameters a step moves (encoder: stage 2 only; the frozen encoder copy:
  never) and where the pixel loss's gradient reaches (the encoder: stage 2 only).
- The cosine semantic term (losses.semantic_loss and `config.loss.cos` in a stage loss).
- Stage 3 ε-prediction: DiTTask.loss against a hand computation from DESIGN.md section 1, and
  condition dropout (p_uncond=1) giving the null-condition output.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from configs import dit as dit_config
from configs import psvae as psvae_config
from configs import svae as svae_config
from psvae_jax import losses
from psvae_jax import parallel
from psvae_jax.train import loop
from psvae_jax.train import optim
from psvae_jax.train import tasks
from psvae_jax.train.tasks import autoencoder
from psvae_jax.train.tasks import dit as dit_task

BATCH = 4


def _ae_config(stage: str, **loss):
  """The tiny stage-1/2 config with conftest's SMALL_AE shrinking (1 encoder/decoder layer)."""
  c = (svae_config if stage == "svae" else psvae_config).get_config("tiny")
  c.model.encoder.num_layers = 1
  c.model.pixel_decoder.num_layers = 1
  c.batch_size = BATCH
  c.loss.update(loss)
  return c


def _images(seed: int = 0) -> jax.Array:
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(-1, 1, (BATCH, 32, 32, 3)), jnp.float32)


def _leaves_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _norm(tree) -> float:
  leaves = jax.tree.leaves(tree)
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in leaves)))


_perturbed = helpers.perturbed  # zero-initialised layers (E_s's output) would block every gradient


def _run_steps(config, num_steps: int = 2):
  """(initial state, state after num_steps production train steps) on one fixed batch."""
  task = autoencoder.AutoencoderTask(config)
  tx = optim.make_optimizer(
      config.optim,
      config.num_train_steps,
      functools.partial(optim.label_params, groups=task.param_groups),
  )
  state0 = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(jax.random.key(0))
  # A warm start (as stage 2 from stage 1) to non-zero E_s outputs: at init the zero-initialised
  # E_s output layer passes no gradient back to the encoder.
  state0 = loop.reset_params(state0, _perturbed(state0.params), task=task)
  step = jax.jit(functools.partial(loop.train_step, task=task, tx=tx, config=config))
  state, batch = state0, {"image": _images()}
  for _ in range(num_steps):  # step 0 has learning rate 0 (warmup from 0): 2 steps move params
    state, metrics = step(state, batch, task.constants())
  assert int(state.skipped) == 0 and np.isfinite(float(metrics["loss"]))
  return jax.device_get(state0), jax.device_get(state)


def _loss_grads(stage: str, **loss):
  """(d loss_pix / d params, d loss / d params): the pixel term alone and the whole loss.

  The pixel term's gradient is that of metrics["loss_pix"], i.e. of the loss the task gives
  with sem=0, kl=0, lpips=0.
  """
  task = autoencoder.AutoencoderTask(_ae_config(stage, **loss))
  params, frozen = task.init(jax.random.key(0))
  loss_fn = lambda p: task.loss(
      p, frozen, task.constants(), {"image": _images()}, jax.random.key(1)
  )
  grads = jax.jit(
      lambda p: (
          jax.grad(lambda q: loss_fn(q)[1]["loss_pix"])(p),
          jax.grad(lambda q: loss_fn(q)[0])(p),
      )
  )
  return jax.device_get(grads(_perturbed(params)))


def test_stage2_step_trains_encoder_and_keeps_frozen_copy():
  state0, state = _run_steps(_ae_config("psvae"))
  assert not _leaves_equal(state0.params["encoder"], state.params["encoder"])
  assert _leaves_equal(state.frozen["encoder"], state0.params["encoder"])
  assert _leaves_equal(state.frozen["encoder"], state0.frozen["encoder"])


def test_stage1_step_leaves_encoder_unchanged():
  config = _ae_config("svae")
  # Weight decay at a non-zero learning rate would move an encoder the optimizer mask let through.
  config.optim.weight_decay, config.optim.warmup_steps = 1.0, 1
  config.optim.lr_groups.encoder = 1e-3
  state0, state = _run_steps(config)
  assert _leaves_equal(state0.params["encoder"], state.params["encoder"])
  assert not _leaves_equal(state0.params["sem_enc"], state.params["sem_enc"])
  assert not jax.tree.leaves(state.frozen)


def test_pixel_gradient_reaches_encoder_in_stage2():
  g_pix, _ = _loss_grads("psvae")
  assert _norm(g_pix["encoder"]) > 1e-6 and _norm(g_pix["sem_enc"]) > 1e-6


def test_stage1_gradients_stop_before_encoder_and_latent():
  g_pix, g_all = _loss_grads("svae", cos=0.5)  # every term on: semantic (+cos), KL, pixel
  assert _norm(g_pix["pix_dec"]) > 1e-6
  # D_p trains on a detached latent: nothing upstream of z gets a pixel gradient.
  assert _norm(g_pix["encoder"]) == 0.0 and _norm(g_pix["sem_enc"]) == 0.0
  # The encoder's features are detached too: no term reaches the encoder.
  assert _norm(g_all["encoder"]) == 0.0 and _norm(g_all["sem_enc"]) > 1e-6


# ---- the cosine semantic term -------------------------------------------------------------


def test_semantic_loss_matches_numpy():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
  b = (a + 0.7 * rng.standard_normal(a.shape)).astype(np.float32)
  a64, b64 = a.astype(np.float64), b.astype(np.float64)
  mse = np.mean(np.square(a64 - b64))
  cos = np.sum(a64 * b64, -1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1))
  np.testing.assert_allclose(float(losses.semantic_loss(a, b)), mse, rtol=1e-5)
  for w in (0.5, 2.0):
    want = mse + w * np.mean(1.0 - cos)
    np.testing.assert_allclose(float(losses.semantic_loss(a, b, w)), want, rtol=1e-5)
    assert abs(want - mse) > 0.05  # the cosine term is not negligible here


def test_stage_loss_cos_weight_adds_exactly_the_cosine_term():
  w, sem = 0.5, 2.0
  out = {}
  for cos in (0.0, w):
    task = autoencoder.AutoencoderTask(_ae_config("psvae", cos=cos, sem=sem))
    params, frozen = task.init(jax.random.key(0))
    fn = jax.jit(
        lambda p, fr, task=task: task.loss(
            p, fr, task.constants(), {"image": _images()}, jax.random.key(1)
        )
    )
    out[cos] = jax.device_get(fn(params, frozen))
  (l0, m0), (lw, mw) = out[0.0], out[w]
  one_minus_cos = 1.0 - float(m0["sem_recon_cos"])
  assert one_minus_cos > 0.01
  np.testing.assert_allclose(
      float(mw["loss_sem"]) - float(m0["loss_sem"]), w * one_minus_cos, rtol=1e-4
  )
  np.testing.assert_allclose(float(lw) - float(l0), sem * w * one_minus_cos, rtol=1e-4)


# ---- stage 3: ε-prediction through DiTTask.loss ---------------------------------------------


def _linear_alphas_cumprod(T=1000, beta_start=1e-4, beta_end=0.02) -> np.ndarray:
  """DESIGN.md section 1: linear beta from 1e-4 to 0.02 over T = 1000, abar_t = prod(1 - beta)."""
  return np.cumprod(1.0 - np.linspace(beta_start, beta_end, T, dtype=np.float64))


@pytest.fixture(scope="module")
def eps_task(trained_dit):
  config = dit_config.get_config("tiny")
  config.autoencoder = str(trained_dit / "psvae")
  config.text_encoder = str(trained_dit / "text")
  config.diffusion.objective = "eps"
  config.diffusion.schedule = "linear"
  config.train_text_encoder = False
  mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
  task = dit_task.DiTTask(config, mesh, *tasks.dit_pieces(config, mesh))
  params, _ = task.init(jax.random.key(0))
  # Random weights everywhere (adaLN-Zero starts the output layer at zero: the prediction
  # would be 0 whatever the inputs).
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(0)
  params = jax.tree.unflatten(
      tree, [jnp.asarray(0.05 * rng.standard_normal(x.shape), x.dtype) for x in leaves]
  )
  consts = task.constants()
  h, w, c = task.ae.latent_shape
  r = np.random.default_rng(1)
  batch = {
      "latent": jnp.asarray(r.standard_normal((BATCH, h, w, c)), jnp.float32),
      "input_ids": jnp.asarray(r.integers(1, 10, (BATCH, config.data.max_length)), jnp.int32),
      "attention_mask": jnp.ones((BATCH, config.data.max_length), jnp.int32),
  }
  return task, params, consts, batch


def _eps_losses(task, params, consts, batches, p_uncond, rng):
  """DiTTask.loss for each batch, one compile (p_uncond is read when the loss is traced)."""
  task.config.diffusion.p_uncond = p_uncond
  fn = jax.jit(lambda p, c, b, r: task.loss(p, {}, c, b, r)[0])
  return [float(fn(params, consts, b, rng)) for b in batches]


def _hand_eps_loss(task, params, consts, batch, rng, drop):
  _, r_t, r_noise, _ = jax.random.split(rng, 4)  # (encode, t, noise, dropout), as the loss
  z0 = (np.asarray(batch["latent"], np.float64) - np.asarray(consts["latent_mean"])) / np.asarray(
      consts["latent_std"]
  )
  b = z0.shape[0]
  t = np.asarray(jax.random.randint(r_t, (b,), 0, 1000))
  eps = np.asarray(jax.random.normal(r_noise, z0.shape, jnp.float32), np.float64)
  abar = _linear_alphas_cumprod()[t].reshape(b, 1, 1, 1)
  z_t = np.sqrt(abar) * z0 + np.sqrt(1.0 - abar) * eps
  cond = task.gen.condition(params, consts, batch)
  pred = task.model.apply(
      {"params": params["dit"]},
      jnp.asarray(z_t, jnp.float32),
      jnp.asarray(t, jnp.float32),
      **cond,
      drop=jnp.full((b,), drop),
  )
  return float(np.mean(np.square(np.asarray(pred, np.float64) - eps)))


def test_eps_loss_matches_hand_computation(eps_task):
  task, params, consts, batch = eps_task
  rng = jax.random.key(7)
  (got,) = _eps_losses(task, params, consts, [batch], 0.0, rng)
  want = _hand_eps_loss(task, params, consts, batch, rng, drop=False)
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_eps_loss_condition_dropout_gives_null_condition(eps_task):
  task, params, consts, batch = eps_task
  rng = jax.random.key(7)
  other = dict(batch, input_ids=(batch["input_ids"] % 9) + 1)  # different captions
  dropped, dropped_other = _eps_losses(task, params, consts, [batch, other], 1.0, rng)
  kept, kept_other = _eps_losses(task, params, consts, [batch, other], 0.0, rng)
  np.testing.assert_allclose(
      dropped, _hand_eps_loss(task, params, consts, batch, rng, drop=True), rtol=1e-4
  )
  # The null condition ignores the captions; the kept condition does not.
  np.testing.assert_allclose(dropped_other, dropped, rtol=1e-6)
  assert abs(kept_other - kept) > 1e-4

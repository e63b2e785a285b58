"""Tests for the DiT: shapes, adaLN-Zero init, null-condition dropping, masking,
FLOPs of DiT-S/2."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from psvae_jax.models import dit

B, L, D_TEXT = 2, 5, 16  # batch, text tokens, text width
# The init key uses the "unsafe_rbg" PRNG: on XLA:CPU every threefry hash in a jitted init (one per
# parameter) adds compile time (~1.5 s each with jax_threefry_partitionable); unsafe_rbg uses
# RngBitGenerator only.
_INIT_KEY = jax.random.key(0, impl="unsafe_rbg")


def _tiny(**kw) -> dit.DiT:
  return dit.DiT(**{**dit.dit_config("tiny"), "depth": 2, **kw})


def _text_inputs(h=4, w=4, c=8):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((B, h, w, c)).astype(np.float32)
  t = np.array([10.0, 900.0], np.float32)
  context = rng.standard_normal((B, L, D_TEXT)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  pooled = rng.standard_normal((B, D_TEXT)).astype(np.float32)
  return x, t, context, mask, pooled


def _perturbed(params, seed=1):
  """Params with every leaf moved off its init (so zero-initialised layers stop hiding
  everything)."""
  return helpers.perturbed(jax.tree.map(np.asarray, params), 0.05, seed)


@pytest.fixture(scope="module")
def text_model():
  model = _tiny(cond_type="text", patch_size=1)
  x, t, context, mask, pooled = _text_inputs()
  params = jax.jit(model.init)(_INIT_KEY, x, t, context, mask, pooled)["params"]
  apply = jax.jit(
      lambda p, x, t, ctx, m, pool, drop: model.apply({"params": p}, x, t, ctx, m, pool, drop=drop)
  )
  return params, apply


@pytest.fixture(scope="module")
def class_model():
  """Class-conditional DiT with random (not init) params: built from ``eval_shape``,
  no init compile."""
  model = _tiny(cond_type="class", patch_size=2, num_classes=10)
  x = np.random.default_rng(0).standard_normal((B, 8, 8, 4)).astype(np.float32)
  t, labels = np.array([3.0, 500.0], np.float32), np.array([1, 7], np.int32)
  shapes = jax.eval_shape(functools.partial(model.init, labels=labels), _INIT_KEY, x, t)["params"]
  params = _perturbed(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
  apply = jax.jit(lambda p, x, t, y, drop: model.apply({"params": p}, x, t, labels=y, drop=drop))
  return params, apply, (x, t, labels)


def test_shapes():
  x, t, context, mask, pooled = _text_inputs(8, 8, 6)
  for p in (1, 2):
    for kw, args in [
        (dict(cond_type="text"), dict(context=context, context_mask=mask, pooled=pooled)),
        (dict(cond_type="class", num_classes=10, remat=True), dict(labels=np.array([1, 2]))),
    ]:
      model = _tiny(patch_size=p, **kw)
      variables = jax.eval_shape(functools.partial(model.init, **args), jax.random.key(0), x, t)
      out = jax.eval_shape(functools.partial(model.apply, **args), variables, x, t)
      assert out.shape == (B, 8, 8, 6) and out.dtype == jnp.float32
      assert variables["params"]["patch_embed"]["kernel"].shape == (p * p * 6, 128)
  sigma = _tiny(cond_type="class", num_classes=10, learn_sigma=True, dtype=jnp.bfloat16)
  args = dict(labels=np.array([1, 2]))
  variables = jax.eval_shape(functools.partial(sigma.init, **args), jax.random.key(0), x, t)
  out = jax.eval_shape(functools.partial(sigma.apply, **args), variables, x, t)
  assert out.shape == (B, 8, 8, 12) and out.dtype == jnp.float32
  assert variables["params"]["label_embed"]["embedding"].shape == (11, 128)  # + the null class


def test_zero_output_at_init(text_model):
  params, apply = text_model
  x, t, context, mask, pooled = _text_inputs()
  assert params["null_context"].shape == (L, D_TEXT) and params["null_pooled"].shape == (D_TEXT,)
  out = apply(params, x, t, context, mask, pooled, np.array([False, True]))
  assert out.shape == x.shape
  np.testing.assert_array_equal(out, 0.0)  # adaLN-Zero: zero final layer (and identity blocks).
  for name in ("final_linear", "final_adaLN"):
    np.testing.assert_array_equal(params[name]["kernel"], 0.0)
  np.testing.assert_array_equal(params["blocks_0"]["adaLN_modulation"]["kernel"], 0.0)
  np.testing.assert_array_equal(params["blocks_0"]["cross_proj"]["kernel"], 0.0)


def test_text_drop_uses_null_condition(text_model):
  params, apply = text_model
  params = _perturbed(params)
  x, t, context, mask, pooled = _text_inputs()
  dropped = apply(params, x, t, context, mask, pooled, np.array([True, False]))
  null_ctx = np.broadcast_to(params["null_context"], context.shape)
  null_pool = np.broadcast_to(params["null_pooled"], pooled.shape)
  null = apply(params, x, t, null_ctx, np.ones_like(mask), null_pool, np.array([False, False]))
  kept = apply(params, x, t, context, mask, pooled, np.array([False, False]))
  np.testing.assert_allclose(dropped[0], null[0], atol=1e-6)
  np.testing.assert_allclose(dropped[1], kept[1], atol=1e-6)
  assert np.abs(kept[0] - null[0]).max() > 1e-3


def test_text_mask_hides_padding_tokens(text_model):
  params, apply = text_model
  params = _perturbed(params)
  x, t, context, mask, pooled = _text_inputs()
  other = context.copy()
  other[0, 3:] = 100.0  # Row 0's masked-out tokens.
  drop = np.array([False, False])
  np.testing.assert_allclose(
      apply(params, x, t, other, mask, pooled, drop),
      apply(params, x, t, context, mask, pooled, drop),
      atol=1e-6,
  )


def test_class_drop_uses_null_label(class_model):
  params, apply, (x, t, labels) = class_model
  dropped = apply(params, x, t, labels, np.array([True, False]))
  null = apply(params, x, t, np.array([10, 10], np.int32), np.array([False, False]))
  kept = apply(params, x, t, labels, np.array([False, False]))
  np.testing.assert_allclose(dropped[0], null[0], atol=1e-6)
  np.testing.assert_allclose(dropped[1], kept[1], atol=1e-6)
  assert np.abs(kept[0] - null[0]).max() > 1e-3


def test_patches_map_back_to_their_pixels(class_model):
  """With identity blocks (zero gates), output patch j depends on input patch j only:
  (un)patchify agree."""
  params, apply, (x, t, labels) = class_model
  params = {k: dict(v) for k, v in params.items()}
  for i in range(2):
    params[f"blocks_{i}"]["adaLN_modulation"] = jax.tree.map(
        np.zeros_like, params[f"blocks_{i}"]["adaLN_modulation"]
    )
  x2 = x.copy()
  x2[:, 2:4, 4:6] += 1.0  # One 2×2 patch: row 1, column 2 of the 4×4 token grid.
  drop = np.array([False, False])
  changed = np.abs(apply(params, x2, t, labels, drop) - apply(params, x, t, labels, drop)).max(
      axis=(0, 3)
  )
  assert (changed[2:4, 4:6] > 1e-4).all()
  changed[2:4, 4:6] = 0.0
  np.testing.assert_array_equal(changed, 0.0)


def test_dit_s2_flops():
  """DiT-S/2 at 256 px (32×32×4 latent, 256 tokens): paper 6.06 GFLOPs,
  which are MACs → 12.12 GFLOP."""
  model = dit.DiT(**dit.dit_config("S"), patch_size=2, cond_type="class", num_classes=1000)
  x = jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32)
  params = jax.eval_shape(
      lambda: model.init(
          jax.random.key(0), jnp.zeros(x.shape), jnp.zeros(1), labels=jnp.zeros(1, jnp.int32)
      )
  )["params"]
  fwd = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, labels=y))
  cost = fwd.lower(params, x, t, y).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # Dense/attention matmuls alone: 6.054 GMAC (12 blocks × 504.2 MMAC + embed/final 3.7 MMAC); XLA
  # adds the element-wise work (softmax, GELU, LayerNorm, residuals): ~0.1 GFLOP.
  assert abs(cost["flops"] / 12.12e9 - 1.0) < 0.05, cost["flops"]


def test_scanned_and_rematerialised_blocks_compute_the_same_function(class_model):
  """scan_blocks (one nn.scan over the blocks) and remat change the program, not the function:
  with the unrolled params stacked (dit.stack_blocks), outputs and gradients agree."""
  params, apply, (x, t, labels) = class_model
  drop = np.zeros((B,), bool)
  model = _tiny(
      cond_type="class",
      patch_size=2,
      num_classes=10,
      scan_blocks=True,
      remat=True,
      remat_policy="dots_saveable",
  )
  stacked = dit.stack_blocks(params)
  assert jax.tree.leaves(stacked["blocks"])[0].shape[0] == 2
  jax.tree.map(np.testing.assert_array_equal, dit.unstack_blocks(stacked), params)

  def loss(apply_fn, p):
    return jnp.mean(jnp.square(apply_fn(p)))

  ref_fn = lambda p: apply(p, x, t, labels, drop)
  scan_fn = lambda p: model.apply({"params": p}, x, t, labels=labels, drop=drop)
  np.testing.assert_allclose(jax.jit(scan_fn)(stacked), ref_fn(params), atol=1e-5, rtol=1e-5)
  g_ref = jax.jit(jax.grad(functools.partial(loss, ref_fn)))(params)
  g_scan = dit.unstack_blocks(jax.jit(jax.grad(functools.partial(loss, scan_fn)))(stacked))
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-4), g_scan, g_ref)
  with pytest.raises(ValueError, match="remat_policy"):
    _tiny(cond_type="class", remat=True, remat_policy="nope").init(_INIT_KEY, x, t, labels=labels)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_flat_dense_is_nn_dense(dtype):
  """layers.Dense (one 2-D GEMM, the DiT's dense layer) has nn.Dense's params, init and outputs."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from psvae_jax.models import layers  # pylint: disable=g-import-not-at-top

  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 8)), jnp.float32)
  init = nn.initializers.xavier_uniform()
  ours = layers.Dense(12, dtype=dtype, kernel_init=init, bias_init=nn.initializers.normal(1.0))
  ref = nn.Dense(12, dtype=dtype, kernel_init=init, bias_init=nn.initializers.normal(1.0))
  p_ours, p_ref = ours.init(_INIT_KEY, x), ref.init(_INIT_KEY, x)
  jax.tree.map(np.testing.assert_array_equal, p_ours, p_ref)
  y, y_ref = ours.apply(p_ours, x), ref.apply(p_ref, x)
  assert y.dtype == y_ref.dtype == dtype and y.shape == (2, 5, 12)
  np.testing.assert_allclose(
      np.asarray(y, np.float32),
      np.asarray(y_ref, np.float32),
      rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6,
      atol=1e-2 if dtype == jnp.bfloat16 else 1e-6,
  )


def test_a_ddt_head_replaces_the_final_layer():
  """model.head_width > 0: RAE's DiT^DH head (per-token adaLN on the blocks' output) predicts;
  zero at init (its output layer), then a function of the latent, t and the condition. An
  instruction-editing DiT's head reads the noisy latent, not the source."""
  model = _tiny(cond_type="class", patch_size=2, num_classes=10, head_width=96, head_heads=4)
  x = np.random.default_rng(0).standard_normal((B, 8, 8, 4)).astype(np.float32)
  t, labels = np.array([3.0, 500.0], np.float32), np.array([1, 7], np.int32)
  src = np.random.default_rng(1).standard_normal((B, 8, 8, 4)).astype(np.float32)
  init = jax.jit(functools.partial(model.init, labels=labels, source=src))
  params = init(_INIT_KEY, x, t)["params"]
  assert "final_linear" not in params and params["head"]["patch_embed"]["kernel"].shape == (16, 96)
  apply = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, labels=y, source=src))
  np.testing.assert_array_equal(apply(params, x, t, labels), 0.0)
  params = _perturbed(params)
  out = np.asarray(apply(params, x, t, labels))
  assert out.shape == (B, 8, 8, 4) and np.isfinite(out).all()
  for other in (apply(params, x[::-1], t, labels), apply(params, x, t[::-1], labels)):
    assert np.abs(np.asarray(other) - out).max() > 1e-3
  assert np.abs(np.asarray(apply(params, x, t, labels[::-1])) - out).max() > 1e-3


def test_a_ddt_head_trains_in_the_production_stage3_step():
  """--config.model.head_width through the task, the optimizer and EMA: two steps move the head
  (its zero output layer first: adaLN-Zero), the loss stays finite."""
  from bench import _common  # pylint: disable=g-import-not-at-top
  from configs import dit as dit_config  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top

  config = dit_config.get_config("tiny_class")
  config.model.update(num_classes=10, depth=1, head_width=64, head_heads=4)
  config.batch_size = 4
  task, tx, step = _common.production_dit_step(config, (8, 8, 4))
  state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(_INIT_KEY)
  rng = np.random.default_rng(0)
  batch = {
      "latent": rng.standard_normal((4, 8, 8, 4)).astype(np.float32),
      "label": np.arange(4, dtype=np.int32),
  }
  consts = task.constants()
  step = jax.jit(step)
  before = state.params["dit"]["head"]["final_linear"]["kernel"]
  for _ in range(2):
    state, metrics = step(state, batch, consts)
  assert np.isfinite(float(metrics["loss"]))
  assert (
      np.abs(np.asarray(state.params["dit"]["head"]["final_linear"]["kernel"] - before)).max() > 0
  )

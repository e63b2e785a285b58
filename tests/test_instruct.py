"""Instruction-editing triples of the shapes world (psvae_jax/shapes/instruct.py): held-out
instruction / scene combinations, and a scorer that tells a followed instruction from an ignored
one."""

import collections

import numpy as np
import pytest

from psvae_jax.shapes import instruct
from psvae_jax.shapes import world


def _triples(split, n=60, seed=0):
  return [instruct.triple(i, seed, split) for i in range(n)]


def test_triples_are_deterministic_and_phrased():
  a, b = instruct.triple(5, 1, "train"), instruct.triple(5, 1, "train")
  assert a == b and a != instruct.triple(6, 1, "train")
  ops = collections.Counter(t.op for t in _triples("train", 200))
  assert set(ops) == set(instruct.OPS) and min(ops.values()) >= 20, ops
  for t in _triples("train", 100):
    verb = {"recolor": "make ", "reshape": "turn ", "move": "move ", "remove": "remove the "}
    assert t.instruction.startswith(verb[t.op]), t
    if t.op == "remove":
      assert len(t.target) == 1 and len(t.source) == 2
    if t.op == "move":
      assert len(t.source) == 1 and t.target[0].position != t.source[0].position


def test_held_out_combinations_never_train():
  keys = {s: {t.key for t in _triples(s, 150)} for s in ("train", "val", "test")}
  assert all(instruct.key_split(k) == "train" for k in keys["train"])
  for t in _triples("train", 150):
    assert world.composition_split(t.source) == "train"
    assert not t.target or world.composition_split(t.target) == "train"
  held = [k for k in keys["test"] if instruct.key_split(k) == "test"]
  assert held, "no test triple holds out its instruction"
  # A held-out key's parts are seen in training: its op with its shape, and its new value.
  op, shape, value = held[0]
  seen = [t.key for t in _triples("train", 400)]
  assert any(k[:2] == (op, shape) for k in seen) and any(k[0] == op and k[2] == value for k in seen)


@pytest.mark.parametrize("split", ["train", "test"])
def test_scorer_tells_the_target_from_the_source(split):
  """The rendered target follows its instruction and keeps the other object; the untouched
  source does not follow it."""
  n, follows, ignored, kept = 40, [], [], []
  for t in _triples(split, n, seed=3):
    src, tgt = t.images(32)
    follows.append(instruct.success(tgt, t))
    ignored.append(instruct.success(src, t))
    p = instruct.preserved(tgt, t)
    if p is not None:
      kept.append(p)
  assert np.mean(follows) >= 0.9, np.mean(follows)
  assert np.mean(ignored) <= 0.05, np.mean(ignored)
  assert kept and np.mean(kept) >= 0.9
  with pytest.raises(ValueError, match="split must be one of"):
    instruct.triple(0, split="dev")


def test_dit_reads_a_source_latent_and_drops_it_to_zeros():
  """Instruction editing's image condition (InstructPix2Pix): the source latent concatenated to
  the noisy one; the prediction keeps the latent's channels."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from psvae_jax.models import dit  # pylint: disable=g-import-not-at-top

  m = dit.DiT(width=32, depth=1, num_heads=2, patch_size=2, cond_type="class", num_classes=3)
  r = np.random.default_rng(0)
  z, src = (jnp.asarray(r.standard_normal((2, 4, 4, 6)), jnp.float32) for _ in range(2))
  t, labels = jnp.array([10.0, 500.0]), jnp.array([0, 2])
  params = m.init(jax.random.key(0), z, t, labels=labels, source=src)["params"]
  assert params["patch_embed"]["kernel"].shape == (2 * 2 * 12, 32)  # (C + C_s) per patch pixel
  params = jax.tree.map(lambda x: x + 0.05 * r.standard_normal(x.shape).astype(x.dtype), params)
  f = lambda s, d=None: np.asarray(
      m.apply({"params": params}, z, t, labels=labels, source=s, drop_source=d)
  )
  out = f(src)
  assert out.shape == z.shape
  assert np.abs(out - f(src + 1.0)).max() > 1e-3  # the source matters
  np.testing.assert_array_equal(f(src, jnp.array([True, False]))[0], f(jnp.zeros_like(src))[0])
  np.testing.assert_array_equal(f(src, jnp.array([True, False]))[1], out[1])
  with pytest.raises(ValueError, match="does not match the latents"):
    f(src[:, :2])


def test_two_condition_guidance():
  """ε(∅,∅) + s_I (ε(I,∅) − ε(∅,∅)) + s_T (ε(I,T) − ε(I,∅)), one 3B batch, in the samplers."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from psvae_jax.diffusion import samplers  # pylint: disable=g-import-not-at-top

  calls = []

  def model_fn(z, t, c):  # ε(I, T) = 11, ε(I, ∅) = 1, ε(∅, ∅) = 0
    calls.append(z.shape[0])
    return z * 0 + (c["img"] + 10 * c["txt"])[:, None]

  ones, zeros = jnp.ones((2,)), jnp.zeros((2,))
  cond = {"img": ones, "txt": ones}
  uncond = ({"img": ones, "txt": zeros}, {"img": zeros, "txt": zeros})
  s = samplers.SampleSettings(guidance_scale=3.0, image_guidance_scale=2.0)
  pred = samplers._guided(model_fn, cond, uncond, s)
  np.testing.assert_allclose(pred(jnp.zeros((2, 1)), 500.0, 0.5), 2 * 1 + 3 * 10)
  assert calls == [6]
  outside = samplers._guided(model_fn, cond, uncond, s.replace(guidance_interval=(0.6, 1.0)))
  np.testing.assert_allclose(outside(jnp.zeros((2, 1)), 500.0, 0.5), 11.0)  # scales 1: ε(I,T)
  # Through the flow sampler: one Euler step from t=1 to 0 is z - v.
  z = samplers.euler_sample(
      model_fn, jnp.zeros((2, 1)), cond, uncond, samplers.traced(s.replace(steps=1)), max_steps=1
  )
  np.testing.assert_allclose(z, -(2 * 1 + 3 * 10))

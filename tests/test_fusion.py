"""The shared-block generator (models/fusion.py) and its DDT head (models/dit.DDTHead): what attends
to what, positions, condition dropping, and that the backbone is a Qwen2 stack a checkpoint loads
into."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from psvae_jax.models import fusion
from psvae_jax.weights import qwen2

_BACKBONE = dict(
    vocab_size=32,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    rope_theta=1e4,
    rms_norm_eps=1e-6,
)
_IDS = np.array([[3, 4, 5, 0], [6, 7, 0, 0]], np.int32)
_MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.int32)
_T = np.array([100.0, 700.0], np.float32)


@pytest.fixture(scope="module")
def model():
  m = fusion.FusionGenerator(_BACKBONE, patch_size=2, head_width=48, head_depth=1, head_heads=4)
  x = _latent(0)
  params = jax.jit(m.init)(jax.random.key(0), x, _T, _IDS, _MASK)["params"]
  params = helpers.perturbed(params, 0.05, seed=1)  # the zero-initialised head hides everything
  apply = jax.jit(lambda *a, **kw: m.apply({"params": params}, *a, **kw))
  states = jax.jit(lambda *a: m.apply({"params": params}, *a, method=m.states))
  return m, params, apply, states


def _latent(seed):
  return np.random.default_rng(seed).standard_normal((2, 4, 4, 3)).astype(np.float32)


def test_masks_and_positions():
  mask = np.asarray(fusion.sequence_mask(jnp.asarray(_MASK), 2))[:, 0]  # (B, 6, 6)
  # Row 1 (2 tokens): text query 1 sees text keys 0..1; padded text row 3 those and itself.
  assert mask[1, 1].tolist() == [True, True, False, False, False, False]
  assert mask[1, 3].tolist() == [True, True, False, True, False, False]
  # Latent queries see the valid text and every latent token; no text query sees a latent.
  assert mask[1, 4].tolist() == [True, True, False, False, True, True]
  assert not mask[:, :4, 4:].any()
  pos = np.asarray(fusion.sequence_positions(jnp.asarray(_MASK), 2))
  assert pos.tolist() == [[0, 1, 2, 3, 3, 4], [0, 1, 2, 3, 2, 3]]


def test_text_states_depend_on_neither_t_nor_the_latent(model):
  """What lets a sampler compute the text's keys and values once per prompt."""
  _, _, apply, states = model
  a = np.asarray(states(_latent(0), _T, _IDS, _MASK))
  b = np.asarray(states(_latent(1), _T[::-1], _IDS, _MASK))
  np.testing.assert_array_equal(a[:, :4], b[:, :4])
  assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-3
  out = np.asarray(apply(_latent(0), _T, _IDS, _MASK))
  assert out.shape == (2, 4, 4, 3) and out.dtype == np.float32 and np.isfinite(out).all()


def test_the_prompt_reaches_the_prediction_and_padding_does_not(model):
  _, _, apply, _ = model
  x = _latent(0)
  out = np.asarray(apply(x, _T, _IDS, _MASK))
  padded = _IDS.copy()
  padded[1, 2:] = 9  # other ids where the mask is 0
  np.testing.assert_allclose(np.asarray(apply(x, _T, padded, _MASK)), out, atol=1e-6)
  other = _IDS.copy()
  other[1, 1] = 9  # another valid token
  changed = np.asarray(apply(x, _T, other, _MASK))
  assert np.abs(changed[1] - out[1]).max() > 1e-4
  np.testing.assert_array_equal(changed[0], out[0])  # rows are independent


def test_drop_is_the_empty_prompt(model):
  """CFG's null condition: a dropped row sees no text, as the empty prompt (no tokens) does."""
  _, _, apply, _ = model
  x = _latent(0)
  drop = np.array([True, True])
  a = np.asarray(apply(x, _T, _IDS, _MASK, drop))
  b = np.asarray(apply(x, _T, _IDS[::-1].copy(), _MASK[::-1].copy(), drop))
  np.testing.assert_allclose(a, b, atol=1e-6)  # independent of the prompt
  empty = np.asarray(apply(x, _T, _IDS, np.zeros_like(_MASK)))
  np.testing.assert_allclose(a, empty, atol=1e-6)
  assert np.abs(a - np.asarray(apply(x, _T, _IDS, _MASK))).max() > 1e-4


def test_the_backbone_is_the_qwen2_a_checkpoint_loads_into(model):
  _, params, _, _ = model
  module = qwen2.Qwen2Model(**_BACKBONE)
  ids = jnp.zeros((1, 1), jnp.int32)
  want = jax.eval_shape(module.init, jax.random.key(0), ids, ids)["params"]
  got = jax.tree.map(lambda a: a.shape, params["backbone"])
  assert got == jax.tree.map(lambda a: a.shape, want)


def test_the_text_cache_gives_the_same_prediction(model):
  """The sampler's reuse: the text's keys and values computed once, then only the latent tokens
  run; equal to the whole sequence, dropped rows included."""
  m, params, apply, _ = model
  cache_fn = jax.jit(lambda *a: m.apply({"params": params}, *a, method=m.text_cache))
  for drop in (np.array([False, False]), np.array([False, True])):
    cache = cache_fn(_IDS, _MASK, drop)
    for seed, t in ((0, _T), (1, _T[::-1].copy())):
      x = _latent(seed)
      want = np.asarray(apply(x, t, _IDS, _MASK, drop))
      got = np.asarray(apply(x, t, text_cache=cache))
      np.testing.assert_allclose(got, want, atol=2e-5)


def test_the_source_enters_as_tokens_and_is_cached_with_the_text():
  """Instruction editing in the fusion generator: the source's tokens reach the prediction, a
  dropped source is no source at all, and the condition's cache (text and source: neither sees
  the noisy latent) gives the prediction of the whole sequence, every drop combination."""
  m = fusion.FusionGenerator(_BACKBONE, patch_size=2, head_width=48, head_depth=1, head_heads=4)
  src = _latent(5)
  params = jax.jit(m.init)(jax.random.key(0), _latent(0), _T, _IDS, _MASK, source=src)["params"]
  params = helpers.perturbed(params, 0.05, seed=1)
  apply = jax.jit(lambda *a, **kw: m.apply({"params": params}, *a, **kw))
  cache_fn = jax.jit(lambda *a: m.apply({"params": params}, *a, method=m.text_cache))
  x = _latent(0)
  with_src = np.asarray(apply(x, _T, _IDS, _MASK, source=src))
  assert np.abs(with_src - np.asarray(apply(x, _T, _IDS, _MASK, source=-src))).max() > 1e-4
  gone = np.asarray(apply(x, _T, _IDS, _MASK, source=src, drop_source=np.array([True, True])))
  np.testing.assert_allclose(gone, np.asarray(apply(x, _T, _IDS, _MASK)), atol=1e-6)
  for drop, drop_src in ((False, False), (True, False), (True, True), (False, True)):
    d, ds = np.array([drop, False]), np.array([drop_src, True])
    cache = cache_fn(_IDS, _MASK, d, src, ds)
    for seed, t in ((0, _T), (1, _T[::-1].copy())):
      x = _latent(seed)
      want = np.asarray(apply(x, t, _IDS, _MASK, d, source=src, drop_source=ds))
      np.testing.assert_allclose(np.asarray(apply(x, t, text_cache=cache)), want, atol=2e-5)


def test_the_fusion_generator_in_stage3(tmp_path):
  """configs/dit.py:tiny_fusion through the production stage 3: the task starts the blocks from
  generator.weights (a Hugging Face Qwen2 directory with its tokenizer), four optimizer steps
  move the backbone and the head, and the sampler, which computes the prompts' keys and values
  once before its scan, gives the latents of running the whole sequence at every step."""
  # pylint: disable=g-import-not-at-top
  import functools
  from bench import _common
  from configs import dit as dit_config
  from psvae_jax import generation
  from psvae_jax.diffusion import samplers
  from psvae_jax.shapes import text as shapes_text
  from psvae_jax.train import loop
  # pylint: enable=g-import-not-at-top

  words = "a red blue circle square on the left right and".split()
  qdir = shapes_text.build_demo_qwen2(
      str(tmp_path / "qwen2"),
      words,
      hidden_size=32,
      layers=2,
      heads=4,
      kv_heads=2,
      intermediate_size=48,
  )
  config = dit_config.get_config("tiny_fusion")
  config.generator.weights = qdir
  config.model.update(head_width=32, head_depth=1, head_heads=4)
  config.batch_size = 8

  task, tx, step = _common.production_dit_step(config, (4, 4, 4))
  state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(jax.random.key(0))
  state = loop.reset_params(state, task.warm_start(state.params), task=task)
  _, loaded = qwen2.load_qwen2(qdir)
  got = jax.tree.map(np.asarray, state.params["dit"]["backbone"])
  jax.tree.map(np.testing.assert_array_equal, got, loaded)

  prompts = ["a red circle on the left", "a blue square", "", "a blue circle on the right"] * 2
  batch = task.gen.tokenize(prompts)
  # The directory's own word-level tokenizer (not Qwen2's byte-level one, which AutoTokenizer
  # picks from config.json's model type and which read every prompt as one unknown token).
  assert batch["attention_mask"][0].sum() == 8  # BOS, the six words, EOS
  assert task.gen.tokenizer.unk_token_id not in batch["input_ids"][0]
  assert batch["attention_mask"][2].sum() == 2  # the empty prompt: BOS and EOS
  rng = np.random.default_rng(0)
  data = {"latent": rng.standard_normal((8, 4, 4, 4)).astype(np.float32), **batch}
  consts = task.constants()
  before = state.params["dit"]
  train = jax.jit(step)
  for _ in range(4):  # lr 0 at step 0; then the head's output layer, its adaLN, the backbone
    state, metrics = train(state, data, consts)
  assert np.isfinite(float(metrics["loss"]))
  for part in ("backbone", "head"):
    moved = jax.tree.map(
        lambda a, b: np.abs(np.asarray(a - b)).max(), state.params["dit"][part], before[part]
    )
    assert max(jax.tree.leaves(moved)) > 0, part

  rep = jax.sharding.NamedSharding(task.mesh, jax.sharding.PartitionSpec())
  # Perturbed: after four small steps the head's output barely reads the prompt.
  params = helpers.perturbed(jax.device_get(state.params), 0.05, seed=1)
  params, consts, gen = jax.device_put((params, consts), rep) + (task.gen,)
  s = gen.sample_settings(steps=4, guidance_scale=3.0, seed=0)
  z = generation.initial_noise(1, np.zeros(8, int), (4, 4, 4))  # one noise for every row
  got = np.asarray(gen.run(params, consts, batch, z, s))
  whole = lambda x, t, c: task.model.apply({"params": params["dit"]}, x, t, **c)
  cond = {k: jnp.asarray(v) for k, v in batch.items()}
  yes, no = jnp.zeros((8,), bool), jnp.ones((8,), bool)
  want = jax.jit(
      lambda x, st: samplers.euler_sample(
          whole,
          x,
          {**cond, "drop": yes},
          {**cond, "drop": no},
          st,
          max_steps=generation.MAX_STEPS,
      )
  )(z, samplers.traced(s))
  np.testing.assert_allclose(got, np.asarray(want), atol=2e-5)
  assert np.abs(got[0] - got[1]).max() > 2e-3  # the prompt reaches the sample
  np.testing.assert_allclose(got[0], got[4], atol=1e-6)

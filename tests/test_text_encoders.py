"""Parity tests: flax CLIP text / T5 encoders and importers vs tiny random HF models."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from safetensors.numpy import save_file

import helpers
from psvae_jax.shapes import text as demo_text
from psvae_jax.shapes import world
from psvae_jax.weights import clip as clip_weights
from psvae_jax.weights import t5 as t5_weights

_TOL = 1e-5
_VOCAB, _LEN, _BOS, _EOS = 100, 12, 98, 99
_VALID = (12, 7, 3)  # Real tokens per row; the rest is padding.


def _inputs(seed: int = 1, eos: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Random ids (B, L) with right padding; optional BOS ... EOS framing."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, _BOS, size=(len(_VALID), _LEN)).astype(np.int32)
  mask = (np.arange(_LEN)[None] < np.array(_VALID)[:, None]).astype(np.int32)
  if eos is not None:
    for row, n in enumerate(_VALID):
      ids[row, 0], ids[row, n - 1] = _BOS, eos
  ids = np.where(mask == 1, ids, 0)
  return ids, mask


@pytest.mark.parametrize(
    "hidden_act,legacy_eos,full_clip",
    [
        ("quick_gelu", False, False),
        ("gelu", True, True),  # CLIPModel dir (vision keys ignored), argmax pooling.
    ],
)
def test_clip_text_matches_transformers(tmp_path, hidden_act, legacy_eos, full_clip):
  eos = 2 if legacy_eos else _EOS
  text_cfg = dict(
      vocab_size=_VOCAB,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=2,
      max_position_embeddings=16,
      hidden_act=hidden_act,
      pad_token_id=0,
      bos_token_id=_BOS,
      eos_token_id=eos,
  )
  torch.manual_seed(0)
  if full_clip:
    vision_cfg = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
    )
    full = transformers.CLIPModel(
        transformers.CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=8)
    )
    model = full.text_model
    saver = full
  else:
    model = saver = transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_cfg))
  saver.eval()
  helpers.perturb_torch(saver, seed=0)
  saver.save_pretrained(str(tmp_path))

  module, params = clip_weights.load_clip_text(str(tmp_path))
  ids, mask = _inputs(eos=None if legacy_eos else _EOS)
  if legacy_eos:  # The legacy rule pools at the largest id: make it the last.
    for row, n in enumerate(_VALID):
      ids[row, n - 1] = _VOCAB - 1
  with torch.no_grad():
    ref = model(
        input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
    )
  hidden, pooled = jax.jit(module.apply)({"params": params}, ids, mask)
  assert hidden.shape == (len(_VALID), _LEN, 32) and pooled.shape == (3, 32)
  # All positions, padded ones included: with right padding and a causal mask
  # every query sees at least one real key, so they agree as well.
  assert helpers.max_err(hidden, ref.last_hidden_state.numpy()) <= _TOL
  assert helpers.max_err(pooled, ref.pooler_output.numpy()) <= _TOL


@pytest.mark.parametrize(
    "proj,full_model",
    [
        ("relu", False),
        ("gated-gelu", True),  # T5ForConditionalGeneration dir: decoder ignored.
    ],
)
def test_t5_encoder_matches_transformers(tmp_path, proj, full_model):
  cfg = transformers.T5Config(
      vocab_size=_VOCAB,
      d_model=32,
      d_kv=8,
      d_ff=64,
      num_layers=2,
      num_decoder_layers=1,
      num_heads=4,
      relative_attention_num_buckets=8,
      relative_attention_max_distance=20,
      feed_forward_proj=proj,
  )
  torch.manual_seed(0)
  cls = transformers.T5ForConditionalGeneration if full_model else transformers.T5EncoderModel
  model = cls(cfg).eval()
  helpers.perturb_torch(model, seed=0)
  model.save_pretrained(str(tmp_path))

  module, params = t5_weights.load_t5_encoder(str(tmp_path))
  assert module.is_gated_act == full_model
  ids, mask = _inputs()
  encoder = model.get_encoder() if full_model else model
  with torch.no_grad():
    ref = encoder(
        input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
    )
  ref = ref.last_hidden_state.numpy()
  hidden, pooled = jax.jit(module.apply)({"params": params}, ids, mask)
  # All positions compared (padded queries still attend to the real keys).
  assert helpers.max_err(hidden, ref) <= _TOL
  m = mask[..., None].astype(np.float32)
  assert helpers.max_err(pooled, (ref * m).sum(1) / m.sum(1)) <= _TOL


def test_bad_checkpoint_names_entries(tmp_path):
  cfg = transformers.T5Config(
      vocab_size=_VOCAB,
      d_model=32,
      d_kv=8,
      d_ff=64,
      num_layers=2,
      num_heads=4,
      relative_attention_num_buckets=8,
  )
  transformers.T5EncoderModel(cfg).save_pretrained(str(tmp_path))
  path = str(tmp_path / "model.safetensors")
  sd = load_file(path)
  del sd["encoder.block.1.layer.0.SelfAttention.q.weight"]
  sd["encoder.final_layer_norm.weight"] = np.ones(31, np.float32)
  sd["encoder.block.0.layer.0.SelfAttention.extra.weight"] = np.ones(2, np.float32)
  save_file(sd, path)
  with pytest.raises(ValueError) as err:
    t5_weights.load_t5_encoder(str(tmp_path))
  msg = str(err.value)
  assert "block_1/attn/q_proj/kernel" in msg  # missing
  assert "final_layer_norm/scale: got (31,), expected (32,)" in msg
  assert "encoder.block.0.layer.0.SelfAttention.extra.weight" in msg


def test_demo_text_encoder(tmp_path):
  vocab = demo_text.shapes_vocabulary()
  assert {"a", "and", "on", "the", "at", "in"} <= set(vocab)
  assert set(world.COLORS) | set(world.SHAPES) | set(world.POSITIONS) <= set(vocab)
  out = demo_text.build_demo_text_encoder(
      str(tmp_path / "te"), vocab, hidden_size=32, max_length=16
  )
  tokenizer = clip_weights.load_tokenizer(out)
  module, params = clip_weights.load_clip_text(out)
  objs = [world.ShapeObject("circle", "red", "left"), world.ShapeObject("square", "blue", "right")]
  texts = [world.caption(objs), world.caption(objs[1:])]
  ids, mask = clip_weights.tokenize(tokenizer, texts, max_length=16)
  assert ids.dtype == np.int32 and ids.shape == mask.shape == (2, 16)
  assert tokenizer.unk_token_id not in ids[mask == 1]
  assert tokenizer.decode(ids[0], skip_special_tokens=True) == texts[0]
  assert ids[0, mask[0].sum() - 1] == tokenizer.eos_token_id == module.eos_token_id
  hidden, pooled = jax.jit(module.apply)({"params": params}, ids, mask)
  assert hidden.shape == (2, 16, 32)
  assert helpers.max_err(pooled[0], pooled[1]) > 1e-3
  # Same word, different context -> different states; same prefix -> same.
  np.testing.assert_allclose(hidden[0, :2], hidden[1, :2], atol=1e-6)  # [BOS] a
  assert helpers.max_err(hidden[0, 2], hidden[1, 2]) > 1e-3  # red vs blue


def _demo_captions() -> list[str]:
  objs = [
      world.ShapeObject("circle", "red", "left"),
      world.ShapeObject("square", "blue", "right"),
      world.ShapeObject("triangle", "green", "top"),
  ]
  return [
      world.caption(objs[:2]),
      world.caption(objs[1:2]),
      world.caption(objs[2:]),
      world.caption(objs[::-1]),
  ]


def test_demo_text_encoder_loads_in_transformers(tmp_path):
  vocab = demo_text.shapes_vocabulary()
  out = demo_text.build_demo_text_encoder(
      str(tmp_path / "te"), vocab, hidden_size=32, layers=2, heads=2, max_length=16, seed=3
  )
  ref_model, info = transformers.CLIPTextModel.from_pretrained(
      out, local_files_only=True, output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert not info["mismatched_keys"] and not info["error_msgs"]
  ref_model.eval()
  module, params = clip_weights.load_clip_text(out)
  # Every stored tensor is consumed by our importer too.
  _, unused = clip_weights.convert_clip_text_state_dict(
      load_file(os.path.join(out, "model.safetensors"))
  )
  assert not unused
  tokenizer = clip_weights.load_tokenizer(out)
  ids, mask = clip_weights.tokenize(tokenizer, _demo_captions(), max_length=16)
  assert tokenizer.unk_token_id not in ids[mask == 1]
  with torch.no_grad():
    ref = ref_model(
        input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
    )
  hidden, pooled = jax.jit(module.apply)({"params": params}, ids, mask)
  assert helpers.max_err(hidden, ref.last_hidden_state.numpy()) <= _TOL
  assert helpers.max_err(pooled, ref.pooler_output.numpy()) <= _TOL


def test_demo_text_encoder_builds_without_torch(tmp_path):
  out = str(tmp_path / "te")
  script = textwrap.dedent(f"""
      import sys
      sys.modules["torch"] = None  # Any `import torch` now raises ImportError.
      from psvae_jax.shapes import text as demo_text
      demo_text.build_demo_text_encoder(
          {out!r}, demo_text.shapes_vocabulary(), hidden_size=32, seed=5)
      assert sys.modules["torch"] is None
      print("built-without-torch")
      """)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [repo] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
  )
  proc = subprocess.run(
      [sys.executable, "-c", script],
      cwd=repo,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr
  assert "built-without-torch" in proc.stdout
  # The result is a complete, deterministic directory: same seed, same weights.
  again = demo_text.build_demo_text_encoder(
      str(tmp_path / "again"), demo_text.shapes_vocabulary(), hidden_size=32, seed=5
  )
  a = load_file(os.path.join(out, "model.safetensors"))
  b = load_file(os.path.join(again, "model.safetensors"))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  module, params = clip_weights.load_clip_text(out)
  ids, mask = clip_weights.tokenize(
      clip_weights.load_tokenizer(out), _demo_captions(), max_length=16
  )
  hidden, _ = jax.jit(module.apply)({"params": params}, ids, mask)
  assert hidden.shape == (4, 16, 32) and np.all(np.isfinite(hidden))

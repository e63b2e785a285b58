"""Qwen2 port (models/qwen2.py, weights/qwen2.py) against transformers' Qwen2Model on tiny random
weights saved as Hugging Face directories: right padding in the mask, grouped-query attention,
a non-default rope theta, the causal LM's layout (``model.`` prefix, tied lm_head)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import helpers
from psvae_jax.weights import clip
from psvae_jax.weights import qwen2

_VOCAB, _LEN = 64, 7
_VALID = (7, 4)  # tokens per row; the rest is right padding


def _config(**kw):
  base = dict(
      vocab_size=_VOCAB,
      hidden_size=32,
      intermediate_size=48,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      rope_theta=5000.0,
      rms_norm_eps=1e-6,
      max_position_embeddings=64,
  )
  return transformers.Qwen2Config(**{**base, **kw})


def _inputs(seed=1):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, _VOCAB, size=(len(_VALID), _LEN)).astype(np.int32)
  mask = (np.arange(_LEN)[None] < np.array(_VALID)[:, None]).astype(np.int32)
  return ids, mask


@pytest.mark.parametrize(
    "causal_lm,kv_heads",
    [(True, 2), (False, 4)],  # Qwen2ForCausalLM dir with GQA; Qwen2Model dir, plain MHA
)
def test_qwen2_matches_transformers(tmp_path, causal_lm, kv_heads):
  torch.manual_seed(0)
  cfg = _config(num_key_value_heads=kv_heads, tie_word_embeddings=causal_lm)
  model = (transformers.Qwen2ForCausalLM if causal_lm else transformers.Qwen2Model)(cfg)
  helpers.perturb_torch(model, seed=0)  # q/k/v biases start at 0, norms at 1
  model.eval().save_pretrained(tmp_path)
  module, params = qwen2.load_qwen2(str(tmp_path))
  assert (module.num_kv_heads, module.rope_theta) == (kv_heads, 5000.0)
  ids, mask = _inputs()
  with torch.no_grad():
    base = model.model if causal_lm else model
    ref = base(
        input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
    ).last_hidden_state.numpy()
  ours = np.asarray(jax.jit(module.apply)({"params": params}, ids, mask))
  assert np.isfinite(ours).all()
  valid = mask.astype(bool)
  err = helpers.max_err(ours[valid], ref[valid])
  assert err <= 1e-4, f"Qwen2 max abs error {err:.2e}"
  # Padding does not reach the tokens: the short row alone gives the same states.
  alone = module.apply({"params": params}, ids[1:, : _VALID[1]], mask[1:, : _VALID[1]])
  assert helpers.max_err(alone[0], ours[1, : _VALID[1]]) <= 1e-5


def test_qwen2_refuses_what_it_does_not_implement(tmp_path):
  with pytest.raises(ValueError, match="use_sliding_window"):
    qwen2.config_values({"model_type": "qwen2", "use_sliding_window": True})
  with pytest.raises(ValueError, match="rope scaling"):
    qwen2.config_values({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
  with pytest.raises(ValueError, match="Not a Qwen2 config"):
    qwen2.config_values({"model_type": "llama"})
  torch.manual_seed(0)
  transformers.Qwen2Model(_config()).save_pretrained(tmp_path)
  cfg = qwen2.common.read_json(str(tmp_path))
  (tmp_path / "config.json").write_text(
      __import__("json").dumps({**cfg, "intermediate_size": 40})  # weights of another shape
  )
  with pytest.raises(ValueError, match="mlp"):
    qwen2.load_qwen2(str(tmp_path))


def test_qwen2_parameter_count_and_tokenizer_offline(tmp_path):
  """num_params agrees with the module's tree and with Qwen2.5-0.5B's published 494,032,768; a
  tokenizer saved in the directory loads without the network."""
  module = qwen2.qwen2_module_from_hf_config(_config().to_dict())
  ids = jnp.zeros((1, 1), jnp.int32)
  tree = jax.eval_shape(module.init, jax.random.key(0), ids, ids)["params"]
  assert qwen2.num_params(_config().to_dict()) == sum(x.size for x in jax.tree.leaves(tree))
  assert qwen2.num_params(qwen2.NAMED["qwen2.5-0.5b"]) == 494_032_768
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  from tokenizers import models as tok_models  # pylint: disable=g-import-not-at-top
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top

  words = ["<pad>", "<unk>", "a", "red", "circle", "on", "the", "left"]
  tok = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>"
  )
  fast.save_pretrained(tmp_path)
  loaded = clip.load_tokenizer(str(tmp_path))
  got, mask = clip.tokenize(loaded, ["a red circle on the left", "a blue circle"], 8)
  assert got[0, :6].tolist() == [2, 3, 4, 5, 6, 7] and mask[0].sum() == 6
  assert got[1, 1] == 1 and mask[1].sum() == 3  # "blue" is unknown

"""Evaluation on the user's own labelled data (issue 14): the trained feature net, classifier
accuracy of generated samples, and evaluate's held-out data checked before generating."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from psvae_jax import parallel
from psvae_jax.evals import evaluators
from psvae_jax.evals import feature_net
from psvae_jax.evals import runner

K = 4
COLORS = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]], np.uint8)


def _class_images(labels, size=8, seed=0):
  rng = np.random.default_rng(seed)
  x = COLORS[np.asarray(labels)][:, None, None, :].astype(np.int32)
  x = x + rng.integers(-20, 21, (len(labels), size, size, 3))
  return np.clip(x, 0, 255).astype(np.uint8)


def _color_logits(x):
  """A perfect judge of the four colours: negative distance of the mean colour to each."""
  mean = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
  return -jnp.sum((mean[:, None, :] - COLORS[None].astype(jnp.float32)) ** 2, -1)


def _ctx(generate, eval_data=None):
  return evaluators.EvalContext(
      mesh=parallel.make_mesh(-1, 1),
      batch_size=8,
      eval_data=eval_data or (lambda n: {"image": np.zeros((n, 8, 8, 3), np.float32)}),
      generate=generate,
      classifiers={"classifier": (jax.jit(_color_logits), ["red", "green", "blue", "yellow"])},
      num_classes=K,
  )


def test_class_accuracy_of_generated_samples():
  seen = []

  def right(captions, steps, guidance_scale, seed, labels=None):
    seen.append(list(labels))
    return _class_images(labels)

  def wrong(captions, steps, guidance_scale, seed, labels=None):
    return _class_images((np.asarray(labels) + 1) % K)

  cfg = {"type": "class_accuracy", "num_samples": 22, "guidance_scale": 3.0}
  out = evaluators.get_evaluator(cfg).run(_ctx(right))
  assert seen[0] == [i % K for i in range(22)]  # class-balanced over the model's classes
  assert out["accuracy"] == 1.0 and out["num_samples"] == 22
  assert out["per_class/yellow"] == 1.0
  bad = evaluators.get_evaluator(cfg).run(_ctx(wrong))
  assert bad["accuracy"] == 0.0 and bad["per_class/red"] == 0.0


def test_too_few_eval_images_fail_before_generating():
  def generate(*args, **kwargs):
    raise AssertionError("generated before checking the eval data")

  def eval_data(n):
    if n > 10:
      raise ValueError(f"Asked for {n} eval images but the split has only 10 good ones.")
    return {"image": np.zeros((n, 8, 8, 3), np.float32), "caption": [""] * n}

  evals = {
      "fid": {"type": "fid", "feature": "f", "num_samples": 4, "num_reference": 12},
      "psnr": {"type": "psnr", "num_images": 8},
  }
  with pytest.raises(runner.EvalInputError, match="'fid' needs 12 held-out images"):
    runner.check_eval_data(evals, eval_data)
  evals["fid"]["num_reference"] = 10
  assert runner.check_eval_data(evals, eval_data) == {"fid": 10, "psnr": 8}


def _write_folder(root, per_class, seed):
  for c in range(K):
    (root / f"{c}_c").mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(_class_images([c] * per_class, size=12, seed=seed + c)):
      Image.fromarray(im).save(root / f"{c}_c" / f"{i}.png")


def test_feature_net_learns_held_out_classes(tmp_path):
  _write_folder(tmp_path / "d" / "train", 30, 0)
  _write_folder(tmp_path / "d" / "test", 8, 100)
  out = str(tmp_path / "clf.safetensors")
  meta = feature_net.train(
      f"folder:path={tmp_path / 'd'}", out, image_size=12, steps=40, batch_size=16, eval_every=20
  )
  assert meta["num_test"] == 32 and meta["class_names"] == [f"{c}_c" for c in range(K)]
  assert meta["test_accuracy"] >= 0.9, meta
  fn, dim = feature_net.load_feature_net(out, 12)
  assert fn(_class_images([0, 1], size=12)).shape == (2, dim)
  logits, names = feature_net.load_logits(out)
  assert names == meta["class_names"]
  pred = np.argmax(np.asarray(logits(_class_images(range(K), size=12, seed=5))), -1)
  np.testing.assert_array_equal(pred, np.arange(K))

  # The periodic eval of a class DiT (runner.in_training) judges its samples with this file.
  import ml_collections  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict(
      dict(
          eval=dict(batch_size=8),
          data=dict(image_size=12),
          model=dict(cond_type="class", num_classes=K),
          evals=dict(acc=dict(type="class_accuracy", weights=out, num_samples=8)),
      )
  )
  for shift, want in ((0, 1.0), (1, 0.0)):
    gen = lambda c, steps, guidance_scale, seed, labels=None, s=shift: _class_images(
        (np.asarray(labels) + s) % K, size=12, seed=9
    )
    res = runner.in_training(config, parallel.make_mesh(-1, 1), None, generate=gen)
    assert res["acc/accuracy"] == want and res["acc/num_samples"] == 8, res
  del config.evals.acc["weights"]
  with pytest.raises(ValueError, match="evals.acc: feature 'classifier' in training needs"):
    runner.in_training(config, parallel.make_mesh(-1, 1), None, generate=gen)


def test_figures_never_change_meaning_under_one_name(tmp_path):
  """evaluate overwrote fid_proxy/fid with a figure of other settings under the same name."""
  import json  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict(dict(proxy_weights="p.safetensors"))
  evals = {"fid": {"type": "fid", "num_samples": 8}}
  names = runner.write_results(str(tmp_path), 5, {"fid/fid": 10.0}, evals, config)
  assert names == {"fid": "fid"}
  again = runner.write_results(str(tmp_path), 6, {"fid/fid": 11.0}, evals, config)
  assert again == {"fid": "fid"}  # same settings: the same name, updated
  other = {"fid": {"type": "fid", "num_samples": 64}}
  renamed = runner.write_results(str(tmp_path), 7, {"fid/fid": 30.0}, other, config)
  key = renamed["fid"]
  assert key.startswith("fid@")
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["fid/fid"] == 11.0 and metrics[f"{key}/fid"] == 30.0
  assert '"num_samples": 64' in metrics[f"{key}/settings"]
  lines = (tmp_path / "evaluations.jsonl").read_text().splitlines()
  assert len(lines) == 3

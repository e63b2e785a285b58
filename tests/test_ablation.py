"""The ablation's pieces (psvae_jax/experiments/ablation.py; the run itself is launch/ablation.sh,
~25 min):
equal autoencoder budgets, what makes each variant what it claims to be, the eval history its
curves read, and its table and plot."""

import json

import numpy as np
import pytest

from configs import svae as svae_config
from psvae_jax.experiments import ablation
from psvae_jax.experiments import ablation_report
from psvae_jax import writers
from psvae_jax import workdir as workdir_lib


def _runs(variant):
  return ablation.autoencoder_runs(variant, "/enc")


def test_variants_share_the_autoencoder_budget():
  budget = svae_config.get_config("tiny").num_train_steps + ablation.STAGE2_STEPS
  for v in ablation.VARIANTS:
    assert sum(c.num_train_steps for _, c in _runs(v)) == budget, v


def test_each_variant_is_what_it_claims():
  ((name, pix),) = _runs("pixel_vae")
  assert pix.stage == "psvae" and pix.loss.sem == 0.0 and not pix.init_from  # no semantics
  assert pix.model.encoder.weights == ""  # from scratch, and trained at the full rate
  assert pix.optim.lr_groups.encoder == pix.optim.lr > 0
  ((_, s),) = _runs("svae")
  assert s.stage == "svae" and s.model.encoder.weights == "/enc" and s.loss.sem > 0
  (n1, p1), (n2, p2) = _runs("psvae")
  assert (p1.stage, p2.stage) == ("svae", "psvae") and p2.init_from == n1
  assert p1.model.encoder.weights == "/enc" and p2.loss.sem > 0
  (_, r1), _ = _runs("psvae_random")
  assert r1.model.encoder.weights == ""  # the demo's random ViT
  with pytest.raises(ValueError, match="unknown variant"):
    ablation.autoencoder_runs("vq", "/enc")


def test_eval_history_keeps_the_last_figures_per_step_and_skips_a_torn_line(tmp_path):
  writers.append_eval_history(str(tmp_path), 10, {"adherence": 0.25})
  writers.append_eval_history(str(tmp_path), 20, {"adherence": 0.5, "ref": "x"})
  writers.append_eval_history(str(tmp_path), 10, {"adherence": 0.75})  # a resumed run
  with open(tmp_path / workdir_lib.EVAL_HISTORY, "a") as f:
    f.write('{"step": 30, "figu')  # killed while writing
  h = writers.read_eval_history(str(tmp_path))
  assert h == {10: {"adherence": 0.75}, 20: {"adherence": 0.5, "ref": "x"}}
  assert writers.read_eval_history(str(tmp_path / "none")) == {}


def test_table_and_plot(tmp_path):
  res = {
      "psvae": {
          "psnr": 25.0,
          "adherence_unseen": {"mean": 0.5, "se": 0.05, "n": 100},
          "curve": {"100": {"adherence": 0.2, "adherence_cfg1": 0.1}, "200": {"adherence": 0.6}},
      },
      "pixel_vae": {"psnr": 27.5, "curve": {"200": {"adherence": 0.1, "adherence_cfg1": 0.05}}},
  }
  md = ablation_report.markdown_table(res)
  row = next(line for line in md.splitlines() if line.startswith("| psvae |"))
  assert "25.000" in row and "0.500 ± 0.050" in row
  curve_row = [line for line in md.splitlines() if line.startswith("| pixel_vae |")][-1]
  assert curve_row == "| pixel_vae | — | 0.10 / 0.05 |", curve_row
  curves = {k: {int(s): f for s, f in r["curve"].items()} for k, r in res.items()}
  img = ablation_report.plot_curves(
      curves, ("adherence", "adherence_cfg1"), str(tmp_path / "c.png")
  )
  assert (tmp_path / "c.png").exists() and img.shape[-1] == 3
  green = np.all(img == np.array(ablation_report.COLORS["psvae"], np.uint8), axis=-1)
  red = np.all(img == np.array(ablation_report.COLORS["pixel_vae"], np.uint8), axis=-1)
  left = img.shape[1] // 2
  # The psvae line rises: its points are drawn higher (smaller row) at step 200 than at 100.
  ys, xs = np.nonzero(green[: img.shape[0] - 60, :left])
  assert ys[xs > xs.mean()].mean() < ys[xs < xs.mean()].mean()
  assert red[: img.shape[0] - 60, :left].any()  # a one-point curve still shows its point
  json.dumps(res)  # the report is JSON as it stands
  # Steps as a JSON file with sorted keys has them ("1000" before "250") are drawn in order.
  curve = {"1000": {"a": 0.5}, "250": {"a": 0.1}, "500": {"b": 1.0}, "750": {"a": 0.3}}
  assert ablation_report.curve_points(curve, "a") == [(250, 0.1), (750, 0.3), (1000, 0.5)]


def test_folder_variants_train_on_the_folder():
  for v in ablation.VARIANTS:
    for _, c in ablation.autoencoder_runs(v, "/enc", data_dir="/data"):
      assert (c.data.source, c.data.path, c.data.num_train) == ("folder", "/data", 0), v


def test_class_representation_encoder_learns_the_classes(tmp_path):
  """--data=fashion_mnist's encoder (representation.build_for_classes) on a tiny labelled folder
  whose class is a bright bar's place (top, bottom, across, down: classes that survive the
  training's horizontal flips): saved as a Dinov2 directory, probed."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from psvae_jax.experiments import representation  # pylint: disable=g-import-not-at-top
  from psvae_jax.weights import dinov2  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  for split, n in (("train", 160), ("test", 40)):
    for c in range(4):
      d = tmp_path / "d" / split / f"c{c}"
      d.mkdir(parents=True)
      for i in range(n // 4):
        x = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
        x[[np.s_[2:10, 8:24], np.s_[22:30, 8:24], np.s_[14:18, :], np.s_[:, 14:18]][c]] = 230
        Image.fromarray(x).save(d / f"{i}.png")
  spec = f"folder:path={tmp_path / 'd'}"
  rep = representation.build_for_classes(str(tmp_path / "enc"), spec, steps=60)
  assert rep["trained"]["class"]["n"] == 40
  assert rep["trained"]["class"]["mean"] >= 0.9, rep
  module, params = dinov2.load_dinov2(str(tmp_path / "enc"))
  data = representation.read_labelled(spec)
  probe = representation.class_probe(representation.pooled_features(module, params), data)
  assert probe == rep["trained"]["class"]  # the probe reads what the autoencoder will load

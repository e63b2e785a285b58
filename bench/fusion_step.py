"""The demo world's two stage-3 generators, one production train step each (issue 32).

  python bench/fusion_step.py             # 3 rounds, alternating
  python bench/fusion_step.py --quick     # smoke run

`configs/dit.py:tiny` (cross-attention DiT, width 128, depth 4, patch 2, over the demo's jointly
trained CLIP-shaped text encoder) against `configs/dit.py:tiny_fusion` (the demo's tiny Qwen2:
width 128, 4 layers, 4 heads, 2 KV heads, SwiGLU 512, then a DDT head 128 x 2), each built by
the task the loop trains (loss, optimizer, EMA) on latent-cache batches: batch 64 of the 8x8x16
shapes latent, 16-token prompts, on this machine's CPU. Prints each step's median time, the
parameter counts and `ratio fusion/dit` (the step-time ratio).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from bench import _common  # pylint: disable=g-import-not-at-top
from configs import dit as dit_config  # pylint: disable=g-import-not-at-top
from psvae_jax.shapes import text as shapes_text  # pylint: disable=g-import-not-at-top
from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top
from psvae_jax.weights import clip  # pylint: disable=g-import-not-at-top

LATENT = (8, 8, 16)
PROMPTS = ["a red circle on the left and a blue square on the right", "a green triangle"]


def runner(variant: str, tmp: str, batch: int):
  config = dit_config.get_config(variant)
  config.batch_size = batch
  words = shapes_text.shapes_vocabulary()
  text = None
  if variant == "tiny_fusion":
    config.generator.weights = shapes_text.build_demo_qwen2(f"{tmp}/qwen2", words)
  else:
    config.text_encoder = shapes_text.build_demo_text_encoder(f"{tmp}/clip", words)
    text = clip.load_clip_text(config.text_encoder)
  task, tx, step = _common.production_dit_step(config, LATENT, text_encoder=text)
  state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(jax.random.key(0))
  warm = task.warm_start(state.params)
  if warm is not None:
    state = loop.reset_params(state, warm, task=task)
  tokenizer = clip.load_tokenizer(config.generator.weights or config.text_encoder)
  ids, mask = clip.tokenize(tokenizer, (PROMPTS * batch)[:batch], config.data.max_length)
  rng = np.random.default_rng(0)
  data = {
      "latent": rng.standard_normal((batch, *LATENT)).astype(np.float32),
      "input_ids": ids,
      "attention_mask": mask,
  }
  params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  return _common.StepRunner(step, state, data, task.constants()), params


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  steps, rounds = (3, 1) if args.quick else (20, args.rounds)
  with tempfile.TemporaryDirectory() as tmp:
    runners = {v: runner(v, tmp, args.batch) for v in ("tiny", "tiny_fusion")}
    med = {v: [] for v in runners}
    for _ in range(rounds):
      for v, (run, _) in runners.items():
        med[v].append(_common.time_steps(run, steps, warmup=1)["median_s"])
  for v, (run, params) in runners.items():
    best = sorted(med[v])[len(med[v]) // 2]
    print(
        f"{v:12s} {best * 1e3:8.1f} ms/step (median of {rounds} rounds of {steps}; compile "
        f"{run.compile_s:.1f} s)  {params / 1e6:.2f}M trained parameters"
    )
  dit = sorted(med["tiny"])[len(med["tiny"]) // 2]
  fus = sorted(med["tiny_fusion"])[len(med["tiny_fusion"]) // 2]
  platform = jax.devices()[0].platform
  print(f"ratio fusion/dit {fus / dit:.2f} (batch {args.batch}, latent {LATENT}, {platform})")


if __name__ == "__main__":
  main()

"""Shared benchmark plumbing: load checks from /proc/stat, fresh-process alternation, DiT <->
diffusers weights, the production stage-3 train step without workdirs (production_dit_step) and
the production stage-2 step on random weights (production_stage2_step, stage2_flops_per_image).
Importing it imports jax and psvae_jax (set JAX_PLATFORMS / XLA_FLAGS before).

Timing on a shared CPU is only meaningful when nothing else runs: every worker measures the CPU time
the *rest of the machine* used during its timed region (system busy jiffies from /proc/stat minus
this process's own CPU time) and reports it as ``other_load`` (fraction of all cores). Runs with
``other_load`` above ``--max-load`` (default 0.10) are flagged "DISTURBED" and left out of the
medians and ratios.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as bench/x.py with bench/ (not the root) on the path
  sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import dit as dit_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from psvae_jax import builders  # pylint: disable=g-import-not-at-top,wrong-import-position
from psvae_jax import frozen_psvae  # pylint: disable=g-import-not-at-top,wrong-import-position
from psvae_jax import latent_stats  # pylint: disable=g-import-not-at-top,wrong-import-position
from psvae_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from psvae_jax.models import layers  # pylint: disable=g-import-not-at-top,wrong-import-position
from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top,wrong-import-position
from psvae_jax.train.tasks import (  # pylint: disable=g-import-not-at-top,wrong-import-position
    dit as dit_task,
)

RESULT_TAG = "BENCH_RESULT "
_TICK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


# ---------------------------------------------------------------- load measurement


def _system_busy_s() -> float:
  """Seconds of non-idle CPU time on all cores since boot (user+nice+system+irq+softirq+steal)."""
  with open("/proc/stat") as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
  return (user + nice + system + irq + softirq + steal) / _TICK


def _own_cpu_s() -> float:
  r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


class LoadMeter:
  """Measures how much CPU *other* processes used while it was open, as a fraction of all cores."""

  def __enter__(self):
    self._t, self._busy, self._own = time.perf_counter(), _system_busy_s(), _own_cpu_s()
    return self

  def __exit__(self, *exc):
    wall = time.perf_counter() - self._t
    other = (_system_busy_s() - self._busy) - (_own_cpu_s() - self._own)
    self.other_load = max(0.0, other) / max(wall * NCPU, 1e-9)
    self.wall = wall
    return False


def machine_load(seconds: float = 1.0) -> float:
  """Fraction of all cores busy over ``seconds`` (this process sleeps meanwhile)."""
  with LoadMeter() as m:
    time.sleep(seconds)
  return m.other_load


def wait_for_idle(max_load: float, timeout: float, quiet: bool = False) -> float:
  """Waits (up to ``timeout`` s) until a 1-s sample shows load ≤ max_load;
  returns the last sample."""
  deadline = time.time() + timeout
  load = machine_load()
  while load > max_load and time.time() < deadline:
    if not quiet:
      print(f"  machine busy ({load:.0%} of {NCPU} cores used by others), waiting...", flush=True)
    time.sleep(2.0)
    load = machine_load()
  return load


# ---------------------------------------------------------------- timing inside a worker


def time_steps(fn: Callable[[], Any], n: int, warmup: int) -> dict[str, Any]:
  """Runs ``fn`` ``warmup`` times, then ``n`` timed times;
  fn must block until its result is ready."""
  for _ in range(warmup):
    fn()
  times = []
  with LoadMeter() as meter:
    for _ in range(n):
      t = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t)
  return dict(
      median_s=statistics.median(times),
      min_s=min(times),
      max_s=max(times),
      n=n,
      other_load=meter.other_load,
      times_s=times,
  )


class StepRunner:
  """A train step (`loop.train_step` bound to its task) compiled ahead of time with the state
  donated; calling it takes one step on the held `state` and blocks on the loss.
  `compiled` (for cost_analysis) and `compile_s` (lower + compile seconds) are kept."""

  def __init__(self, step: Callable[..., Any], state: Any, batch: Any, consts: Any):
    t0 = time.perf_counter()
    self.compiled = jax.jit(step, donate_argnums=0).lower(state, batch, consts).compile()
    self.compile_s = time.perf_counter() - t0
    self.state, self._batch, self._consts = state, batch, consts

  def __call__(self) -> None:
    self.state, metrics = self.compiled(self.state, self._batch, self._consts)
    metrics["loss"].block_until_ready()


def emit(result: dict[str, Any]) -> None:
  """A worker's last stdout line: the tag and one JSON object."""
  print(RESULT_TAG + json.dumps(result), flush=True)


# ------------------------------------------------------ parent: fresh processes, alternation


def run_worker(
    script: str, args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 1800
) -> dict[str, Any]:
  """Runs ``python script --worker args...`` in a fresh process; returns its BENCH_RESULT dict."""
  full_env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  full_env.update(env or {})
  cmd = [sys.executable, script, "--worker", *args]
  proc = subprocess.run(
      cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT
  )
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_TAG)]
  if proc.returncode or not lines:
    raise RuntimeError(
        f"worker failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n"
        f"{proc.stderr[-5000:]}"
    )
  return json.loads(lines[-1][len(RESULT_TAG) :])


def alternate(
    jobs: dict[str, Callable[[], dict[str, Any]]], rounds: int, max_load: float, idle_timeout: float
) -> dict[str, list[dict[str, Any]]]:
  """Runs every job once per round in fresh processes, alternating the order (ABAB.. then BABA..).

  Before each run it waits for the machine to be idle (up to ``idle_timeout`` s). Each result gets
  ``disturbed`` = other_load (measured by the worker over its timed steps, and by the parent just
  before) > max_load.
  """
  out: dict[str, list[dict[str, Any]]] = {k: [] for k in jobs}
  names = list(jobs)
  for r in range(rounds):
    order = names if r % 2 == 0 else names[::-1]
    for name in order:
      before = wait_for_idle(max_load, idle_timeout)
      res = jobs[name]()
      res["load_before"] = before
      res["disturbed"] = bool(res.get("other_load", 0.0) > max_load or before > max_load)
      flag = "  DISTURBED" if res["disturbed"] else ""
      print(
          f"  round {r + 1}/{rounds} {name:>14}: median {res['median_s'] * 1e3:8.1f} ms "
          f"(others used {res.get('other_load', 0.0):.0%} of the cores){flag}",
          flush=True,
      )
      out[name].append(res)
  return out


def clean_median(results: list[dict[str, Any]], key: str = "median_s") -> tuple[float | None, int]:
  """Median of ``key`` over undisturbed runs (None if none), and how many runs were used."""
  vals = [r[key] for r in results if not r.get("disturbed")]
  return (statistics.median(vals) if vals else None), len(vals)


def _median_all(runs: list[dict[str, Any]], key: str) -> float:
  return sorted(r.get(key, 0.0) for r in runs)[len(runs) // 2]


def report(
    summary: list[tuple[Any, dict[str, list[dict[str, Any]]]]],
    row_header: str,
    describe: Callable[[Any], str],
    ratios: Sequence[tuple[str, str, str]],
    key: str = "median_s",
    value_header: str = "median step ms",
) -> None:
  """Prints the table of ``alternate``'s runs and one ratio line per (row, ratio).

  Args:
    summary: ``(row, alternate(...) result)`` pairs.
    row_header: the first column's header ("depth", "batch", "row").
    describe: row -> its text in a ratio line, e.g. ``"depth=12 batch=16"``.
    ratios: ``(numerator impl, denominator impl, label)``; prints ``ratio {label} {describe(row)}:
      x`` (x > 1: the denominator is faster) for each row that ran both. A ratio of disturbed runs
      is printed with the DISTURBED tag, not as a measurement.
    key: the timed quantity in each run's result (seconds).
    value_header: its column header (shown in ms).
  """
  print(
      f"\n| {row_header} | impl | {value_header} (clean runs) | compile s | others' CPU share "
      "| GFLOP/s |"
  )
  print("|---|---|---|---|---|---|")
  for row, results in summary:
    for impl, runs in results.items():
      med, n = clean_median(runs, key)
      shown = med or _median_all(runs, key)
      tag = f"({n}/{len(runs)})" if med else "(all DISTURBED)"
      comp = f"{_median_all(runs, 'compile_s'):.2f}" if "compile_s" in runs[0] else ""
      load = max(r.get("other_load", 0.0) for r in runs)
      gflop = runs[0].get("step_gflop") or 0.0
      rate = f"{gflop / shown:.0f}" if gflop else ""
      print(f"| {row} | {impl} | {shown * 1e3:.1f} {tag} | {comp} | max {load:.0%} | {rate} |")
  print()
  for row, results in summary:
    for num, den, label in ratios:
      if num not in results or den not in results:
        continue
      a, b = clean_median(results[num], key)[0], clean_median(results[den], key)[0]
      if a and b:
        print(f"ratio {label} {describe(row)}: {a / b:.2f}")
      else:
        a, b = _median_all(results[num], key), _median_all(results[den], key)
        print(
            f"ratio {label} {describe(row)}: {a / b:.2f} (DISTURBED: the machine was busy, not a "
            "valid measurement)"
        )


def add_load_args(parser) -> None:
  parser.add_argument(
      "--max-load",
      type=float,
      default=0.10,
      help="runs where other processes used more than this fraction of the cores are "
      "flagged DISTURBED and dropped from medians",
  )
  parser.add_argument(
      "--idle-timeout",
      type=float,
      default=60.0,
      help="seconds to wait for an idle machine before each run (then run anyway, flagged)",
  )


# ------------------------------------------------ DiT (ours) <-> diffusers DiTTransformer2DModel


def dit_kwargs(
    depth: int, width: int = 384, heads: int = 6, num_classes: int = 1000, patch: int = 2
) -> dict:
  """Our class-conditional DiT, diffusers-equivalent: out channels = in channels,
  no learned sigma."""
  return dict(
      width=width,
      depth=depth,
      num_heads=heads,
      patch_size=patch,
      cond_type="class",
      num_classes=num_classes,
  )


def make_torch_dit(
    depth: int,
    width: int = 384,
    heads: int = 6,
    num_classes: int = 1000,
    patch: int = 2,
    latent: int = 16,
    channels: int = 4,
):
  """diffusers' DiTTransformer2DModel configured to compute the same function as
  ``DiT(**dit_kwargs)``.

  Two settings differ from diffusers' defaults and are set here: ``norm_eps=1e-6`` (DiT's LayerNorm
  eps) and the timestep embedding frequencies ``exp(-ln(1e4)·i/half)`` (DiT's; diffusers' DiT uses
  ``downscale_freq_shift=1``, i.e. ``/(half-1)``). Label dropout inside the embedder is off (the
  training task draws condition dropout itself).
  """
  from diffusers import DiTTransformer2DModel  # pylint: disable=g-import-not-at-top

  model = DiTTransformer2DModel(
      num_attention_heads=heads,
      attention_head_dim=width // heads,
      in_channels=channels,
      out_channels=channels,
      num_layers=depth,
      sample_size=latent,
      patch_size=patch,
      num_embeds_ada_norm=num_classes,
      norm_eps=1e-6,
  )
  for block in model.transformer_blocks:
    block.norm1.emb.time_proj.downscale_freq_shift = 0
    block.norm1.emb.class_embedder.dropout_prob = 0.0
  return model


def dit_class_config(size: str, batch: int, patch: int = 2, dtype: str = "float32", **model):
  """configs/dit.py's `<size>_class` (1000 classes) with the benches' patch, batch, dtype and
  model overrides (depth, remat, remat_policy, scan_blocks, attention_impl); size may be "tiny"."""
  config = dit_config.get_config("S_class")
  unknown = sorted(set(model) - set(config.model))
  if unknown:
    raise KeyError(f"not config.model fields: {unknown}")
  config.model.size, config.model.patch_size = size, patch
  config.model.num_classes = 1000  # the config's 0 means "from the data", which benches have not
  config.model.update(model)
  config.batch_size, config.dtype = batch, dtype
  return config


def production_dit_step(config, latent_shape: Sequence[int], text_encoder=None, mesh=None):
  """(task, tx, step) of the production stage 3, built without an autoencoder workdir.

  task is psvae_jax.train.tasks.dit.DiTTask, given a weightless stand-in autoencoder with
  identity latent statistics (and, for a text `config`, the text encoder `text_encoder` =
  (module, params), params possibly abstract); tx is the production optimizer and step
  `loop.train_step(state, batch, consts) -> (state, metrics)` bound to both, for latent-cache
  batches {"latent": (B, *latent_shape) float32} plus {"label": (B,) int32} or
  {"input_ids", "attention_mask": (B, L) int32}. State: jit or eval_shape of
  `functools.partial(loop.create_train_state, task=task, tx=tx)`; consts: task.constants().
  mesh: DiTTask's (default: all devices on "data").
  """
  needs_text = config.model.cond_type == "text" and not builders.is_fusion(config)
  if needs_text != (text_encoder is not None):
    raise ValueError(
        "Pass text_encoder=(module, params) for a text-conditioned DiT config (only: not for a "
        "fusion generator, which reads the tokens)."
    )
  config.autoencoder = config.autoencoder or "(latent-only stand-in)"

  class LatentOnlyAutoencoder(frozen_psvae.Autoencoder):
    """Stands in for a PS-VAE workdir on latent-cache batches: DiTTask reads the latent shape
    and statistics (identity) from it; no weights (the step's "ae" constant is empty)."""

    @property
    def latent_shape(self):
      return tuple(latent_shape)

  zeros, ones = np.zeros(latent_shape[-1], np.float32), np.ones(latent_shape[-1], np.float32)
  stats = latent_stats.LatentStats(mu_mean=zeros, mu_std=ones, sample_mean=zeros, sample_std=ones)
  ae = LatentOnlyAutoencoder(model=None, params={}, config=None, stats=stats)
  text = (None, None, None) if text_encoder is None else (*text_encoder, None)
  if builders.is_fusion(config):  # its tokenizer, where generator.weights names a directory
    text = builders.load_text_encoder(config)
  task = dit_task.DiTTask(config, mesh or parallel.make_mesh(-1, 1), ae, text)
  tx = loop.make_tx(task, config)
  return task, tx, functools.partial(loop.train_step, task=task, tx=tx, config=config)


def production_stage2_step(variant: str, batch: int, dtype: str = "float32", mesh=None):
  """(config, task, tx, step, batch shapes) of the production stage 2 (PS-VAE), random weights.

  `variant` is a configs/psvae.py variant ("dinov2_b", "dinov2_l", "tiny"); the encoder, its
  frozen copy and LPIPS' VGG are random (`weights=random`: the cost does not depend on values);
  step = `loop.train_step(state, batch, consts)` with the PS-VAE task's loss (semantic + pixel +
  LPIPS + KL), the production optimizer and EMA. Batch shapes: {"image": (B, S, S, 3)} (plus
  "image_enc" when the config feeds the encoder separately)."""
  from configs import psvae  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import tasks  # pylint: disable=g-import-not-at-top

  config = psvae.get_config(variant)
  if variant != "tiny":
    config.model.encoder.weights = "random"
    config.lpips.vgg = config.lpips.heads = "random"
  config.batch_size, config.dtype = batch, dtype
  task = tasks.get_task(config, mesh or parallel.make_mesh(-1, 1))
  tx = loop.make_tx(task, config)
  size = int(config.data.image_size)
  shapes = {"image": (batch, size, size, 3)}
  enc = int(config.data.get("encoder_image_size", 0) or 0)
  if enc:
    shapes["image_enc"] = (batch, enc, enc, 3)
  step = functools.partial(loop.train_step, task=task, tx=tx, config=config)
  return config, task, tx, step, shapes


def stage2_flops_per_image(variant: str = "dinov2_b", batch: int = 8) -> float:
  """XLA's FLOP count of one production stage-2 train step per image (lowered, not compiled:
  abstract state, nothing allocated)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  _, task, tx, step, shapes = production_stage2_step(variant, batch)
  state = jax.eval_shape(
      functools.partial(loop.create_train_state, task=task, tx=tx), jax.random.key(0)
  )
  batch_abs = {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in shapes.items()}
  cost = jax.jit(step).lower(state, batch_abs, task.constants()).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0)) / batch


def random_params(param_shapes: Any, seed: int = 0, scale: float = 0.05) -> Any:
  """Deterministic random float32 params for a pytree of shapes (no zero-initialised layer hides
  anything)."""
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree.flatten(param_shapes)
  return jax.tree.unflatten(
      tree, [(scale * rng.standard_normal(l.shape)).astype(np.float32) for l in leaves]
  )


def params_to_torch(params: dict, model, width: int, patch: int, channels: int = 4) -> None:
  """Copies our DiT params into diffusers' model in place (the shared embedders into every
  block)."""
  import torch  # pylint: disable=g-import-not-at-top

  p = {k: v for k, v in params.items()}
  t = lambda a: torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32)))
  lin = lambda d: (t(np.asarray(d["kernel"]).T), t(d["bias"]))  # (in, out) -> weight (out, in)
  sd = {}
  k = np.asarray(p["patch_embed"]["kernel"]).reshape(
      patch, patch, channels, width
  )  # (py, px, c, D)
  sd["pos_embed.proj.weight"] = t(k.transpose(3, 2, 0, 1))
  sd["pos_embed.proj.bias"] = t(p["patch_embed"]["bias"])
  i = 0
  while f"blocks_{i}" in p:
    b, pre = p[f"blocks_{i}"], f"transformer_blocks.{i}."
    e = pre + "norm1.emb."
    sd[e + "timestep_embedder.linear_1.weight"], sd[e + "timestep_embedder.linear_1.bias"] = lin(
        p["t_embed_fc1"]
    )
    sd[e + "timestep_embedder.linear_2.weight"], sd[e + "timestep_embedder.linear_2.bias"] = lin(
        p["t_embed_fc2"]
    )
    sd[e + "class_embedder.embedding_table.weight"] = t(p["label_embed"]["embedding"])
    sd[pre + "norm1.linear.weight"], sd[pre + "norm1.linear.bias"] = lin(b["adaLN_modulation"])
    qkv_w = np.asarray(b["qkv"]["kernel"]).reshape(width, 3, width)
    qkv_b = np.asarray(b["qkv"]["bias"]).reshape(3, width)
    for j, name in enumerate(("to_q", "to_k", "to_v")):
      sd[pre + f"attn1.{name}.weight"], sd[pre + f"attn1.{name}.bias"] = t(qkv_w[:, j].T), t(
          qkv_b[j]
      )
    sd[pre + "attn1.to_out.0.weight"], sd[pre + "attn1.to_out.0.bias"] = lin(b["attn_proj"])
    sd[pre + "ff.net.0.proj.weight"], sd[pre + "ff.net.0.proj.bias"] = lin(b["mlp_fc1"])
    sd[pre + "ff.net.2.weight"], sd[pre + "ff.net.2.bias"] = lin(b["mlp_fc2"])
    i += 1
  sd["proj_out_1.weight"], sd["proj_out_1.bias"] = lin(p["final_adaLN"])
  sd["proj_out_2.weight"], sd["proj_out_2.bias"] = lin(p["final_linear"])
  model.load_state_dict(sd, strict=True)
  g = (
      model.pos_embed.height
  )  # Tokens per side; our sin-cos table (diffusers orders its x/y halves otherwise).
  with torch.no_grad():
    model.pos_embed.pos_embed.copy_(t(layers.sincos_2d(g, g, width))[None])


def torch_block_grads_to_ours(model) -> dict[str, np.ndarray]:
  """A few diffusers gradients in our layout (for the gradient check): qkv of block 0,
  fc2 of the last."""
  last = len(model.transformer_blocks) - 1
  b0, bl = model.transformer_blocks[0], model.transformer_blocks[last]
  qkv = np.concatenate(
      [getattr(b0.attn1, n).weight.grad.numpy().T for n in ("to_q", "to_k", "to_v")], axis=1
  )
  return {
      "blocks_0/qkv/kernel": qkv,
      f"blocks_{last}/mlp_fc2/kernel": bl.ff.net[2].weight.grad.numpy().T,
      "final_linear/kernel": model.proj_out_2.weight.grad.numpy().T,
  }


def relative(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))

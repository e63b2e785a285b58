"""Memory plan of the paper-size train steps on simulated 8- and 64-device meshes (AOT, no
allocation).

  python bench/memory_plan.py                      # 8 devices here, 64 in a subprocess
  python bench/memory_plan.py --devices=8 --compile --remat=dots
  python bench/memory_plan.py --devices=8 --fsdp 1 -1 --configs dit_xl2_t5xxl  # default mesh too

For each config (PS-VAE stage 2 with DINOv2-B and DINOv2-L, 224 in / 256 out; DiT-XL/2 text
with a T5-XXL-sized encoder; global batch 256) the real train step is lowered on
ShapeDtypeStructs over a ("data", "fsdp") mesh with every device on fsdp (--fsdp -1; --fsdp 1 is
the configs' default mesh, all devices on data), in the config's compute dtype (--dtype), and the
table gives the bytes each device holds for parameters, optimizer state, EMA / frozen copies and
constants under the FSDP shardings (parallel.param_shardings), against their unsharded
total, the largest array left whole on one device, and (with --compile) XLA's
memory_analysis of the compiled step: argument, output, temporary (activation) bytes per
device. --remat picks a jax.checkpoint policy (PS-VAE: around the loss; DiT: per block, the
config's model.remat / remat_policy) (none | full | dots: matmul
outputs saved, the rest recomputed) to trade compute for activation memory. The
--xla_force_host_platform_device_count flag must be set before JAX starts, so each mesh
size runs in its own process.

Measured (8 simulated devices, batch 256, per-device GiB of state + constants; --fsdp 1 -1):
  DiT-XL/2 text + T5-XXL, default mesh (fsdp=1): 30.15 with T5 stored fp32 (constants 17.74)
    -> 21.28 with text_encoder_dtype=bfloat16 (constants 8.87); fsdp=8: 3.78 -> 2.67.
  PS-VAE DINOv2-B 2.77 (fsdp=1) / 0.35 (fsdp=8); DINOv2-L 7.33 / 0.93 (dtype-independent).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from bench import _common  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import dit as dit_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import (  # pylint: disable=g-import-not-at-top,wrong-import-position
    psvae as psvae_config,
)
from psvae_jax import builders  # pylint: disable=g-import-not-at-top,wrong-import-position
from psvae_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from psvae_jax.aot import programs  # pylint: disable=g-import-not-at-top,wrong-import-position
from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top,wrong-import-position
from psvae_jax.train.tasks import (  # pylint: disable=g-import-not-at-top,wrong-import-position
    autoencoder,
)
from psvae_jax.weights import t5 as t5_weights  # pylint: disable=wrong-import-position

CONFIGS = ("psvae_dinov2_b", "psvae_dinov2_l", "dit_xl2_t5xxl")
POLICIES = ("none", "full", "dots")


def _remat(fn, policy: str):
  if policy == "none":
    return fn
  pol = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[policy]
  return jax.checkpoint(fn, policy=pol)


def _groups(state, state_sh, consts, consts_sh) -> dict:
  return {
      "params": (state.params, state_sh.params),
      "optimizer": (state.opt_state, state_sh.opt_state),
      "ema+frozen": ((state.ema_params, state.frozen), (state_sh.ema_params, state_sh.frozen)),
      "constants": (consts, consts_sh),
  }


def _psvae_step(name: str, mesh, batch: int, remat: str, dtype: str):
  """(step_fn, abstract args, arg shardings, groups) for stage 2 via the real loop/task."""
  config = psvae_config.get_config(name.split("_", 1)[1])
  config.batch_size = batch
  config.mesh.data, config.mesh.fsdp = mesh.shape["data"], mesh.shape["fsdp"]
  config.dtype = dtype or config.dtype
  config.lpips.vgg = "random"  # the LPIPS network is built (its cost counts); no weight files
  task = autoencoder.AutoencoderTask(config)
  task.loss = _remat(task.loss, remat)
  tx = loop.make_tx(task, config)
  init_fn = functools.partial(loop.create_train_state, task=task, tx=tx)
  state = jax.eval_shape(init_fn, jax.random.key(0))
  consts = jax.eval_shape(task.constants)
  s = config.data.image_size
  images = jax.ShapeDtypeStruct((batch, s, s, 3), jnp.float32)
  sh = lambda t: parallel.param_shardings(t, mesh, min_size=config.shard_min_size)
  state_sh, consts_sh = sh(state), sh(consts)
  step = functools.partial(loop.train_step, task=task, tx=tx, config=config)
  args = (state, {"image": images}, consts)
  shardings = (state_sh, {"image": parallel.batch_sharding(mesh, 4)}, consts_sh)
  return (
      step,
      args,
      shardings,
      (state_sh, parallel.replicated(mesh)),
      _groups(state, state_sh, consts, consts_sh),
  )


def _dit_step(mesh, batch: int, remat: str, dtype: str):
  """Stage 3 via the real loop/task (bench/_common.production_dit_step: loop.train_step with
  DiTTask.loss on latent-cache batches): DiT-XL/2 (text, patch 2 in DiT's naming: 2x2 pixels of
  the 256 px image per latent token, i.e. patch 1 on the 16x16x96 latent) with a frozen
  T5-XXL-sized encoder (4.7B, stored in config.text_encoder_dtype); remat per DiT block."""
  config = dit_config.get_config("XL_text")
  config.batch_size, config.data.max_length = batch, 120
  config.mesh.data, config.mesh.fsdp = mesh.shape["data"], mesh.shape["fsdp"]
  config.dtype = dtype or config.dtype
  config.model.remat = remat != "none"
  config.model.remat_policy = "dots_saveable" if remat == "dots" else "full"
  t5 = t5_weights.t5_module_from_hf_config(programs.T5_XXL, dtype=jnp.dtype(config.dtype))
  ids = jax.ShapeDtypeStruct((batch, config.data.max_length), jnp.int32)
  t5_params = jax.eval_shape(t5.init, jax.random.key(0), ids, ids)["params"]
  text_dtype = builders.text_param_dtype(config)  # frozen: stored so (builders.load_text_encoder)
  t5_params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, text_dtype), t5_params)
  task, tx, step = _common.production_dit_step(
      config, (16, 16, 96), text_encoder=(t5, t5_params), mesh=mesh
  )
  state = jax.eval_shape(
      functools.partial(loop.create_train_state, task=task, tx=tx), jax.random.key(0)
  )
  consts = jax.eval_shape(task.constants)
  b = {
      "latent": jax.ShapeDtypeStruct((batch, 16, 16, 96), jnp.float32),
      "input_ids": ids,
      "attention_mask": ids,
  }
  sh = lambda t: parallel.param_shardings(t, mesh, min_size=config.shard_min_size)
  state_sh, consts_sh = sh(state), sh(consts)
  b_sh = {k: parallel.batch_sharding(mesh, v.ndim) for k, v in b.items()}
  return (
      step,
      (state, b, consts),
      (state_sh, b_sh, consts_sh),
      (state_sh, parallel.replicated(mesh)),
      _groups(state, state_sh, consts, consts_sh),
  )


def plan(
    name: str, batch: int, remat: str, compile_: bool, fsdp: int = -1, dtype: str = ""
) -> dict:
  """Lowers one config on all local devices (fsdp -1: all on fsdp); returns its row."""
  mesh = parallel.make_mesh(1 if fsdp == -1 else -1, fsdp)
  if name == "dit_xl2_t5xxl":
    step, args, shardings, out_sh, groups = _dit_step(mesh, batch, remat, dtype)
  else:
    step, args, shardings, out_sh, groups = _psvae_step(name, mesh, batch, remat, dtype)
  t0 = time.time()
  lowered = jax.jit(step, out_shardings=out_sh).lower(
      *[parallel.with_shardings(a, s) for a, s in zip(args, shardings)]
  )
  row = {
      "config": name,
      "devices": mesh.size,
      "fsdp": mesh.shape["fsdp"],
      "batch": batch,
      "remat": remat,
      "lower_s": round(time.time() - t0, 1),
  }
  gib = 2.0**30
  for group, (tree, shard) in groups.items():
    f = parallel.footprint(tree, shard)  # psvae_jax.aot's count too
    row[group] = (f.total / gib, f.per_device / gib, f.largest_whole / gib)
  total = sum(v[0] for k, v in row.items() if k in groups)
  per_device = sum(v[1] for k, v in row.items() if k in groups)
  row["total_gib"], row["per_device_gib"] = total, per_device
  row["division"] = total / per_device
  row["largest_whole_mib"] = max(v[2] for k, v in row.items() if k in groups) * 1024
  row["n_params"] = sum(x.size for x in jax.tree.leaves(groups["params"][0]))
  if compile_:
    t0 = time.time()
    compiled = lowered.compile()
    row["compile_s"] = round(time.time() - t0, 1)
    mem = compiled.memory_analysis()
    if mem is not None:
      for key in (
          "argument_size_in_bytes",
          "output_size_in_bytes",
          "temp_size_in_bytes",
          "generated_code_size_in_bytes",
      ):
        row[key.replace("_size_in_bytes", "_gib")] = getattr(mem, key, 0) / gib
  return row


def _format(rows: list[dict]) -> str:
  head = (
      f"{'config':<16}{'dev':>4}{'fsdp':>5}{'params':>9}{'B':>6}{'total GiB':>11}"
      f"{'per-dev GiB':>13}"
      f"{'(params/opt/ema+frozen/consts)':>40}{'div':>7}{'max whole MiB':>15}"
      f"{'temp GiB':>10}{'arg GiB':>9}"
  )
  lines = [head, "-" * len(head)]
  for r in rows:
    parts = "/".join(f"{r[g][1]:.2f}" for g in ("params", "optimizer", "ema+frozen", "constants"))
    temp = f"{r['temp_gib']:.2f}" if "temp_gib" in r else "-"
    arg = f"{r['argument_gib']:.2f}" if "argument_gib" in r else "-"
    lines.append(
        f"{r['config']:<16}{r['devices']:>4}{r.get('fsdp', r['devices']):>5}"
        f"{r['n_params'] / 1e9:>8.2f}B{r['batch']:>6}"
        f"{r['total_gib']:>11.2f}{r['per_device_gib']:>13.3f}{parts:>40}"
        f"{r['division']:>7.2f}{r['largest_whole_mib']:>15.2f}{temp:>10}{arg:>9}"
    )
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--devices", type=int, nargs="*", default=[8, 64])
  p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=CONFIGS)
  p.add_argument(
      "--fsdp",
      type=int,
      nargs="*",
      default=[-1],
      help="fsdp axis sizes to plan (-1: all devices; 1: the configs' default mesh)",
  )
  p.add_argument(
      "--dtype",
      default="",
      choices=("", "float32", "bfloat16"),
      help="compute dtype override (default: the config's)",
  )
  p.add_argument("--batch", type=int, default=256)
  p.add_argument(
      "--remat",
      default="none",
      choices=POLICIES,
      help="measured (8 devices, PS-VAE B, XLA:CPU): none 64.9 GiB temp/device, "
      "full (whole-loss checkpoint) 94.1: per-block remat is what helps",
  )
  p.add_argument(
      "--compile",
      action="store_true",
      help="also compile and print XLA's memory_analysis (slow for 64 devices)",
  )
  p.add_argument("--json", help="write the rows to this file")
  p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a._child:  # pylint: disable=protected-access
    assert jax.device_count() == a.devices[0], (jax.device_count(), a.devices)
    rows = [plan(c, a.batch, a.remat, a.compile, f, a.dtype) for f in a.fsdp for c in a.configs]
    print("ROWS " + json.dumps(rows))
    return
  rows = []
  for n in a.devices:
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_child",
        "--devices",
        str(n),
        "--batch",
        str(a.batch),
        "--remat",
        a.remat,
        "--configs",
        *a.configs,
        "--fsdp",
        *map(str, a.fsdp),
    ] + (["--dtype", a.dtype] if a.dtype else [])
    cmd += ["--compile"] if a.compile else []
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = [l for l in out.stdout.splitlines() if l.startswith("ROWS ")]
    if out.returncode or not line:
      sys.exit(f"{n} devices failed:\n{out.stderr[-4000:]}")
    rows += json.loads(line[0][5:])
  for r in rows:  # FSDP over all devices must divide the state, and nothing large stay whole
    if r["fsdp"] == r["devices"] and (
        r["division"] < 0.9 * r["devices"] or r["largest_whole_mib"] > 64
    ):
      sys.exit(f"FSDP does not divide {r['config']} on {r['devices']} devices: {r}")
  print(_format(rows))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()

"""The paper-size train steps compiled for TPU slices (psvae_jax.aot): the table in docs/pods.md.

  python bench/aot_table.py                        # every config x slice below, then the table
  python bench/aot_table.py --configs dit_paper --topologies v5e-64
  python bench/aot_table.py --table-only           # print the table from what is done

Each (config, slice) compiles the train step once through `launch/aot.sh --programs=train` (the
TPU compiler in its own venv) and keeps its row in OUT/<config>@<slice>.json (with the step's HBM
traffic by model scope; its HLO in OUT/hlo/); a row already there is
not compiled again, so an interrupted run resumes where it stopped (a paper-size step takes minutes
to compile on a 2-core machine). Extra `--config.` flags after `--` apply to every config (the
rows then go to another --out). The table: per-chip HBM of the step against the chip's, fits,
compile seconds, the roofline step time (max of FLOPs / peak and bytes / HBM bandwidth, a lower
bound) and the hours the config's num_train_steps take at that bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "svae_dinov2_b": "configs/svae.py:dinov2_b",
    "psvae_dinov2_b": "configs/psvae.py:dinov2_b",
    "svae_dinov2_l": "configs/svae.py:dinov2_l",
    "psvae_dinov2_l": "configs/psvae.py:dinov2_l",
    "svae_siglip2_so400m": "configs/svae.py:siglip2_so400m",
    "psvae_siglip2_so400m": "configs/psvae.py:siglip2_so400m",
    "dit_XL_text": "configs/dit.py:XL_text",
    "dit_paper": "configs/dit.py:paper",
    "dit_paper_fusion": "configs/dit.py:paper_fusion",
}
TOPOLOGIES = ("v5e-16", "v5e-64", "v5p-8", "v5p-32", "v4-32", "v6e-8", "h100-8")


def compile_row(name: str, topology: str, out: str, extra: list[str]) -> dict:
  path = os.path.join(out, f"{name}@{topology}.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  t0 = time.time()
  cmd = [
      "bash",
      os.path.join(ROOT, "launch", "aot.sh"),
      f"--config={CONFIGS[name]}",
      f"--topology={topology}",
      "--programs=train",
      f"--json={path}.tmp",
      f"--hlo_dir={os.path.join(out, 'hlo', f'{name}@{topology}')}",  # HBM bytes by model scope
      *extra,
  ]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
  if r.returncode not in (0, 2) or not os.path.exists(f"{path}.tmp"):
    tail = (r.stderr.strip().splitlines() or ["?"])[-1]
    print(f"{name} on {topology}: exit {r.returncode}: {tail}", file=sys.stderr)
    return {}
  with open(f"{path}.tmp") as f:
    result = json.load(f)
  result["wall_s"] = time.time() - t0
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  os.remove(f"{path}.tmp")
  return result


def table(results: dict) -> str:
  from configs import dit, psvae, svae  # pylint: disable=g-import-not-at-top
  from psvae_jax.aot import compiler  # pylint: disable=g-import-not-at-top  (no JAX at import)

  steps = {}
  for name, spec in CONFIGS.items():
    module = {"svae": svae, "psvae": psvae, "dit": dit}[spec.split("/")[1].split(".")[0]]
    steps[name] = module.get_config(spec.split(":")[1]).num_train_steps
  lines = [
      "| config | slice | mesh | batch | HBM/chip GiB (of) | fits | compile s | roofline step |"
      " bound | MFU ceiling | hours at the bound (steps) |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for (name, topology), res in results.items():
    if not res:
      lines.append(f"| {name} | {topology} | | | | compile failed | | | | | |")
      continue
    r = res["rows"][0]
    if "error" in r and not r.get("oom"):
      r.update(compiler.out_of_memory(r["error"]) or {})
    if r.get("oom"):
      lines.append(
          f"| {name} | {topology} | {r['mesh']} | {r['batch']} | > {r['required_gib']:.1f} "
          f"({r['available_gib']:.2f}) | **no** | {r.get('compile_s', 0):.0f} | | | | |"
      )
      continue
    if "error" in r:
      lines.append(f"| {name} | {topology} | {r['mesh']} | {r['batch']} | | error | | | | | |")
      continue
    hours = r["roofline_s"] * steps[name] / 3600
    fit = "yes" if r["fits"] else "**no**"
    mfu = f"{r['mfu_ceiling'] * 100:.0f}%"
    if r.get("cost_analysis"):  # a GPU compiled without a GPU: analytic FLOPs only
      mfu = "-"
    lines.append(
        f"| {name} | {topology} | {r['mesh']} | {r['batch']} | {r['total_gib']:.1f} "
        f"({r['hbm_gib']:.1f}) | {fit} | {r['compile_s']:.0f} | {r['roofline_s'] * 1e3:.0f} ms "
        f"| {r['bound']} | {mfu} | {hours:.1f} ({steps[name] // 1000}K) |"
    )
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
  p.add_argument("--topologies", nargs="*", default=list(TOPOLOGIES))
  p.add_argument("--out", default=os.path.join(ROOT, "runs", "aot_table"))
  p.add_argument("--table-only", action="store_true")
  p.add_argument("extra", nargs="*", help="--config. flags for every config (after --)")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  results = {}
  for topology in a.topologies:
    for name in a.configs:
      path = os.path.join(a.out, f"{name}@{topology}.json")
      if a.table_only:
        if os.path.exists(path):
          with open(path) as f:
            results[(name, topology)] = json.load(f)
        continue
      results[(name, topology)] = compile_row(name, topology, a.out, a.extra)
      print(f"done {name} on {topology}", file=sys.stderr, flush=True)
  print(table(results))


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  main()

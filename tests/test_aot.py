"""psvae_jax.aot: TPU slice names, and the CLI compiling the tiny DiT for a v5e:2x2 slice with the
TPU compiler (libtpu, in launch/aot.sh's venv .venv-tpu, which launch/test.sh creates)."""

import json
import os
import subprocess

import pytest

from psvae_jax import topologies

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_PYTHON = os.path.join(
    os.environ.get("PSVAE_TPU_VENV", os.path.join(ROOT, ".venv-tpu")), "bin", "python"
)


@pytest.mark.parametrize(
    "name,topology,chips",
    [
        ("v5e-16", "v5e:4x4", 16),
        ("v5litepod-16", "v5e:4x4", 16),
        ("v6e-8", "v6e:2x4", 8),
        ("v4-32", "v4:2x2x4", 16),  # v4 and v5p names count TensorCores: two per chip
        ("v5p-8", "v5p:2x2x1", 4),
        ("v5e:2x2", "v5e:2x2", 4),
    ],
)
def test_topology_names(name, topology, chips):
  s = topologies.parse(name)
  assert (s.topology_name, s.num_chips) == (topology, chips)


@pytest.mark.parametrize("name", ["v7x-8", "v5e-12", "v4-3", "v5e:4x4x4", "tpu"])
def test_unknown_topology_is_refused(name):
  with pytest.raises(ValueError, match="known: v4-8,"):
    topologies.parse(name)


def _aot(*args):
  if not os.path.exists(TPU_PYTHON):
    if os.environ.get("PSVAE_TEST_TPU") == "0":
      pytest.skip("PSVAE_TEST_TPU=0: no TPU compiler venv")
    pytest.fail(f"no {TPU_PYTHON}: run `launch/aot.sh --install-only` (launch/test.sh does)")
  env = dict(os.environ, PYTHONPATH=ROOT, PSVAE_XLA_CPU_DEFAULTS="0")
  env.pop("XLA_FLAGS", None)  # the suite's 8 simulated CPU devices are not this process's
  cmd = [TPU_PYTHON, "-m", "psvae_jax.aot", "--config=configs/dit.py:tiny_class", *args]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.xdist_group("aot")
def test_aot_tiny_dit_compiles_for_v5e(tmp_path):
  out = tmp_path / "aot.json"
  r = _aot(
      "--topology=v5e:2x2",
      "--programs=train,sample",
      "--config.model.num_classes=10",
      f"--json={out}",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "fits" in r.stdout and "v5e:2x2" in r.stdout
  assert "host bounds" not in r.stderr and "TPU_WORKER_HOSTNAMES" not in r.stderr  # libtpu quiet
  rows = {row["program"]: row for row in json.loads(out.read_text())["rows"]}
  assert set(rows) == {"train", "sample"}
  for row in rows.values():
    assert row["fits"] and row["chips"] == 4 and row["hbm_gib"] == pytest.approx(15.75)
    assert row["flops_per_chip"] > 0 and row["bytes_per_chip"] > 0 and row["roofline_s"] > 0
    total = (
        row["argument_gib"]
        + row["output_gib"]
        - row["alias_gib"]
        + row["temp_gib"]
        + row["generated_code_gib"]
    )
    assert row["total_gib"] == pytest.approx(total)
  train = rows["train"]
  assert rows["sample"]["batch"] == 256 and train["batch"] == 64
  # The compiled step's arguments are the state the sharding rules plan per chip plus the batch
  # (64 latents of 8x8x16 and labels, split over 4 chips); of the constants jit keeps only those
  # the step reads (the latent statistics: the frozen PS-VAE is not read on latent batches).
  batch_gib = (64 * 8 * 8 * 16 * 4 + 64 * 4) / 4 / 2**30
  # (TPU layouts pad small arrays to (8, 128) tiles: ~0.5 MiB over ~300 small leaves here.)
  planned = train["state_gib"] + batch_gib
  assert planned <= train["argument_gib"] <= planned * 1.05
  assert train["state_consts_gib"] > train["state_gib"]
  assert (
      train["state_gib"] <= train["alias_gib"] <= train["state_gib"] * 1.05
  )  # the state is donated


@pytest.mark.xdist_group("aot")
def test_aot_refuses_what_does_not_fit_and_bad_names():
  r = _aot("--topology=v5e:2x2", "--programs=train", "--config.batch_size=4194304")
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  assert "error: train does not fit on v5e-4" in r.stderr
  assert "DOES NOT FIT" in r.stdout
  r = _aot("--topology=v9z-8")
  assert r.returncode == 1
  assert r.stderr.strip().count("\n") == 0 and "known: v4-8," in r.stderr


def test_hlo_traffic_counts_async_slices_once_by_their_destination():
  from psvae_jax.aot import hlo  # pylint: disable=g-import-not-at-top

  text = "\n".join(
      [
          "ENTRY %main {",
          "  %p = bf16[4096,640]{1,0} parameter(0)",
          "  %s = ((bf16[4096,640]{1,0}), bf16[1024,640]{1,0}, s32[]) slice-start(%p), "
          'metadata={op_name="jit(step)/jvp(DiT)/blocks_0/mlp/fc1/dot_general"}',
          "  %d = bf16[1024,640]{1,0} slice-done(%s)",
          "  %f = f32[1024,640]{1,0} fusion(%d), kind=kLoop, "
          'metadata={op_name="jit(step)/transpose(jvp(DiT))/blocks_0/mlp/gelu"}',
          "}",
      ]
  )
  by_scope = hlo.bytes_by_scope(text)
  # The slice reads its 1024 rows (+ the 4-byte context), the fusion reads them and writes f32.
  assert by_scope == {"DiT/blocks_0": 1024 * 640 * 2 + 4 + 1024 * 640 * (2 + 4)}

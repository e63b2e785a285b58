"""Programs without gradients compile with their own XLA:CPU options (runtime.no_grad_jit): the
sampler, the decoder and the evaluators' networks; train steps keep the process's flags."""

import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

import psvae_jax
from psvae_jax import frozen_psvae
from psvae_jax import generation
from psvae_jax import runtime
from psvae_jax.evals import evaluators
from psvae_jax.train.tasks import autoencoder as ae_task


def test_cpu_no_grad_options_are_individual_dots():
  assert (
      "xla_cpu_experimental_ynn_fusion_type" in psvae_jax.CPU_FLAGS_ADDED
  )  # conftest sets no ynn flag
  options = runtime.no_grad_compiler_options()
  assert options == psvae_jax.CPU_NO_GRAD_OPTIONS
  assert "INDIVIDUAL_DOT" in options["xla_cpu_experimental_ynn_fusion_type"]


def test_the_options_reach_the_compiler(monkeypatch):
  """A bogus option fails the compile: what no_grad_jit is given is what XLA gets (functions and
  methods alike; lower() too)."""
  monkeypatch.setattr(
      runtime, "no_grad_compiler_options", lambda: {"xla_psvae_no_such_option": "1"}
  )
  f = runtime.no_grad_jit(lambda x: x * 2)
  with pytest.raises(Exception, match="xla_psvae_no_such_option"):
    f(jnp.ones(3))

  class Holder:
    plus = runtime.no_grad_jit(lambda self, x: x + 1, static_argnums=0)

    def __hash__(self):
      return 0

    def __eq__(self, other):
      return isinstance(other, Holder)

  with pytest.raises(Exception, match="xla_psvae_no_such_option"):
    Holder().plus.lower(jnp.ones(3)).compile()


def test_inference_programs_use_it():
  for program in (
      generation.Generator.__dict__["sample_latents"],
      generation.Generator.__dict__["_decode_jit"],
      generation.Generator.__dict__["_encode_jit"],
      frozen_psvae.Autoencoder.__dict__["decode"],
      ae_task.AutoencoderTask.__dict__["_eval_batch"],
      evaluators._psnr,  # pylint: disable=protected-access
  ):
    assert isinstance(program, runtime._NoGradJit), program  # pylint: disable=protected-access
  # What a run trains on keeps the process's flags: the latent cache's encoder.
  assert not isinstance(frozen_psvae.Autoencoder.__dict__["encode"], runtime._NoGradJit)


def test_a_child_process_keeps_them_and_a_users_flag_wins():
  """A psvae_jax process's children inherit its XLA_FLAGS (xdist workers, the benches' workers,
  the demo's stages): the flag is still the package's, so the no-gradient options still apply; a
  flag the user set (no marker) turns them off."""
  code = (
      "import psvae_jax; from psvae_jax import runtime; print(runtime.no_grad_compiler_options())"
  )
  env = dict(os.environ)  # this process imported psvae_jax: XLA_FLAGS has its flag
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert "INDIVIDUAL_DOT" in out.stdout, out.stderr[-2000:]
  env.pop("PSVAE_XLA_CPU_FLAGS_ADDED")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert out.stdout.strip() == "{}", out.stderr[-2000:]

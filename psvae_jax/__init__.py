"""psvae_jax: PS-VAE and a latent diffusion transformer in JAX/Flax.

TensorFlow is only imported for I/O (CLU's writers, tfds): its C++ INFO lines (oneDNN notices) are
not a user's business, so they are off unless the environment asks for them.

XLA:CPU: importing the package adds ``CPU_XLA_FLAGS`` to ``XLA_FLAGS`` (before JAX's first
compile reads them; a flag the environment already sets wins; ``PSVAE_XLA_CPU_DEFAULTS=0`` turns
this off). jaxlib 0.10 lowers convolutions to YNNPACK by default, which ran the LDM pixel decoder's
convolutions 2.3-2.7x slower than XLA's own (Eigen) ones on a 2-core x86 CPU (3x3, 32 channels at
256 px, batch 8: forward 175 -> 76 ms, weight gradient 418 -> 155 ms; the decoder's fwd+bwd
5296 -> 2923 ms; ``bench/psvae_vs_torch.py --parts decoder``). Dots and reductions stay on
YNNPACK, fused with their neighbours (DOT): every training step compiles under it.

Programs without gradients (the sampler, decoding, the evaluators' networks) compile with
``CPU_NO_GRAD_OPTIONS`` instead (``runtime.no_grad_jit``): each dot its own YNNPACK call
(INDIVIDUAL_DOT). Under DOT, XLA fused a no-gradient MLP's two GEMMs and GELU into one slow call
(a train step keeps the hidden activation for its backward, so it is not fused there): DDIM-50
at batch 8 0.742 -> 0.497 s per image, the DINOv2-S forward 764 -> 589 ms on a 2-core x86 CPU,
results equal to torch to 1e-6. The train steps and the programs whose outputs a run trains on
(the latent cache's encoder, the latent statistics) keep DOT, so training numerics are bitwise
those of before. A flag the environment sets in ``XLA_FLAGS`` wins over both. The flags only
touch the CPU compiler: GPU and TPU programs are unchanged.
"""

import importlib.metadata as _metadata
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

CPU_XLA_FLAGS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}
# Per-program compiler options of no-gradient programs on XLA:CPU (runtime.no_grad_jit).
CPU_NO_GRAD_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    ),
}
# The CPU_XLA_FLAGS keys this import added (those the environment did not set itself), also
# recorded in the environment for child processes.
CPU_FLAGS_ADDED: list[str] = []
_ADDED_ENV = "PSVAE_XLA_CPU_FLAGS_ADDED"
# The jaxlib releases these flags were measured on (an unknown flag aborts XLA at start-up).
_CPU_FLAGS_JAXLIB = ("0.10.",)


def _cpu_xla_flags() -> None:
  if _os.environ.get("PSVAE_XLA_CPU_DEFAULTS", "1") == "0":
    return
  try:
    jaxlib = _metadata.version("jaxlib")
  except _metadata.PackageNotFoundError:
    return
  if not jaxlib.startswith(_CPU_FLAGS_JAXLIB):
    return
  flags = _os.environ.get("XLA_FLAGS", "")
  # A child process of a psvae_jax process inherits the flags this added: they are still ours
  # (not the user's), so its no-gradient programs still get CPU_NO_GRAD_OPTIONS.
  inherited = set(_os.environ.get(_ADDED_ENV, "").split(","))
  keys = [k for k in CPU_XLA_FLAGS if f"--{k}" not in flags]
  extra = [f"--{k}={CPU_XLA_FLAGS[k]}" for k in keys]
  ours = [k for k in CPU_XLA_FLAGS if k in inherited and f"--{k}={CPU_XLA_FLAGS[k]}" in flags]
  CPU_FLAGS_ADDED.extend(keys + ours)
  _os.environ[_ADDED_ENV] = ",".join(CPU_FLAGS_ADDED)
  if extra:
    _os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


_cpu_xla_flags()

"""psvae_jax: PS-VAE and a latent diffusion transformer in JAX/Flax.

TensorFlow is only imported for I/O (CLU's writers, tfds): its C++ INFO lines (oneDNN notices) are
not a user's business, so they are off unless the environment asks for them.

XLA:CPU: importing the package adds ``CPU_XLA_FLAGS`` to ``XLA_FLAGS`` (before JAX's first
compile reads them; a flag the environment already sets wins; ``PSVAE_XLA_CPU_DEFAULTS=0`` turns
this off). jaxlib 0.10 lowers convolutions to YNNPACK by default, which ran the LDM pixel decoder's
convolutions 2.3-2.7x slower than XLA's own (Eigen) ones on a 2-core x86 CPU (3x3, 32 channels at
256 px, batch 8: forward 175 -> 76 ms, weight gradient 418 -> 155 ms; the decoder's fwd+bwd
5296 -> 2923 ms; ``bench/psvae_vs_torch.py --parts decoder``). Dots and reductions stay on
YNNPACK. Open (2026-12-07): with LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT instead of DOT (each dot its
own call, not fused with its neighbours) no-gradient programs ran faster (DDIM-50 at batch 8 0.497
vs 0.742 s per image, the DINOv2-S forward 589 vs 764 ms; train steps equal, results equal to
torch to 1e-6). Not yet the default: the demo under it trained a PS-VAE of equal PSNR whose
latent gave the DiT val adherence 0.766 (0.922 before); the DiT on that latent reached the same
0.766 under DOT, so the spread is the demo's over its autoencoder's training, to be measured
before the figures move. The flags only touch the CPU compiler: GPU and TPU programs are
unchanged.
"""

import importlib.metadata as _metadata
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

CPU_XLA_FLAGS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}
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
  extra = [f"--{k}={v}" for k, v in CPU_XLA_FLAGS.items() if f"--{k}" not in flags]
  if extra:
    _os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


_cpu_xla_flags()

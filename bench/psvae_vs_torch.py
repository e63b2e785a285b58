"""The stage-2 (PS-VAE) compute vs PyTorch eager on the same CPU: the DINOv2 encoder and the LDM
conv pixel decoder, forward + backward, the same weights on both sides.

  python bench/psvae_vs_torch.py                 # encoder S and B, decoder, stage2-S; 3 rounds
  python bench/psvae_vs_torch.py --quick         # smoke run: small sizes, few steps, one round
  python bench/psvae_vs_torch.py --parts decoder --dec-ch 64
  python bench/psvae_vs_torch.py --parts attention-S attention-B --attention-impl xla  # jax.nn's

Rows (fp32, batch --batch, default 8):
  encoder-S / encoder-B  DINOv2 ViT-S/14 (384 wide, 6 heads) / ViT-B/14 (768, 12 heads), 12 blocks,
         224 px (16 x 16 patches; positions resized from the stored 37 x 37 grid, as real DINOv2
         checkpoints are), random weights saved by transformers' Dinov2Model and loaded by
         psvae_jax.weights.dinov2.load_dinov2. Loss: the mean square of the patch features; the
         gradient w.r.t. every parameter (stage 2 trains the encoder). torch: Dinov2Model, the same
         loss on last_hidden_state[:, 1:], loss.backward().
  attention-S / attention-B  the encoder rows' softmax attention alone (B, 257 tokens, 6 / 12
         heads of 64): psvae_jax.models.attention.dot_product_attention (--attention-impl: ''
         picks the CPU path on the CPU; 'xla' is jax.nn.dot_product_attention) vs torch's
         scaled_dot_product_attention. Loss: mean square of the output; gradients w.r.t. q, k, v.
  decoder  psvae_jax.models.pixel_decoder.ConvDecoder (the paper's LDM decoder: ch_mult
         (1, 1, 2, 2, 4), 2 ResBlocks per level, mid attention; 16 x 16 x 96 latent -> 256 px) at
         base width --dec-ch (the paper's 128 costs minutes per step on 2 cores; the default 32
         keeps the structure), against the same decoder re-created with torch.nn
         (bench/_torch_mirrors.py: NCHW, GroupNorm eps 1e-6, nearest upsampling, single-head
         attention), weights copied. Loss: mean square of the image; gradients w.r.t. every
         parameter.
  stage2-S / stage2-B  the whole stage-2 loss, forward + backward w.r.t. everything stage 2
         trains (encoder, E_s, D_s, D_p): the frozen encoder copy's features as the semantic
         target, E_s (3 blocks) on the encoder's pre-LayerNorm stream, z = mu + sigma * eps (eps
         an input on both sides), D_s -> semantic MSE, D_p -> 256 px -> 1/2 L1 + 1/2 MSE and
         LPIPS (VGG16, random weights written as torchvision / lpips .pth files and read by
         psvae_jax.weights.lpips.load_lpips), KL; weights 1, 1, 0.1, 1e-4. JAX: the library's
         modules and psvae_jax.losses. torch: Dinov2Model (+ a frozen copy under no_grad),
         E_s / D_s as transformers' Dinov2Layer stacks with our weights, the decoder and LPIPS
         mirrors. The encoder input is the 224 px tensor (no resize on either side). No
         optimizer: the production step (+ AdamW, EMA, guards) is timed by gpu_bench.py stage2.
         The jax parameter count is 2 x width higher: the encoder's final LayerNorm gets a zero
         gradient in jax and none in torch (E_s reads the stream before it).

Before timing, one process builds both sides with the same weights and checks that the loss and the
global gradient norm agree (relative error <= 1e-4; the norm does not depend on the two layouts).
Then each (row, implementation) runs in a fresh process, alternating jax / torch; each run takes
the median of --steps timed steps after warm-up and reports the CPU share others used meanwhile
(runs above --max-load are DISTURBED and left out). Prints a table and per row:

  ratio torch/jax encoder-B batch=8: 1.31      (> 1: ours is faster)

"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from bench import _common  # pylint: disable=g-import-not-at-top
from bench import _torch_mirrors  # pylint: disable=g-import-not-at-top

ENCODERS = {"S": (384, 6), "B": (768, 12)}
LATENT_HW, LATENT_C = _torch_mirrors.LATENT_HW, _torch_mirrors.LATENT_C


# ------------------------------------------------------------------------------------ encoder
def _dinov2_dir(width: str, layers: int) -> str:
  """A random Dinov2Model saved by transformers (cached per size in the temp dir)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  hidden, heads = ENCODERS[width]
  path = os.path.join(tempfile.gettempdir(), f"psvae_bench_dinov2_{width}_{layers}")
  if not os.path.isfile(os.path.join(path, "config.json")):
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        patch_size=14,
        image_size=518,
    )
    transformers.Dinov2Model(cfg).save_pretrained(path)
  return path


def _images(batch: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


def _jax_encoder(args):
  from psvae_jax.weights import dinov2  # pylint: disable=g-import-not-at-top

  module, params = dinov2.load_dinov2(_dinov2_dir(args.width, args.layers))
  x = jnp.asarray(_images(args.batch, args.image_size))

  def loss(p, x):
    return jnp.mean(jnp.square(module.apply({"params": p}, x)))

  return jax.jit(jax.value_and_grad(loss)), params, x


def _torch_encoder(args):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  model = transformers.Dinov2Model.from_pretrained(_dinov2_dir(args.width, args.layers))
  model.train()  # dropout is 0 in DINOv2's config: train mode changes nothing but is honest
  x = torch.from_numpy(_images(args.batch, args.image_size)).permute(0, 3, 1, 2).contiguous()

  def step():
    model.zero_grad(set_to_none=True)
    out = model(pixel_values=x).last_hidden_state[:, 1:]
    loss = out.square().mean()
    loss.backward()
    return loss

  return model, step


# ---------------------------------------------------------------------------------- attention
def _qkv(args) -> list[np.ndarray]:
  """DINOv2's attention inputs at --image-size: (B, 1 + patches, heads, 64) each."""
  hidden, heads = ENCODERS[args.width]
  tokens = 1 + (args.image_size // 14) ** 2
  rng = np.random.default_rng(2)
  shape = (args.batch, tokens, heads, hidden // heads)
  return [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]


def _jax_attention(args):
  from psvae_jax.models import attention  # pylint: disable=g-import-not-at-top

  def loss(p, x):
    out = attention.dot_product_attention(*p, implementation=args.attention_impl or None)
    return jnp.mean(jnp.square(out))

  return jax.jit(jax.value_and_grad(loss)), [jnp.asarray(t) for t in _qkv(args)], None


def _torch_attention(args):
  import torch  # pylint: disable=g-import-not-at-top

  qkv = [torch.from_numpy(t).transpose(1, 2).contiguous().requires_grad_() for t in _qkv(args)]

  def step():
    for t in qkv:
      t.grad = None
    loss = torch.nn.functional.scaled_dot_product_attention(*qkv).square().mean()
    loss.backward()
    return loss

  return qkv, step


# ------------------------------------------------------------------------------------ decoder
def _flax_decoder(args):
  from psvae_jax.models import pixel_decoder  # pylint: disable=g-import-not-at-top

  return pixel_decoder.ConvDecoder(ch=args.dec_ch, ch_mult=tuple(args.ch_mult), groups=32)


def _latent(batch: int) -> np.ndarray:
  rng = np.random.default_rng(1)
  return rng.standard_normal((batch, LATENT_HW, LATENT_HW, LATENT_C)).astype(np.float32)


def _jax_decoder(args):
  module = _flax_decoder(args)
  z = jnp.asarray(_latent(args.batch))
  params = module.init(jax.random.key(0), z[:1])["params"]

  def loss(p, z):
    return jnp.mean(jnp.square(module.apply({"params": p}, z)))

  return jax.jit(jax.value_and_grad(loss)), params, z


def _torch_decoder(args, params=None):
  import torch  # pylint: disable=g-import-not-at-top

  model = _torch_mirrors.torch_decoder_module(args.dec_ch, args.ch_mult)
  if params is not None:
    _torch_mirrors.copy_flax_to_torch(params, model)
  z = torch.from_numpy(_latent(args.batch)).permute(0, 3, 1, 2).contiguous()

  def step():
    model.zero_grad(set_to_none=True)
    loss = model(z).square().mean()
    loss.backward()
    return loss

  return model, step


# ------------------------------------------------------------------------------------ workers
def _build_jax(args):
  if args.part == "stage2":
    return _torch_mirrors.jax_stage2(_dinov2_dir(args.width, args.layers), args)
  return {"encoder": _jax_encoder, "attention": _jax_attention, "decoder": _jax_decoder}[args.part](
      args
  )


def _build_torch(args, params=None):
  if args.part == "decoder":
    return _torch_decoder(args, params)
  if args.part == "stage2":
    return _torch_mirrors.torch_stage2(_dinov2_dir(args.width, args.layers), args, params)
  return {"encoder": _torch_encoder, "attention": _torch_attention}[args.part](args)


def jax_worker(args) -> dict:
  fn, params, x = _build_jax(args)
  compiled = fn.lower(params, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0))
  res = _common.time_steps(
      lambda: jax.block_until_ready(compiled(params, x)), args.steps, args.warmup
  )
  res["step_gflop"] = flops / 1e9
  return res


def torch_worker(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(_common.NCPU)
  _, step = _build_torch(args)
  return _common.time_steps(step, args.steps, args.warmup)


def check_worker(args) -> dict:
  """Loss and global gradient norm of both sides on the same weights and inputs."""
  fn, params, x = _build_jax(args)
  loss_j, grads = fn(params, x)
  norm_j = float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))))
  model, step = _build_torch(args, params)
  loss_t = float(step().detach())
  tensors = model if isinstance(model, list) else list(model.parameters())
  used = [p for p in tensors if p.grad is not None]  # DINOv2's mask_token: unused
  norm_t = float(sum(p.grad.double().square().sum() for p in used) ** 0.5)
  n_j = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  n_t = sum(p.numel() for p in used)
  return dict(
      loss_jax=float(loss_j),
      loss_torch=loss_t,
      loss_rel=_common.relative(float(loss_j), loss_t),
      grad_rel=_common.relative(norm_j, norm_t),
      params_jax=n_j,
      params_torch=n_t,
  )


def main():
  ap = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--parts", nargs="+", default=["encoder-S", "encoder-B", "decoder", "stage2-S"])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--steps", type=int, default=5, help="timed steps per run (median)")
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--layers", type=int, default=12, help="encoder blocks")
  ap.add_argument("--image-size", type=int, default=224)
  ap.add_argument("--dec-ch", type=int, default=32, help="decoder base width (paper: 128)")
  ap.add_argument("--ch-mult", type=int, nargs="+", default=[1, 1, 2, 2, 4])
  ap.add_argument(
      "--attention-impl", default="", help="psvae_jax attention implementation ('': by backend)"
  )
  ap.add_argument("--quick", action="store_true", help="smoke run: small, 2 steps, 1 round")
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--impl", default="jax", help=argparse.SUPPRESS)
  ap.add_argument("--part", default="encoder", help=argparse.SUPPRESS)
  ap.add_argument("--width", default="S", help=argparse.SUPPRESS)
  _common.add_load_args(ap)
  args = ap.parse_args()
  if args.worker:
    fn = check_worker if args.check else {"jax": jax_worker}.get(args.impl, torch_worker)
    _common.emit(fn(args))
    return
  if args.quick:
    args.steps, args.warmup, args.rounds, args.idle_timeout = 2, 1, 1, 0.0
    args.batch, args.layers, args.image_size, args.dec_ch = 2, 2, 112, 32
    args.ch_mult = [1, 2, 2]
  script = os.path.abspath(__file__)
  base = [
      "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
      "--layers", str(args.layers), "--image-size", str(args.image_size),
      "--dec-ch", str(args.dec_ch), "--ch-mult", *[str(m) for m in args.ch_mult],
      "--attention-impl", args.attention_impl,
  ]  # fmt: skip
  print(
      f"stage-2 parts vs PyTorch eager, fp32, batch {args.batch}, {args.steps} timed steps after "
      f"{args.warmup} warm-up, {args.rounds} round(s); {_common.NCPU} CPU cores; machine load now "
      f"{_common.machine_load():.0%}",
      flush=True,
  )
  summary = []
  for row in args.parts:
    part, _, width = row.partition("-")
    rargs = base + ["--part", part, "--width", width or "S"]
    chk = _common.run_worker(script, rargs + ["--check"])
    ok = max(chk["loss_rel"], chk["grad_rel"]) <= 1e-4
    print(
        f"{row} equality: params {chk['params_jax']:,} (jax) vs {chk['params_torch']:,} (torch), "
        f"loss rel {chk['loss_rel']:.1e}, gradient norm rel {chk['grad_rel']:.1e} -> "
        f"{'OK' if ok else 'MISMATCH'}",
        flush=True,
    )
    if not ok:
      raise SystemExit(f"{row}: the two sides differ; a ratio would be meaningless")
    jobs = {
        impl: (lambda i=impl, a=rargs: _common.run_worker(script, a + ["--impl", i]))
        for impl in ("jax", "torch")
    }
    summary.append((row, _common.alternate(jobs, args.rounds, args.max_load, args.idle_timeout)))
  _common.report(
      summary,
      "row",
      lambda row: f"{row} batch={args.batch}",
      [("torch", "jax", "torch/jax")],
      value_header="median fwd+bwd ms",
  )


if __name__ == "__main__":
  main()

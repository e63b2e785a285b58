"""torch.nn re-creations of the stage-2 parts for bench/psvae_vs_torch.py, with the weights copied
from (or to) the flax side, and the two sides of the whole stage-2 loss.

Mirrors: the LDM conv pixel decoder (NCHW), LPIPS' VGG16 + heads (torchvision / lpips layout:
written as .pth and read by psvae_jax.weights.lpips.load_lpips, the loader users run), and E_s / D_s
as transformers' Dinov2Layer stacks filled through psvae_jax.weights.dinov2's export names.
"""

from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

LATENT_HW, LATENT_C = 16, 96
SEM_BLOCKS = 3  # configs/svae.py: num_sem_blocks
# The stage-2 loss weights (alpha, gamma, lambda, beta), as configs/psvae.py.
ALPHA, GAMMA, LAMBDA, BETA = 1.0, 1.0, 0.1, 1e-4


# ------------------------------------------------------------------------------- pixel decoder
def torch_decoder_module(dec_ch: int, ch_mult) -> "torch.nn.Module":
  """psvae_jax.models.pixel_decoder.ConvDecoder in torch.nn, submodules named as the flax
  params (NCHW, GroupNorm eps 1e-6, nearest upsampling, single-head attention)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  def gn(c):
    return nn.GroupNorm(min(32, c), c, eps=1e-6)

  class ResBlock(nn.Module):

    def __init__(self, cin, c):
      super().__init__()
      self.GroupNorm_0, self.Conv_0 = gn(cin), nn.Conv2d(cin, c, 3, padding=1)
      self.GroupNorm_1, self.Conv_1 = gn(c), nn.Conv2d(c, c, 3, padding=1)
      self.skip = nn.Conv2d(cin, c, 1) if cin != c else None

    def forward(self, x):
      h = self.Conv_0(F.silu(self.GroupNorm_0(x)))
      h = self.Conv_1(F.silu(self.GroupNorm_1(h)))
      return (self.skip(x) if self.skip is not None else x) + h

  class Attn(nn.Module):

    def __init__(self, c):
      super().__init__()
      self.GroupNorm_0 = gn(c)
      self.q, self.k, self.v, self.proj = (nn.Linear(c, c) for _ in range(4))

    def forward(self, x):
      b, c, h, w = x.shape
      t = self.GroupNorm_0(x).flatten(2).transpose(1, 2)  # (B, HW, C)
      o = F.scaled_dot_product_attention(
          self.q(t)[:, None], self.k(t)[:, None], self.v(t)[:, None]
      )[:, 0]
      return x + self.proj(o).transpose(1, 2).reshape(b, c, h, w)

  class Decoder(nn.Module):

    def __init__(self):
      super().__init__()
      chans = [dec_ch * m for m in ch_mult]
      self.chans = chans
      self.conv_in = nn.Conv2d(LATENT_C, chans[-1], 3, padding=1)
      self.mid_res1, self.mid_attn = ResBlock(chans[-1], chans[-1]), Attn(chans[-1])
      self.mid_res2 = ResBlock(chans[-1], chans[-1])
      c = chans[-1]
      for level in reversed(range(len(chans))):
        for i in range(2):
          setattr(self, f"up{level}_res{i}", ResBlock(c, chans[level]))
          c = chans[level]
        if level > 0:
          setattr(self, f"up{level}_conv", nn.Conv2d(c, c, 3, padding=1))
      self.norm_out, self.conv_out = gn(chans[0]), nn.Conv2d(chans[0], 3, 3, padding=1)

    def forward(self, z):
      x = self.mid_res2(self.mid_attn(self.mid_res1(self.conv_in(z))))
      for level in reversed(range(len(self.chans))):
        for i in range(2):
          x = getattr(self, f"up{level}_res{i}")(x)
        if level > 0:
          x = getattr(self, f"up{level}_conv")(F.interpolate(x, scale_factor=2, mode="nearest"))
      return self.conv_out(F.silu(self.norm_out(x)))

  torch.manual_seed(0)
  return Decoder()


def copy_flax_to_torch(params, model) -> None:
  """Flax params -> a torch mirror named alike (conv HWIO -> OIHW, dense IO -> OI)."""
  import torch  # pylint: disable=g-import-not-at-top

  state = {}
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [p.key for p in path]
    leaf, v = names[-1], np.asarray(value)
    if leaf == "kernel":
      v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
    key = ".".join(names[:-1] + ["bias" if leaf == "bias" else "weight"])
    state[key] = torch.from_numpy(np.ascontiguousarray(v))
  missing = set(model.state_dict()) ^ set(state)
  if missing:
    raise ValueError(f"flax / torch names differ: {sorted(missing)[:8]}")
  model.load_state_dict(state)


# ------------------------------------------------------------------------------------- LPIPS
_VGG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_TAP_ENDS = (4, 9, 16, 23, 30)  # lpips' slice boundaries into vgg16.features


def torch_lpips_module(seed: int = 0) -> "torch.nn.Module":
  """lpips.LPIPS(net='vgg', lpips=True, version='0.1') re-created with torch.nn (torchvision's
  ``features.N`` and lpips' ``linK.model.1`` names), random He-normal convs and non-negative
  heads, in eval mode (the heads' dropout off, as lpips uses it). Also the reference of
  tests/test_lpips.py's parity tests."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
  scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

  class LPIPS(nn.Module):

    def __init__(self):
      super().__init__()
      layers, c_in = [], 3
      for v in _VGG:
        if v == "M":
          layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
          conv = nn.Conv2d(c_in, v, kernel_size=3, padding=1)
          nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # O(1) through 13 convs
          nn.init.uniform_(conv.bias, -0.1, 0.1)
          layers += [conv, nn.ReLU(inplace=True)]
          c_in = v
      self.features = nn.Sequential(*layers)
      for k, c in enumerate((64, 128, 256, 512, 512)):
        head = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))
        nn.init.uniform_(head[1].weight, 0.0, 0.1)
        setattr(self, f"lin{k}", nn.Module())
        getattr(self, f"lin{k}").model = head

    def taps(self, x):  # NCHW in [-1, 1] -> relu1_2 .. relu5_3
      h, out, start = (x - shift) / scale, [], 0
      for end in _TAP_ENDS:
        h = self.features[start:end](h)
        out.append(h)
        start = end
      return out

    def distance_from_taps(self, taps0, taps1):  # -> (B,)
      total = 0
      for k, (f0, f1) in enumerate(zip(taps0, taps1)):
        f0 = f0 / (torch.sqrt(torch.sum(f0**2, dim=1, keepdim=True)) + 1e-10)
        f1 = f1 / (torch.sqrt(torch.sum(f1**2, dim=1, keepdim=True)) + 1e-10)
        total = total + getattr(self, f"lin{k}").model((f0 - f1) ** 2).mean([2, 3], keepdim=True)
      return total[:, 0, 0, 0]

    def forward(self, x, y):
      return self.distance_from_taps(self.taps(x), self.taps(y))

  torch.manual_seed(seed)
  return LPIPS().eval()


def torch_lpips(seed: int = 0):
  """(frozen model, vgg .pth path, heads .pth path): ``torch_lpips_module`` saved as torchvision /
  lpips files (for psvae_jax.weights.lpips.load_lpips)."""
  import torch  # pylint: disable=g-import-not-at-top

  model = torch_lpips_module(seed)
  d = os.path.join(tempfile.gettempdir(), f"psvae_bench_lpips_{seed}")
  os.makedirs(d, exist_ok=True)
  vgg = {f"features.{k}": v for k, v in model.features.state_dict().items()}
  heads = {k: v for k, v in model.state_dict().items() if k.startswith("lin")}
  torch.save(vgg, os.path.join(d, "vgg16.pth"))
  torch.save(heads, os.path.join(d, "vgg.pth"))
  for p in model.parameters():
    p.requires_grad_(False)  # frozen, as in training
  return model, os.path.join(d, "vgg16.pth"), os.path.join(d, "vgg.pth")


# ------------------------------------------------------------------------------ E_s and D_s
def _dinov2_layers(flax_blocks: list, hidden: int, heads: int, layer_scale: bool):
  """A torch ModuleList of transformers' Dinov2Layer holding our vit.Block params."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from transformers.models.dinov2 import modeling_dinov2  # pylint: disable=g-import-not-at-top

  from psvae_jax.weights import dinov2 as dinov2_weights  # pylint: disable=g-import-not-at-top

  cfg = transformers.Dinov2Config(
      hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden
  )
  layers = torch.nn.ModuleList([modeling_dinov2.Dinov2Layer(cfg) for _ in flax_blocks])
  tree = {}
  for i, block in enumerate(flax_blocks):
    block = dict(block)
    if not layer_scale:  # D_s has no LayerScale: Dinov2Layer's is set to 1
      block["layer_scale1"] = block["layer_scale2"] = np.ones((hidden,), np.float32)
    tree[f"layer_{i}"] = block
  # The export writes the on-disk (checkpoint) names; transformers 5 renames them on load.
  renames = {
      "attention.attention.query.": "attention.q_proj.",
      "attention.attention.key.": "attention.k_proj.",
      "attention.attention.value.": "attention.v_proj.",
      "attention.output.dense.": "attention.o_proj.",
  }
  state = {}
  for k, v in dinov2_weights.export_dinov2_state_dict(tree).items():
    k = k[len("encoder.layer.") :]
    for old, new in renames.items():
      k = k.replace(old, new)
    state[k] = torch.from_numpy(np.ascontiguousarray(v))
  layers.load_state_dict(state)
  if not layer_scale:
    for layer in layers:
      layer.layer_scale1.lambda1.requires_grad_(False)
      layer.layer_scale2.lambda1.requires_grad_(False)
  return layers


def _ln_linear_to_torch(params) -> "torch.nn.Module":
  import torch  # pylint: disable=g-import-not-at-top

  if "scale" in params:  # LayerNorm
    m = torch.nn.LayerNorm(params["scale"].shape[0], eps=1e-6)
    m.weight.data = torch.from_numpy(np.array(params["scale"]))
  else:
    k = np.asarray(params["kernel"])
    m = torch.nn.Linear(*k.shape)
    m.weight.data = torch.from_numpy(np.ascontiguousarray(k.T))
  m.bias.data = torch.from_numpy(np.array(params["bias"]))
  return m


# ----------------------------------------------------------------------- the stage-2 loss step
def _inputs(args, seed: int = 3) -> dict[str, np.ndarray]:
  """The encoder's input (B, S, S, 3), the target image at the decoder's output size, eps."""
  rng = np.random.default_rng(seed)
  b, s, h = args.batch, args.image_size, args.image_size // 14
  out = h * 2 ** (len(args.ch_mult) - 1)
  return dict(
      enc=rng.standard_normal((b, s, s, 3)).astype(np.float32),
      image=rng.uniform(-1, 1, (b, out, out, 3)).astype(np.float32),
      eps=rng.standard_normal((b, h, h, LATENT_C)).astype(np.float32),
  )


def jax_stage2(dinov2_dir: str, args):
  """(jitted value_and_grad, trainable params, inputs) of the stage-2 loss in JAX, built from the
  library's modules and loss functions; also returns the flax params for the torch side."""
  from psvae_jax import losses  # pylint: disable=g-import-not-at-top
  from psvae_jax.models import autoencoder  # pylint: disable=g-import-not-at-top
  from psvae_jax.models import lpips as lpips_model  # pylint: disable=g-import-not-at-top
  from psvae_jax.models import pixel_decoder  # pylint: disable=g-import-not-at-top
  from psvae_jax.weights import dinov2  # pylint: disable=g-import-not-at-top
  from psvae_jax.weights import lpips as lpips_weights  # pylint: disable=g-import-not-at-top

  encoder, enc_params = dinov2.load_dinov2(dinov2_dir)
  hidden, heads = encoder.hidden_size, encoder.num_heads
  sem_enc = autoencoder.SemanticEncoder(hidden, heads, SEM_BLOCKS, LATENT_C)
  sem_dec = autoencoder.SemanticDecoder(hidden, heads, SEM_BLOCKS)
  pix_dec = pixel_decoder.ConvDecoder(ch=args.dec_ch, ch_mult=tuple(args.ch_mult), groups=32)
  _, vgg_path, heads_path = torch_lpips()
  lpips, lpips_vars = lpips_weights.load_lpips(vgg_path, heads_path)
  h = args.image_size // 14
  keys = jax.random.split(jax.random.key(0), 4)
  stream = jnp.zeros((1, h, h, hidden))
  z = jnp.zeros((1, h, h, LATENT_C))
  se = sem_enc.init(keys[0], stream)["params"]
  # to_moments is zero-initialised: random here, so that every gradient is non-trivial.
  se["to_moments"]["kernel"] = 0.02 * jax.random.normal(keys[3], se["to_moments"]["kernel"].shape)
  params = dict(
      encoder=enc_params,
      sem_enc=se,
      sem_dec=sem_dec.init(keys[1], z)["params"],
      pix_dec=pix_dec.init(keys[2], z)["params"],
  )
  frozen = jax.tree.map(jnp.copy, enc_params)

  def loss(p, x):
    target = jax.lax.stop_gradient(encoder.apply({"params": x["frozen"]}, x["enc"]))
    _, stream = encoder.apply({"params": p["encoder"]}, x["enc"], with_stream=True)
    mu, logvar = sem_enc.apply({"params": p["sem_enc"]}, stream)
    z = mu + jnp.exp(0.5 * logvar) * x["eps"]
    recon = pix_dec.apply({"params": p["pix_dec"]}, z)
    return (
        ALPHA * losses.semantic_loss(sem_dec.apply({"params": p["sem_dec"]}, z), target)
        + GAMMA * losses.pixel_loss(recon, x["image"])
        + LAMBDA * jnp.mean(lpips_model.lpips_distance(lpips, x["lpips"], recon, x["image"]))
        + BETA * losses.kl_loss(mu, logvar)
    )

  # The frozen copy and LPIPS's weights are arguments, as in the production step (the PS-VAE
  # task's `frozen` / `consts`), not constants closed over: XLA:CPU folded constant weights into
  # fusions (two dots and GELU in one) that ran ~3x slower than the same layers as arguments.
  x = {k: jnp.asarray(v) for k, v in _inputs(args).items()}
  x.update(frozen=frozen, lpips=lpips_vars)
  return jax.jit(jax.value_and_grad(loss)), params, x


def torch_stage2(dinov2_dir: str, args, params=None):
  """(trainable tensors, step) of the same loss in PyTorch eager: transformers' Dinov2Model (and a
  frozen copy under no_grad), E_s / D_s as Dinov2Layer stacks, the decoder mirror, the LPIPS
  mirror. With `params` (jax_stage2's), E_s / D_s / D_p hold the same weights."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from psvae_jax.models.layers import sincos_2d  # pylint: disable=g-import-not-at-top

  if params is None:  # timing only: the same shapes from the jax init, no jax compile
    _, params, _ = jax_stage2(dinov2_dir, args)
  enc = transformers.Dinov2Model.from_pretrained(dinov2_dir)
  frozen = transformers.Dinov2Model.from_pretrained(dinov2_dir).requires_grad_(False)
  hidden, heads = enc.config.hidden_size, enc.config.num_attention_heads
  se, sd = params["sem_enc"], params["sem_dec"]
  se_blocks = _dinov2_layers([se[f"block{i}"] for i in range(SEM_BLOCKS)], hidden, heads, True)
  sd_blocks = _dinov2_layers([sd[f"block{i}"] for i in range(SEM_BLOCKS)], hidden, heads, False)
  se_norm, se_out = _ln_linear_to_torch(se["norm"]), _ln_linear_to_torch(se["to_moments"])
  sd_in, sd_norm = _ln_linear_to_torch(sd["proj_in"]), _ln_linear_to_torch(sd["norm"])
  sd_out = _ln_linear_to_torch(sd["proj_out"])
  dec = torch_decoder_module(args.dec_ch, args.ch_mult)
  copy_flax_to_torch(params["pix_dec"], dec)
  lpips, _, _ = torch_lpips()
  h = args.image_size // 14
  pos = torch.from_numpy(np.asarray(sincos_2d(h, h, hidden), np.float32))
  x = {k: torch.from_numpy(v) for k, v in _inputs(args).items()}
  enc_in = x["enc"].permute(0, 3, 1, 2).contiguous()
  image = x["image"].permute(0, 3, 1, 2).contiguous()
  eps = x["eps"].reshape(args.batch, h * h, LATENT_C)
  modules = [enc, se_blocks, se_norm, se_out, sd_in, sd_blocks, sd_norm, sd_out, dec]
  tensors = [p for m in modules for p in m.parameters()]

  def step():
    for p in tensors:
      p.grad = None
    with torch.no_grad():
      target = frozen(pixel_values=enc_in).last_hidden_state[:, 1:]
    stream = enc.encoder(enc.embeddings(enc_in)).last_hidden_state[:, 1:]
    for layer in se_blocks:
      stream = layer(stream)
    mu, logvar = se_out(se_norm(stream)).chunk(2, dim=-1)
    logvar = logvar.clamp(-30.0, 20.0)
    z = mu + torch.exp(0.5 * logvar) * eps  # (B, hw, C)
    f = sd_in(z) + pos
    for layer in sd_blocks:
      f = layer(f)
    f = sd_out(sd_norm(f))
    recon = dec(z.transpose(1, 2).reshape(args.batch, LATENT_C, h, h))
    d = recon - image
    loss = (
        ALPHA * (f - target).square().mean()
        + GAMMA * (0.5 * d.abs().mean() + 0.5 * d.square().mean())
        + LAMBDA * lpips(recon, image).mean()
        + BETA * (-0.5 * (1.0 + logvar - mu.square() - logvar.exp())).mean()
    )
    loss.backward()
    return loss

  return tensors, step

"""Stage 1 (S-VAE): train E_s and D_s on a frozen DINOv2 (and D_p on a detached latent).

  python -m psvae_jax.main --config=configs/svae.py:tiny --workdir=runs/svae
  python -m psvae_jax.main --config=configs/svae.py:dinov2_b --workdir=gs://b/svae \
      --config.model.encoder.weights=/ckpt/dinov2-base --config.data.source=folder \
      --config.data.path=/data/imagenet/train

Variants: `dinov2_b` (the PS-VAE paper: DINOv2-B, 224 in, 256 out, C=96, conv decoder),
`dinov2_l` (the seed: DINOv2-L, d=1024), `siglip2_so400m` (Google's SigLIP2-so400m-patch14-224,
27 blocks; the paper's SigLIP2 is Bagel's 26-block tower, not loadable here;
`--config.model.encoder.weights=` a SigLIP2-so400m-patch14-224 directory), `tiny` (CPU demo
and tests: 32 px shapes, a small random-init ViT with 4 px patches, 8x8x16 latent, small conv
decoder).

The paper-size variants refuse to start without `--config.model.encoder.weights` (a
random ViT only with an explicit `--config.model.encoder.weights=random`, for tests and
benchmarks; psvae_jax/train/preflight.py). Stage 1 has no LPIPS term (`loss.lpips=0`):
its pixel decoder trains on a detached latent only so that stage 1 can be judged in
pixels, so it needs no VGG files; stage 2 (configs/psvae.py) has `loss.lpips=0.1`.
"""

import ml_collections

from configs import common

VARIANTS = ("dinov2_b", "dinov2_l", "siglip2_so400m", "tiny")


def autoencoder_config(stage: str, variant: str) -> ml_collections.ConfigDict:
  """Shared by stage 1 and stage 2 so that stage 2 can restore stage 1's params."""
  c = common.base_config(stage)
  c.variant = variant  # everything but "tiny" is paper-size: needs weight files to start
  c.init_from = ""  # stage 2: the stage-1 workdir
  c.latent_stats_images = 50_000  # images for the per-channel latent statistics (end of stage)
  c.model = ml_collections.ConfigDict(
      dict(
          encoder=ml_collections.ConfigDict(
              dict(
                  # dinov2 (vit.DinoV2) | siglip2 (models/siglip.SiglipVision: a SigLIP or
                  # SigLIP2 vision tower; input normalised with mean / std 0.5, not ImageNet's)
                  kind="dinov2",
                  size="B",  # dinov2: S | B | L | g | tiny; siglip2: B | so400m | tiny
                  registers=False,
                  # a Hugging Face checkpoint directory of that kind (Dinov2Model; SiglipModel,
                  # SiglipVisionModel, Siglip2Model or Siglip2VisionModel), or "random" (random
                  # init; tests, benchmarks). "" (unset) is random init for `tiny` and refused
                  # for paper sizes; a directory of the other kind is refused.
                  weights="",
                  image_size=224,  # encoder input side (images are resized to it)
                  hidden_size=0,
                  num_layers=0,
                  num_heads=0,
                  patch_size=0,
              )
          ),  # 0 = the size's value
          latent_channels=96,
          num_sem_blocks=3,
          sem_init_from_encoder=True,  # E_s blocks start from the encoder's last blocks (paper)
          pixel_decoder=ml_collections.ConfigDict(
              dict(
                  type="conv",
                  ch=128,
                  ch_mult=(1, 1, 2, 2, 4),
                  num_res_blocks=2,
                  mid_attention=True,
                  groups=32,
                  hidden_size=768,
                  num_layers=12,
                  num_heads=12,
                  patch_size=16,
                  refine_channels=0,
              )
          ),
      )
  )
  # adv: weight of the optional adversarial loss (stage 2 only; 0 = off): LDM's PatchGAN with a
  # hinge loss, its generator term scaled by adv x the adaptive weight (||grad nll|| / ||grad
  # adv|| at the pixel decoder's last layer), from adv.start_step on (psvae_jax/models/
  # discriminator.py; the discriminator trains in the same step, its optimizer below).
  # adv.start_step -1 (the default) starts it at adv.start_fraction of num_train_steps (resolved
  # at stage-2 start, written into the workdir's config.json): the reconstruction first, as LDM
  # starts its discriminator after 50k steps.
  c.loss = ml_collections.ConfigDict(dict(sem=1.0, cos=0.0, pix=1.0, lpips=0.1, kl=1e-4, adv=0.0))
  # The discriminator's optimizer: Adam (b1, b2) = LDM's (0.5, 0.9), lr 0 = optim.lr; its
  # gradients are clipped by their own global norm, apart from the autoencoder's.
  c.adv = ml_collections.ConfigDict(
      dict(
          start_step=-1,
          start_fraction=0.5,
          ndf=64,
          n_layers=3,
          adaptive=True,
          max_weight=1e4,
          lr=0.0,
          b1=0.5,
          b2=0.9,
      )
  )
  # LPIPS weights: torchvision vgg16 .pth/.safetensors and the lpips package's vgg.pth
  # heads. "random" (tests only) uses random VGG weights, which are not perceptual.
  c.lpips = ml_collections.ConfigDict(dict(vgg="", heads=""))
  c.optim.lr_groups.encoder = 1e-5  # stage 2 fine-tunes the encoder gently
  c.optim.lr = 1e-4
  c.batch_size = 256
  c.data.image_size = 256

  if variant == "dinov2_l":
    c.model.encoder.size = "L"
  if variant == "siglip2_so400m":
    # The paper's second encoder family: google/siglip2-so400m-patch14-224 (1152 wide, 27 blocks,
    # patch 14: 16 x 16 tokens at 224 px, the DINOv2 latent grid). Not the paper's exact tower:
    # PS-VAE used Bagel's SigLIP2 (26 blocks, positions cropped from a 70 x 70 table), whose
    # layout this importer does not read (docs/training.md).
    c.model.encoder.kind, c.model.encoder.size = "siglip2", "so400m"
  if variant == "tiny":
    c.dtype = "float32"  # XLA:CPU runs bf16 no faster; the demo's figures were measured in fp32
    c.seed = 0
    c.batch_size = 32
    c.num_train_steps = 250
    c.log_every = 50
    c.ckpt_every = 250
    c.eval_every = 250
    c.ema_decay = 0.995
    c.optim.lr = 1e-3
    c.optim.lr_groups.encoder = 5e-5
    c.optim.warmup_steps = 50
    c.data.image_size = 32
    c.data.num_train = 100_000
    c.data.num_eval = 256
    c.latent_stats_images = 2048
    c.eval = ml_collections.ConfigDict(dict(num_images=256, batch_size=64, num_grid=16))
    e = c.model.encoder
    e.size, e.image_size, e.hidden_size, e.num_layers, e.num_heads, e.patch_size = (
        "tiny",
        32,
        64,
        3,
        2,
        4,
    )
    c.model.latent_channels = 16
    c.model.num_sem_blocks = 1
    c.model.sem_init_from_encoder = False
    # XLA:CPU convs at few channels are slow (~28 GFLOP/s vs ~60 for the ViT's matmuls):
    # a 2-block ViT on the 8x8 tokens, 4x4x16 sub-pixels per token, then one full-res
    # ResBlock that smooths patch seams (a linear patch output alone makes shapes blocky).
    p = c.model.pixel_decoder
    p.type, p.hidden_size, p.num_layers, p.num_heads, p.patch_size = "vit", 96, 2, 2, 4
    p.refine_channels, p.groups = 16, 8
    # No VGG weights can ship with the demo, and random-VGG LPIPS is not perceptual.
    c.loss.lpips = 0.0
    # The PatchGAN at 32 px (loss.adv > 0): 2 layers give 6x6 patch logits (3 give 2x2, and their
    # 4x4 stride-1 conv's backward costs 527 ms at batch 32 on XLA:CPU, against 55 ms for all of
    # the 2-layer one's forward + backward; measured on the 2-core machine).
    c.adv.n_layers = 2
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, VARIANTS, "dinov2_b")
  c = autoencoder_config("svae", variant)
  c.loss.lpips = 0.0  # D_p trains on a detached z (only to judge stage 1 in pixels)
  if variant == "tiny":
    c.optim.lr_groups.encoder = 0.0  # unused: stage 1 freezes the encoder
  return c

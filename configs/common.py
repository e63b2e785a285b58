"""Fields every stage config shares; stage configs start from `base_config()`.

All configs are locked (`config_flags(lock_config=True)`), so a mistyped override such
as `--config.optim.lrr=1` fails before any compute, naming the key.
"""

import ml_collections

from psvae_jax.diffusion import settings


def base_config(stage: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.seed = 0
  c.batch_size = 256  # global, over all processes and devices
  c.num_train_steps = 100_000
  c.log_every = 100
  c.ckpt_every = 5_000
  c.eval_every = 5_000
  c.keep_checkpoints = 3
  c.async_checkpoint = True
  c.max_skipped_steps = 100  # non-finite steps tolerated (skipped) before halting
  # Fault injection for drills and tests: the gradients of these (1-based) steps are set to
  # NaN inside the jitted step, which must then skip them (counted in train/skipped_steps).
  c.inject_nonfinite_steps = ()
  # Compute dtype: "bfloat16" (paper-size configs) or "float32" (the `tiny` CPU configs set it).
  # Params, gradients, optimizer state, EMA, the losses (losses.py), LPIPS and the models' output
  # heads (pixels, DiT prediction, latent moments) stay float32; LayerNorm statistics and
  # attention softmax are float32 (flax, jax.nn.dot_product_attention). tests/test_precision.py:
  # the tiny stage 1-3 losses in bf16 within 2e-2 of fp32.
  # Memory of stage 2 (PS-VAE DINOv2-B, 224 in / 256 out), batch 8, 8 simulated CPU devices, default
  # mesh (fsdp=1), per device, XLA memory_analysis (python bench/memory_plan.py --devices 8 --fsdp 1
  # --configs psvae_dinov2_b --batch 8 --compile --dtype D):   state (args)   temp
  #   float32    2.77 GiB   1.08 GiB
  #   bfloat16   2.77 GiB   0.99 GiB   (params, Adam state stay fp32: bf16 only trims activations)
  # x 8 simulated devices on one host: ~30 GiB (the ">21 GB" seen). --config.mesh.fsdp=8 divides the
  # state by 8 (0.35 GiB per device); bench/memory_plan.py has the paper-size rows.
  c.dtype = "bfloat16"

  # -1: the remaining devices. Data parallel by default; the paper-size DiT configs put every
  # device on fsdp (data=1, fsdp=-1). Compiled for v5e-16 by the TPU compiler (launch/aot.sh,
  # docs/aot.md), batch 256: dit.py:paper refused at fsdp=1 (temporaries 28.6 GiB of the 15.75 a
  # v5e chip gives), 9.5 GiB at fsdp=16; psvae.py:dinov2_b 12.2 GiB and a 174 ms roofline at
  # fsdp=1, but 16.5 GiB (temporaries 16.1) and 399 ms at fsdp=16: the autoencoders stay on data.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.shard_min_size = 2**16  # arrays with fewer elements are replicated, larger ones fsdp-split

  c.optim = ml_collections.ConfigDict(
      dict(
          lr=1e-4,
          lr_groups=ml_collections.ConfigDict(),
          warmup_steps=1_000,
          min_lr_ratio=0.1,
          weight_decay=0.0,
          b1=0.9,
          b2=0.99,
          eps=1e-8,
          grad_clip=1.0,
      )
  )
  c.ema_decay = 0.9999

  c.data = data_config()

  c.eval = ml_collections.ConfigDict(dict(num_images=256, batch_size=64, num_grid=16))
  # Extra evaluators run at every eval (psvae_jax/evals/evaluators.py), e.g. in a config file
  # c.evals.rfid = dict(type="rfid", feature="inception", weights="pt_inception.pth",
  # num_images=10_000). Empty by default: the tiny configs' eval cost is unchanged.
  c.evals = ml_collections.ConfigDict()
  return c


def data_config() -> ml_collections.ConfigDict:
  """The data fields and their defaults: the only place they are written.

  `psvae_jax.data.config.resolve` fills a partial data config (a test's dict, an old
  workdir's config.json, a latent cache's meta.json) from these.
  """
  return ml_collections.ConfigDict(
      dict(
          # "shapes" (psvae_jax/shapes/) | "folder" | "tfds" | "latents" (data/sources.py)
          source="shapes",
          path="",  # folder root; tfds data_dir (or a prepared dataset dir); latent cache dir
          image_size=256,  # pixel target side
          num_train=1_000_000,  # shapes: number of distinct training scenes; others: a cap
          num_eval=10_000,
          seed=0,
          num_workers=0,  # grain worker processes (0: in-process)
          prefetch=2,  # batches buffered per worker
          num_threads=8,  # reader threads per process
          crop="center",  # "center" | "random"
          random_flip=False,  # never for shapes: captions name left and right
          encoder_image_size=0,  # > 0: also an "image_enc" field at this side (same crop)
          # tfds (psvae_jax/data/tfds_source.py says how to prepare ImageNet, COCO, folders)
          tfds_name="",  # e.g. "imagenet2012", "coco_captions"
          train_split="train",
          eval_split="validation",
          image_key="",  # "" = auto-detect; nested features as "a/b"
          caption_key="",
          label_key="",
          label_captions=False,  # class names as captions (tfds ClassLabel, folder subfolders)
          label_names="",  # file mapping class ids to words (e.g. ImageNet synsets)
          label_template="{}",  # caption template for label captions, e.g. "a photo of a {}"
          # captions and tokenization
          tokenizer="",  # local transformers tokenizer dir -> "input_ids", "attention_mask"
          max_length=77,  # tokens (padded / truncated)
          max_caption_chars=1000,  # longer captions are cut at a word boundary (counted)
          empty_captions="keep",  # missing / empty captions: "keep" as "" or "skip" the record
          # bad input (psvae_jax/data/decode.py)
          max_pixels=50_000_000,  # larger: JPEG decoded downscaled (draft), others skipped
          min_image_size=8,  # shorter side below this (e.g. 1x1): skipped
          alpha_background="white",  # transparent pixels composited on "white" | "black"
          probe_records=64,
      )
  )  # records checked at start-up: none usable -> fail fast


def sample_config() -> ml_collections.ConfigDict:
  """A stage-3 config's `sample` fields at their defaults (psvae_jax/diffusion/settings.py
  `SampleSettings`, the one place they are written and explained; seed and resample are per
  call, not stored)."""
  defaults = settings.SampleSettings()
  return ml_collections.ConfigDict(
      {k: getattr(defaults, k) for k in settings.SampleSettings.CONFIG_FIELDS}
  )


def uses_fusion_generator(config) -> bool:
  """Whether a stage-3 config's generator is the fusion one (`generator.kind`; configs written
  before the field are DiTs). No JAX: preflight and the compile CLI's report read it;
  builders.generator_kind also refuses an unknown kind."""
  kind = (config.get("generator") or {}).get("kind") or "dit"
  return config.get("stage") == "dit" and kind == "fusion"


def edits_by_instruction(config) -> bool:
  """Whether a stage-3 model was trained with model.source_condition (InstructPix2Pix pairs): it
  takes a source image per sample and edits by instruction; it does not generate from text alone
  nor run SDEdit. config: a ConfigDict or a stored config.json dict."""
  return bool((config.get("model") or {}).get("source_condition", False))


def parse_arg(arg: str | None, variants: tuple[str, ...], default: str) -> str:
  """The `:arg` of `--config=configs/x.py:arg` must name a known variant."""
  arg = arg or default
  if arg not in variants:
    raise ValueError(f"Unknown config variant {arg!r}; expected one of {variants}.")
  return arg

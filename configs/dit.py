"""Stage 3 (DiT): diffusion in the frozen PS-VAE's normalised latent, text- or class-conditioned.

  python -m psvae_jax.main --config=configs/dit.py:tiny --workdir=runs/dit \
      --config.autoencoder=runs/psvae --config.text_encoder=runs/text_encoder
  python -m psvae_jax.main --config=configs/dit.py:XL_text --workdir=gs://b/dit \
      --config.autoencoder=gs://b/psvae --config.text_encoder=/ckpt/t5-v1_1-xxl \
      --config.data.source=latents --config.data.path=gs://b/latents

Variants: `<S|B|L|XL>_<text|class>` (DiT paper sizes, patch 1 on the 16x16xC latent, batch
256, 400k steps), `paper`, `tiny` (CPU demo: width 128, depth 4, text with a jointly trained
text encoder, guidance scale 4, 8x8x16 shapes latents)
`tiny_class` (the same, class-conditioned: the Fashion-MNIST demo, `launch/demo.sh OUT
--data=fashion_mnist`) and `tiny_instruct` (the same, instruction editing on the shapes
triples: `launch/instruct.sh OUT`), `paper_fusion` (the paper's generator: Qwen2.5-0.5B blocks
shared by text and latent tokens, a DDT head; `--config.generator.weights=QWEN2_DIR`) and
`tiny_fusion` (its demo-world size). Class models take their class count from the data
(model.num_classes).
Objective: eps-prediction with the linear beta schedule (seed) or flow matching with
logit-normal t and timestep shift (`--config.diffusion.objective=flow`).

The two presets of the method (DESIGN.md section 1):
- `XL_text` (the seed, the default): eps-prediction, linear betas, T = 1000; DDIM 50 steps
  (eta 0), guidance scale 7.5 (the defaults: psvae_jax/diffusion/settings.py SampleSettings).
- `paper` (the PS-VAE paper's recipe): XL text; flow matching (v = eps - z0), logit-normal(0, 1)
  t with the dimension-dependent training shift sqrt(h*w*C / 4096) (diffusion.flow_shift_base_dim
  = 4096: resolved from the autoencoder's latent at stage-3 start, sqrt(6) ~ 2.449 on the 16x16x96
  PS-VAE latent, and written into the workdir's config.json as diffusion.flow_shift); Euler
  50 steps with sampling shift sample.shift = 3, guidance scale 6.5.
The training shift (diffusion.flow_shift) and the sampling shift (sample.shift, `--shift` on
`python -m psvae_jax.sample`) are separate settings: changing one leaves the other alone.
"""

import ml_collections

from configs import common

SIZES = ("S", "B", "L", "XL")
CONDS = ("text", "class")
VARIANTS = tuple(f"{s}_{c}" for s in SIZES for c in CONDS) + (
    "paper",
    "tiny",
    "tiny_class",
    "tiny_instruct",
    "paper_fusion",
    "tiny_fusion",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, VARIANTS, "XL_text")
  c = common.base_config("dit")
  c.autoencoder = ""  # stage-2 (PS-VAE) workdir: frozen encoder/decoder + latent_stats.npz
  # A stage-3 workdir whose EMA weights this run starts from (train/tasks/dit.start_from): e.g.
  # an instruction-editing model from the text-to-image one (InstructPix2Pix's start: the source
  # latent's new input channels zero; a text encoder of a larger vocabulary keeps the rows of
  # the words both know).
  c.init_from = ""
  c.text_encoder = ""  # HF directory of a CLIP text model or T5 encoder (+ its tokenizer)
  c.train_text_encoder = False  # True: fine-tune it jointly (small encoders; the demo's)
  # Storage dtype of a FROZEN text encoder's params (a jointly trained one stays float32); they
  # are step constants, fsdp-sharded like params. XL_text + T5-XXL (bench/memory_plan.py, batch
  # 256, 8 devices), state + constants per device before activations: T5-XXL encoder (4.8B) 8.9
  # GiB bf16 (17.7 fp32) + DiT-XL (0.83B) params, EMA, Adam 12.4 GiB fp32 = 21.3 GiB with all of
  # it replicated (--config.mesh.data=-1 --config.mesh.fsdp=1; 30.1 with fp32 T5). The paper-size
  # variants shard it over every device (mesh data=1, fsdp=-1): the whole train step compiled
  # for v5e-16 (launch/aot.sh) takes 9.5 GiB per chip, of which 1.3 arguments.
  c.text_encoder_dtype = "bfloat16"
  size, cond = {
      "tiny": ("tiny", "text"),
      "tiny_class": ("tiny", "class"),
      "tiny_instruct": ("tiny", "text"),
      "paper": ("XL", "text"),
      "paper_fusion": ("XL", "text"),
      "tiny_fusion": ("tiny", "text"),
  }.get(variant, tuple(variant.split("_")))
  c.model = ml_collections.ConfigDict(
      dict(
          size=size,
          patch_size=1,
          cond_type=cond,
          # class models: 0 = the data's class count (its class names: class subfolders, a tfds
          # ClassLabel, a latent cache's meta.json), resolved at stage-3 start and written into
          # the workdir's config.json; a class model whose data has no class names refuses to
          # start (set it); a count below the data's refuses too.
          num_classes=0,
          # Activation memory: remat the blocks ("full": keep block inputs only; "dots_saveable":
          # keep matmul outputs). scan_blocks: the blocks as one nn.scan (one traced block; params
          # stacked under blocks/block: models/dit.stack_blocks converts an unrolled checkpoint).
          # Measured on the 2-core CPU: DiT-XL/2 train-step lower+compile 11.1 -> 3.7 s
          # (bench/compile_time.py), but the DiT-S depth-12 step 1229 -> 1497 ms (+22%,
          # bench/dit_train_vs_torch.py --no-torch --dit scan_blocks=true): off by default.
          depth=0,  # 0 = the size's depth (DiT paper); > 0 overrides it at the size's width
          remat=False,
          remat_policy="full",
          scan_blocks=False,
          attention_impl="",  # "": the CPU path on CPU, else jax's; "cpu" | "cudnn" | "xla"
          # head_width > 0: a wide DDT head (RAE's DiT^DH: head_depth adaLN blocks of that width,
          # conditioned per token on the blocks' output and t) replaces DiT's final layer;
          # RAE's DiT^DH-XL uses width 2048, depth 2. 0: DiT's own final layer.
          head_width=0,
          head_depth=2,
          head_heads=16,
          # Instruction editing (InstructPix2Pix): the DiT also reads a source image's latent,
          # concatenated on channels; the data must give pairs (records with a source image,
          # or a latent cache of them) and "caption" is the instruction. Sampling with
          # Generator.instruct / pipe.instruct / `sample --instruction`.
          source_condition=False,
      )
  )
  # The generator: "dit" (the cross-attention DiT of model.size over config.text_encoder) or
  # "fusion" (the paper's: text and latent tokens through shared Qwen2 blocks, then a wide DDT
  # head of model.head_width/head_depth/head_heads; psvae_jax/models/fusion.py). A fusion
  # generator's blocks start from generator.weights, a Hugging Face Qwen2 directory (config.json,
  # model.safetensors and the tokenizer, which also tokenizes the captions: e.g. Qwen2.5-0.5B);
  # the whole model trains; it needs no text_encoder. generator.backbone names a published config
  # (psvae_jax/weights/qwen2.NAMED) for programs built without the directory (launch/aot.sh);
  # training refuses to start without generator.weights. model.size and model.depth are the
  # DiT's (a fusion generator does not read them); patch_size and the head fields serve both.
  c.generator = ml_collections.ConfigDict(dict(kind="dit", weights="", backbone=""))
  # flow_shift: the TRAINING timestep shift s of flow matching (t' = s*t / (1 + (s-1)*t) on the
  # logit-normal t); flow_shift_base_dim > 0 replaces it at stage-3 start by the dimension-
  # dependent shift sqrt(h*w*C / flow_shift_base_dim) (SD3 section 5.3.2, RAE: base 4096;
  # psvae_jax/diffusion/objectives.dimension_shift). 0: flow_shift as given.
  c.diffusion = ml_collections.ConfigDict(
      dict(
          objective="eps",
          schedule="linear",
          num_timesteps=1000,
          beta_start=1e-4,
          beta_end=0.02,
          flow_shift=1.0,
          flow_shift_base_dim=0,
          p_uncond=0.1,  # the text (or class) condition is dropped with this probability
          # source_condition models: the source latent is dropped with p_drop_source, both
          # conditions together with p_drop_both (<= either): InstructPix2Pix's 5% text only,
          # 5% source only, 5% both at the defaults. Two-condition guidance needs all three.
          p_drop_source=0.1,
          p_drop_both=0.05,
          latent_sample=True,
      )
  )
  # steps, guidance_scale, eta, guidance_rescale, guidance_interval, shift, image_guidance_scale:
  # psvae_jax/diffusion/settings.py (SampleSettings) says what each is and holds the defaults.
  c.sample = common.sample_config()
  c.data.max_length = 77
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 5_000
  c.optim.weight_decay = 0.0
  c.ema_decay = 0.9999
  c.num_train_steps = 400_000
  c.batch_size = 256
  # Eval size (every eval_every steps and the final one): eval.num_images prompts x sample.steps
  # steps, once per guidance scale in eval.guidance_scales (empty: (sample.guidance_scale, 1.0));
  # each step runs the conditional and unconditional halves as one batch. At these defaults:
  # 64 prompts x 50 steps x 2 scales = 6,400 denoising steps = 12,800 DiT-XL forward passes (one
  # per latent), plus 2 x 64 decodes.
  c.eval.num_images = 64
  c.eval.guidance_scales = ()

  if size != "tiny":  # every device on fsdp (configs/common.py says why)
    c.mesh.data, c.mesh.fsdp = 1, -1

  if variant in ("paper", "paper_fusion"):
    c.diffusion.objective = "flow"
    c.diffusion.flow_shift_base_dim = 4096  # training shift sqrt(h*w*C / 4096)
    c.sample.update(shift=3.0, guidance_scale=6.5)

  if variant == "paper_fusion":
    # The paper's generator: Qwen2.5-0.5B's 24 blocks over [text | latent], DDT head 2048 x 2
    # (RAE's DiT^DH-XL head); 661.6M parameters on the 16x16x96 latent (the paper: 653M). The
    # paper trains at a batch of about 730; 768 divides the chips of v5p-32 (16) and v5e-64.
    c.generator.update(kind="fusion", backbone="qwen2.5-0.5b")
    c.model.update(head_width=2048, head_depth=2, head_heads=16)
    c.batch_size = 768
  if variant in ("tiny", "tiny_class", "tiny_instruct", "tiny_fusion"):
    c.dtype = c.text_encoder_dtype = "float32"  # XLA:CPU: bf16 is no faster
    # Measured on the 2-core CPU (shapes, 8x8x16 latent): flow matching reached adherence
    # 0.16 after 800 steps where eps-prediction reached 0.0, and 0.41 after 1600; patch 2
    # (16 tokens) makes a step ~3x cheaper than patch 1. The demo trains from a latent cache.
    # 3000 steps: at 2000 a clean-clone demo scored 0.496 (guidance scale 7.5, interval below) vs
    # 0.430 at guidance scale 1 (frozen text encoder, figures of before the composition split).
    c.model.patch_size = 2
    c.diffusion.objective = "flow"
    c.batch_size = 64
    c.num_train_steps = 3000
    c.log_every = 50
    c.ckpt_every = 500
    c.eval_every = 3000
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.optim.grad_clip = 1.0
    c.ema_decay = 0.995
    c.data.image_size = 32
    c.data.num_eval = 256
    c.data.max_length = 16
    c.eval = ml_collections.ConfigDict(
        dict(num_images=256, batch_size=64, num_grid=16, guidance_scales=())
    )
    # Plain CFG at 7.5 over-guides this small flow model at low noise (shapes grow, textures
    # appear): guidance applies on the noisier half of the trajectory only (t >= 0.5).
    c.sample.guidance_interval = (0.5, 1.0)
  if variant in ("tiny", "tiny_instruct"):
    # Attribute binding ("a red circle on the left and a blue square on the right") needs a text
    # encoder whose token states say which colour and shape go with which position: the frozen
    # random CLIP does not. Measured on the validation split (issue 16; 128 prompts per group,
    # same PS-VAE and latent cache, 3000 steps): frozen -> jointly trained text encoder,
    # two-object adherence 0.27 -> 0.77 (seen compositions) and 0.21 -> 0.66 (held-out "val"
    # ones), single objects 0.88 -> 0.90 / 0.89 -> 0.84; colour leaks between objects vanished
    # (57 -> 0 of 256 objects).
    c.train_text_encoder = True
    # Chosen on the validation split only (512 prompts, paired seeds, interval (0.5, 1)): scale
    # 4 0.812, 7.5 0.764, 4 with shift 2 0.807, 4 on t >= 0.3 0.797 (s.e. about 0.018).
    c.sample.guidance_scale = 4.0
  if variant == "tiny_fusion":
    # The demo world's fusion generator: a tiny Qwen2-shaped stack (random, with a word-level
    # tokenizer over the shapes vocabulary: `python -m psvae_jax.shapes.text --out=DIR
    # --qwen2`) at the tiny DiT's recipe (steps, batch, learning rate, sampling); the DDT head
    # as wide as the stack. Set --config.generator.weights=DIR.
    c.generator.kind = "fusion"
    c.model.update(head_width=128, head_depth=2, head_heads=4)
    c.sample.guidance_scale = 4.0
  if variant == "tiny_instruct":
    # Triples of the shapes world (psvae_jax/shapes/instruct.py), paired latents from a cache.
    c.model.source_condition = True
    c.data.source = "shapes_instruct"
  return c

"""Evaluation suites for `python -m psvae_jax.evaluate --workdir=DIR --config=configs/eval.py:ARG`.

Variants: `demo` (CPU: fid_proxy, rfid_proxy, psnr, ssim, lpips, adherence on the shapes demo;
proxy weights from `--config.proxy_weights`, default `<workdir>/../fid_proxy.safetensors`),
`inception` (Inception FID-N / rFID with `--config.inception_weights=pt_inception-...pth`
and an optional `--config.reference=VIRTUAL_imagenet256_labeled.npz`), `classes` (a class-
conditioned model on the user's labelled data, no Inception weights: FID and rFID on the features
of a classifier trained on that data, `--config.classifier_weights=F.safetensors` from
`python -m psvae_jax.evals.feature_net`; class-balanced FID samples; classifier accuracy of
class-balanced samples at guidance scale 1 and at the default; PSNR / SSIM).

`--data=KIND:ARGS` on `python -m psvae_jax.evaluate` picks the held-out images (default: the
workdir's own data); every evaluator's image count is checked before anything is generated.
"""

import ml_collections

from psvae_jax.diffusion import settings

# The generating evaluators sample with the library's default steps (SampleSettings)
# and, unless an evaluator sets guidance_scale, the model's own guidance scale (its config's
# sample.guidance_scale; psvae_jax/evals/runner.evaluate fills it in and records it).
_SAMPLING = dict(steps=settings.SampleSettings().steps, seed=0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or "demo"
  c = ml_collections.ConfigDict()
  c.batch_size = 64  # eval batch (global); results do not depend on it
  c.proxy_weights = ""  # fid proxy safetensors ("" = <workdir>/../fid_proxy.safetensors)
  c.inception_weights = ""  # pytorch-fid pt_inception-2015-12-05-6726825d.pth (or safetensors)
  c.lpips_vgg = ""  # torchvision vgg16 weights; "" = random-init VGG (labelled, not perceptual)
  c.lpips_heads = ""
  c.classifier_weights = ""  # psvae_jax/evals/feature_net.py output (feature "classifier")
  c.step = -1  # step the figures are written at (-1: the workdir's latest checkpoint)
  if arg == "demo":
    c.evals = ml_collections.ConfigDict(
        dict(
            fid_proxy=dict(
                type="fid",
                feature="proxy",
                num_samples=256,
                num_reference=1024,
                **_SAMPLING,
                reference="",
            ),
            rfid_proxy=dict(type="rfid", feature="proxy", num_images=256),
            psnr=dict(type="psnr", num_images=256),
            ssim=dict(type="ssim", num_images=256),
            lpips=dict(type="lpips", num_images=256),
            adherence=dict(type="adherence", num_samples=256, **_SAMPLING),
        )
    )
  elif arg == "inception":
    c.evals = ml_collections.ConfigDict(
        dict(
            fid=dict(
                type="fid",
                feature="inception",
                num_samples=50_000,
                num_reference=50_000,
                **_SAMPLING,
                reference="",
            ),
            rfid=dict(type="rfid", feature="inception", num_images=50_000),
            psnr=dict(type="psnr", num_images=50_000),
            ssim=dict(type="ssim", num_images=50_000),
        )
    )
  elif arg == "classes":
    sampling_1 = {**_SAMPLING, "guidance_scale": 1.0}
    c.evals = ml_collections.ConfigDict(
        dict(
            fid=dict(
                type="fid",
                feature="classifier",
                num_samples=1000,
                num_reference=1000,
                class_balanced=-1,  # every class of the model equally often
                **_SAMPLING,
                reference="",
            ),
            rfid=dict(type="rfid", feature="classifier", num_images=1000),
            psnr=dict(type="psnr", num_images=1000),
            ssim=dict(type="ssim", num_images=1000),
            class_accuracy=dict(
                type="class_accuracy", feature="classifier", num_samples=1000, **_SAMPLING
            ),
            class_accuracy_cfg1=dict(
                type="class_accuracy", feature="classifier", num_samples=1000, **sampling_1
            ),
        )
    )
  else:
    raise ValueError(f"Unknown eval variant {arg!r} (demo | inception | classes).")
  return c

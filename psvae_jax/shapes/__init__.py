"""The demo's synthetic shapes world, in one place that no library module imports.

  world.py     scene sampling, rendering, captions and their grammar (`generate`, `parse_caption`)
  checker.py   the prompt-adherence checker (`score`, `score_batch`)
  source.py    data.source="shapes" (a grain random-access source)
  instruct.py  (source, instruction, target) triples for instruction editing
  proxy.py     the FID proxy feature net (a small classifier trained on the shapes)
  text.py      the demo's offline CLIP-shaped text encoder over the shapes vocabulary

The library reaches the world only through its registries (data sources, adherence checkers,
FID feature nets): `psvae_jax.shapes_plugin.register()`, which the entry points that can run a
shapes config call (psvae_jax.main, psvae_jax.evaluate, psvae_jax.demo,
psvae_jax.cache_latents). The experiments that use the world live in psvae_jax/experiments/.
"""

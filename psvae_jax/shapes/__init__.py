"""The demo's synthetic shapes world, in one place that no library module imports.

  world.py    scene sampling, rendering, captions and their grammar (`generate`, `parse_caption`)
  checker.py  the prompt-adherence checker (`score`, `score_batch`)
  source.py   data.source="shapes" (a grain random-access source)
  proxy.py    the FID proxy feature net (a small classifier trained on the shapes)
  text.py     the demo's offline CLIP-shaped text encoder over the shapes vocabulary
  figures.py  the demo's editing / inpainting figures
  plugin.py   `register()`: plugs the world into the library's registries

The library reaches the world only through those registries (data sources, adherence
checkers, FID feature nets); the entry points that can run a shapes config
(psvae_jax.main, psvae_jax.evaluate, psvae_jax.demo, `python -m psvae_jax.data.cache`) call
`plugin.register()`.
"""

"""Layering: the library imports neither the demo's shapes world (psvae_jax/shapes/) nor the
experiments (psvae_jax/experiments/)."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Entry points: they may use the shapes world and the experiments (and define absl flags when
# imported), as may the plugin that registers the world.
ENTRY_POINTS = (
    "psvae_jax.main",
    "psvae_jax.demo",
    "psvae_jax.evaluate",
    "psvae_jax.sample",
    "psvae_jax.cache_latents",
    "psvae_jax.aot.__main__",
    "psvae_jax.shapes_plugin",
)
OUTSIDE = ("psvae_jax.shapes", "psvae_jax.experiments")
# The contract name of the shapes world (DESIGN.md): an alias module over psvae_jax/shapes/.
ALIASES = ("psvae_jax.data.shapes",)


def test_library_imports_neither_shapes_nor_experiments():
  # A fresh interpreter, so that other tests' imports (conftest registers the shapes) do not count.
  code = textwrap.dedent(f"""
      import importlib, pathlib, sys
      files = sorted(pathlib.Path("psvae_jax").rglob("*.py"))  # not pkgutil: it imports packages
      names = [".".join(f.with_suffix("").parts).removesuffix(".__init__") for f in files]
      outside = lambda n: any(n == o or n.startswith(o + ".") for o in {OUTSIDE!r})
      library = [n for n in names if n not in {ENTRY_POINTS + ALIASES!r} and not outside(n)]
      assert len(library) > 40, library
      for name in library:
        importlib.import_module(name)
      loaded = sorted(m for m in sys.modules if outside(m))
      assert not loaded, f"library modules import {{loaded}}"
      print("imported", len(library))
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  r = subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  assert "imported" in r.stdout


def test_contract_alias_is_the_shapes_world():
  from psvae_jax.data import shapes  # pylint: disable=g-import-not-at-top
  from psvae_jax.shapes import checker, world  # pylint: disable=g-import-not-at-top

  assert shapes.generate is world.generate and shapes.score is checker.score
  image, caption = shapes.generate(3, 32)
  assert image.shape == (32, 32, 3) and shapes.score(image, caption)

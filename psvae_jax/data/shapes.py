"""`psvae_jax.data.shapes`: the synthetic-shapes contract name (DESIGN.md), an alias.

The shapes world lives in `psvae_jax/shapes/` (world.py: scenes, rendering, captions; checker.py:
`score(image, caption) -> bool`). This module re-exports both under the contract's name for
users and tools; nothing in the library imports it (tests/test_layering.py).
"""

# pylint: disable=wildcard-import,unused-wildcard-import
from psvae_jax.shapes.checker import accepts, score, score_batch  # noqa: F401
from psvae_jax.shapes.world import *  # noqa: F401,F403

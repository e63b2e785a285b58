"""Plugs the shapes world into the library's registries (entry points call `register()`).

  data.source="shapes"         psvae_jax.data.sources.register_source  (source.get_source)
  data.source="shapes_instruct"  the same, instruction-editing triples (source.get_instruct_source)
  adherence checker "shapes"   psvae_jax.evals.checkers.register_checker  (checker.score_batch)
  feature net "proxy"          psvae_jax.evals.features.register_feature_net  (proxy)

Registering again replaces the entries with the same ones, so `register()` is idempotent.
"""

from psvae_jax.data import sources
from psvae_jax.evals import checkers
from psvae_jax.evals import features
from psvae_jax.shapes import checker
from psvae_jax.shapes import proxy
from psvae_jax.shapes import source

NAME = "shapes"  # the data source and checker name (configs: data.source="shapes")
INSTRUCT = "shapes_instruct"  # the triples' data source (configs/dit.py:tiny_instruct)
FEATURE_NET = "proxy"  # eval configs: feature="proxy"


def register() -> None:
  """Registers the "shapes" data source and checker and the "proxy" feature net."""
  sources.register_source(NAME, source.get_source)
  sources.register_source(INSTRUCT, source.get_instruct_source)
  checkers.register_checker(
      NAME, checkers.Checker(accepts=checker.accepts, score_batch=checker.score_batch)
  )
  features.register_feature_net(FEATURE_NET, proxy.load_feature_net)

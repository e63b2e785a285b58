"""The task interface: every task class provides every member of `Task`, as the loop calls it."""

import inspect
import re

import pytest

from psvae_jax.train import loop
from psvae_jax.train.tasks import autoencoder
from psvae_jax.train.tasks import base
from psvae_jax.train.tasks import dit

METHODS = sorted(
    n for n, v in vars(base.Task).items() if inspect.isfunction(v) and not n.startswith("_")
)
ATTRIBUTES = sorted(base.Task.__annotations__)


def test_protocol_is_what_the_loop_uses():
  """The members train/loop.py reads from its task are exactly the protocol's."""
  source = inspect.getsource(loop)
  used = set(re.findall(r"\btask\.([a-z_]+)", source))
  assert used == set(METHODS) | set(ATTRIBUTES), (sorted(used), METHODS, ATTRIBUTES)


def _parameter_names(fn):
  return list(inspect.signature(fn).parameters)


@pytest.mark.parametrize("cls", [autoencoder.AutoencoderTask, dit.DiTTask])
@pytest.mark.parametrize("name", METHODS)
def test_task_has_method(cls, name):
  assert callable(getattr(cls, name, None)), f"{cls.__name__} has no method {name}"
  assert _parameter_names(getattr(cls, name)) == _parameter_names(
      getattr(base.Task, name)
  ), f"{cls.__name__}.{name}'s parameters"


@pytest.mark.parametrize("cls", [autoencoder.AutoencoderTask, dit.DiTTask])
@pytest.mark.parametrize("name", ATTRIBUTES)
def test_task_declares_attribute(cls, name):
  assert name in inspect.get_annotations(cls), f"{cls.__name__} does not declare {name}"

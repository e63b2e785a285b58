"""The test suite's own machinery: what launch/test.sh relies on."""

import os

import pytest


@pytest.mark.xdist_group("suite_probe")
def test_xdist_groups_hold(request):
  """Under pytest-xdist `--dist loadgroup` a grouped test's id carries its group, which is how the
  scheduler keeps a group on one worker (tests/conftest.py groups the trained-chain users). With
  pytest 9.2 + xdist 3.8 the suffix was lost and every group was split."""
  if "PYTEST_XDIST_WORKER" not in os.environ:
    pytest.skip("not running under pytest-xdist")
  if not request.config.getvalue("loadgroup"):
    pytest.skip("not --dist loadgroup")
  assert request.node.nodeid.endswith("@suite_probe"), request.node.nodeid

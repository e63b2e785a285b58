"""Mesh and sharding: the paper-size PS-VAE initialises sharded over fsdp on 8 devices."""

import functools

import jax
import numpy as np
import pytest

from configs import psvae as psvae_config
from psvae_jax import parallel
from psvae_jax.train import loop
from psvae_jax.train import optim
from psvae_jax.train.tasks import autoencoder


def test_mesh_shapes():
  assert jax.device_count() == 8
  m = parallel.make_mesh(-1, 1)
  assert dict(m.shape) == {"data": 8, "fsdp": 1}
  m = parallel.make_mesh(2, -1)
  assert dict(m.shape) == {"data": 2, "fsdp": 4}
  with pytest.raises(ValueError, match="cover"):
    parallel.make_mesh(3, 2)


def test_fsdp_spec_rules():
  assert parallel.fsdp_spec((768, 3072), 8, 1024) == jax.sharding.PartitionSpec(None, "fsdp")
  assert parallel.fsdp_spec((10,), 8, 1) == jax.sharding.PartitionSpec()  # not divisible
  assert parallel.fsdp_spec((64, 64), 8, 10**6) == jax.sharding.PartitionSpec()  # small


def test_paper_psvae_inits_sharded_without_materialising():
  config = psvae_config.get_config("dinov2_b")
  config.mesh.data, config.mesh.fsdp = 1, 8
  config.lpips.vgg = "random"  # no weight files in tests; the LPIPS path is still built
  mesh = parallel.make_mesh(1, 8)
  task = autoencoder.AutoencoderTask(config)
  tx = optim.make_optimizer(
      config.optim, 10, functools.partial(optim.label_params, groups=task.param_groups)
  )
  init_fn = functools.partial(loop.create_train_state, task=task, tx=tx)
  abstract = jax.eval_shape(init_fn, jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  assert n_params > 86e6  # DINOv2-B alone is 86M
  shardings = parallel.param_shardings(abstract, mesh, min_size=config.shard_min_size)
  lowered = jax.jit(init_fn, out_shardings=shardings).lower(jax.random.key(0))  # AOT, no alloc
  assert lowered.as_text()  # the sharded init lowers for the 8-device mesh
  total, per_device = 0, 0
  for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    nbytes = a.size * a.dtype.itemsize
    shard = s.shard_shape(a.shape)
    total += nbytes
    per_device += int(np.prod(shard)) * a.dtype.itemsize
  # params + EMA + Adam moments + frozen copy: FSDP must divide nearly all of it by 8.
  assert per_device < total / 7, (per_device, total)
  big = [
      s
      for a, s in zip(jax.tree.leaves(abstract.params), jax.tree.leaves(shardings.params))
      if a.size >= config.shard_min_size
  ]
  assert big and all("fsdp" in tuple(s.spec) for s in big)


def test_to_global_batch():
  mesh = parallel.make_mesh(-1, 1)
  batch = {"image": np.zeros((16, 4, 4, 3), np.float32), "caption": np.array(["a"] * 16)}
  g = parallel.to_global(batch, mesh)
  assert set(g) == {"image"} and g["image"].shape == (16, 4, 4, 3)
  assert len(g["image"].addressable_shards) == 8
  with pytest.raises(ValueError, match="divisible"):
    parallel.check_batch_divides_mesh(12, mesh)


def test_replication_report_lists_large_leaves_no_dim_divides(caplog):
  mesh = parallel.make_mesh(1, 8)
  sds = jax.ShapeDtypeStruct
  tree = {
      "odd": {"kernel": sds((300, 300), np.float32)},  # 300 % 8 != 0: stays whole
      "even": {"kernel": sds((768, 3072), np.float32)},  # fsdp-split
      "bias": sds((300,), np.float32),  # small: replicated by design, not listed
      "emb": sds((1001, 131), jax.numpy.bfloat16),
  }  # whole, 2 bytes an element
  shardings = parallel.param_shardings(tree, mesh, min_size=2**16)
  rows = parallel.replication_report(tree, shardings, min_size=2**16)
  assert [r["path"] for r in rows] == ["odd/kernel", "emb"]
  assert rows[0]["bytes"] == 300 * 300 * 4 and rows[1]["bytes"] == 1001 * 131 * 2
  assert rows[1]["dtype"] == "bfloat16"
  # The absl logger's own level (other tests may lower absl's verbosity), not only the root's.
  with caplog.at_level("INFO", logger="absl"):
    parallel.log_replication_report(tree, shardings, min_size=2**16, what="state")
  assert "2 state arrays" in caplog.text and "odd/kernel" in caplog.text
  # Real arrays carry their own sharding.
  x = jax.device_put(np.zeros((300, 300), np.float32), shardings["odd"]["kernel"])
  assert [r["path"] for r in parallel.replication_report({"x": x}, min_size=2**16)] == ["x"]


def test_footprint_counts_shards_and_names_the_largest_whole_array():
  mesh = parallel.make_mesh(1, -1)  # every device on fsdp
  n = mesh.size
  tree = {
      "w": jax.ShapeDtypeStruct((4 * n, 8), np.float32),
      "b": jax.ShapeDtypeStruct((3,), np.float32),
      "e": jax.ShapeDtypeStruct((5, 7), np.int8),
  }
  shardings = parallel.param_shardings(tree, mesh, min_size=16)
  f = parallel.footprint(tree, shardings)
  assert f.total == 4 * n * 8 * 4 + 3 * 4 + 35
  assert f.per_device == (4 * n * 8 * 4) // n + 3 * 4 + 35
  assert (f.largest_whole, f.largest_whole_path) == (35, "['e']")
  # The same from abstract arrays that carry their shardings (psvae_jax.aot's inputs).
  assert parallel.footprint(parallel.with_shardings(tree, shardings)) == f

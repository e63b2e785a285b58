"""Device mesh, parameter sharding rules and host-to-global batch assembly.

Everything in psvae-jax runs on one `jax.sharding.Mesh` with axes ("data", "fsdp"):
the batch is split over both axes, parameters (and their optimizer state and EMA) are
split over "fsdp" along their largest divisible dimension when they are large, and
replicated when small. The same code runs on 1 CPU device, 8 simulated devices, a GPU
host and a TPU pod slice.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a ("data", "fsdp") mesh with Auto axis types over all (or given) devices.

  Args:
    data: size of the data axis; -1 takes all devices not used by fsdp.
    fsdp: size of the fsdp axis; -1 takes all devices not used by data.
    devices: devices to use (default: all).
  """
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise ValueError("At most one of mesh.data and mesh.fsdp may be -1.")
  if data == -1:
    data = n // fsdp
  if fsdp == -1:
    fsdp = n // data
  if data * fsdp != n:
    raise ValueError(f"Mesh data={data} x fsdp={fsdp} does not cover the {n} devices.")
  return jax.make_mesh(
      (data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices
  )


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
  """Shards the largest dimension divisible by the fsdp axis; replicates small arrays.

  A large array with no divisible dimension is replicated too (NamedSharding cannot pad a
  parameter): `replication_report` lists those, and the training loop logs them.
  """
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def param_shardings(
    tree: Any, mesh: Mesh, *, min_size: int = 2**16, rules: Sequence[tuple[str, P]] = ()
) -> Any:
  """NamedShardings for a (possibly abstract) pytree.

  Args:
    tree: pytree of arrays or ShapeDtypeStructs.
    mesh: the mesh.
    min_size: arrays with fewer elements are replicated.
    rules: optional (regex, PartitionSpec) pairs matched against "a/b/c" leaf paths
      first; the first match wins. Otherwise the fsdp default applies.
  """
  fsdp_size = mesh.shape["fsdp"]
  compiled = [(re.compile(r), s) for r, s in rules]

  def one(path, leaf):
    name = _path_str(path)
    for regex, spec in compiled:
      if regex.search(name):
        return NamedSharding(mesh, spec)
    return NamedSharding(mesh, fsdp_spec(np.shape(leaf), fsdp_size, min_size))

  return jax.tree_util.tree_map_with_path(one, tree)


def replication_report(
    tree: Any, shardings: Any = None, *, min_size: int = 2**16
) -> list[dict[str, Any]]:
  """The leaves of `tree` with at least `min_size` elements that stay whole on every device.

  `fsdp_spec` replicates a large array when none of its dimensions divides the fsdp axis
  (e.g. a 1152-wide kernel at fsdp=256), and everything is replicated at fsdp=1: these
  rows say what that costs.

  Args:
    tree: pytree of arrays or ShapeDtypeStructs.
    shardings: matching tree of shardings; None reads each leaf's own `.sharding`.
    min_size: smaller leaves are replicated by design and not listed.

  Returns:
    Rows {"path", "shape", "dtype", "bytes"} (bytes each device holds), largest first.
  """
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  shards = (
      jax.tree.leaves(shardings) if shardings is not None else [leaf.sharding for _, leaf in leaves]
  )
  if len(shards) != len(leaves):
    raise ValueError(f"{len(leaves)} leaves but {len(shards)} shardings.")
  rows = []
  for (path, leaf), sharding in zip(leaves, shards):
    shape = tuple(np.shape(leaf))
    size = int(np.prod(shape, dtype=np.int64))
    if size < min_size or tuple(sharding.shard_shape(shape)) != shape:
      continue
    rows.append(
        {
            "path": _path_str(path),
            "shape": shape,
            "dtype": str(np.dtype(leaf.dtype)),
            "bytes": size * np.dtype(leaf.dtype).itemsize,
        }
    )
  return sorted(rows, key=lambda r: -r["bytes"])


def log_replication_report(
    tree: Any,
    shardings: Any = None,
    *,
    min_size: int = 2**16,
    what: str = "state",
    max_rows: int = 20,
) -> list[dict[str, Any]]:
  """Logs (on process 0) the `replication_report` of `tree` as a table; returns its rows."""
  rows = replication_report(tree, shardings, min_size=min_size)
  if rows and jax.process_index() == 0:
    total = sum(r["bytes"] for r in rows)
    lines = [
        f"{len(rows)} {what} arrays of >= {min_size} elements are replicated "
        f"(whole on every device): {total / 2**20:.1f} MiB per device"
    ]
    lines += [
        f"  {r['bytes'] / 2**20:10.2f} MiB  {r['dtype']:<9} {str(r['shape']):<22} {r['path']}"
        for r in rows[:max_rows]
    ]
    if len(rows) > max_rows:
      lines.append(f"  ... {len(rows) - max_rows} more")
    logging.info("\n".join(lines))
  return rows


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying `shardings`: a target to restore into or to lower with."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


@dataclasses.dataclass(frozen=True)
class Footprint:
  """Bytes of a pytree of (abstract) arrays under their shardings."""

  total: int  # all leaves, unsharded
  per_device: int  # one device's shards
  largest_whole: int  # the largest leaf left whole on every device (a sharding rule to fix)
  largest_whole_path: str  # its path in the tree ("" when none is whole)


def footprint(tree: Any, shardings: Any = None) -> Footprint:
  """The bytes `tree` takes in all and on one device: each leaf sharded by `shardings` (a
  matching tree of Shardings) or by its own `.sharding` (abstract arrays from with_shardings,
  jax.Arrays). bench/memory_plan.py and psvae_jax.aot count with this, so their figures agree."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  sh = [a.sharding for _, a in leaves] if shardings is None else jax.tree.leaves(shardings)
  if len(sh) != len(leaves):
    raise ValueError(f"{len(leaves)} arrays but {len(sh)} shardings")
  total = per_device = whole = 0
  whole_path = ""
  for (path, a), s in zip(leaves, sh):
    nbytes = int(np.prod(a.shape, dtype=np.int64)) * a.dtype.itemsize
    shard = int(np.prod(s.shard_shape(a.shape), dtype=np.int64)) * a.dtype.itemsize
    total, per_device = total + nbytes, per_device + shard
    if shard == nbytes and nbytes > whole:
      whole, whole_path = nbytes, jax.tree_util.keystr(path)
  return Footprint(total, per_device, whole, whole_path)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Shards the leading (batch) dimension over data x fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def pad_rows(x: np.ndarray | Sequence[Any], size: int) -> np.ndarray | list[Any]:
  """Pads a batch (N, ...) to `size` >= N rows by repeating its last row.

  A list or tuple (prompts) comes back as a list; an array comes back unchanged when N == size,
  else as a new numpy array. Callers drop the padded rows from the results.
  """
  n = len(x)
  if isinstance(x, (list, tuple)):
    return list(x) + [x[-1]] * (size - n)
  return x if n == size else np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)])


def pad_to_multiple(x: np.ndarray | Sequence[Any], multiple: int) -> np.ndarray | list[Any]:
  """`pad_rows` to the next multiple of `multiple` (e.g. the mesh's device count)."""
  n = len(x)
  return pad_rows(x, n + (-n) % multiple)


def local_batch_size(global_batch_size: int) -> int:
  """Per-process batch; the global batch must split evenly over processes."""
  count = jax.process_count()
  if global_batch_size % count:
    raise ValueError(
        f"batch_size={global_batch_size} is not divisible by the " f"{count} processes."
    )
  return global_batch_size // count


def to_global(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns a per-process numpy batch into global arrays sharded over the batch axes.

  Non-numeric fields (captions as strings) stay on the host and are dropped here.
  """
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if v.dtype.kind not in "biuf":
      continue
    sharding = batch_sharding(mesh, v.ndim)
    out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out


def to_host(tree: Any) -> Any:
  """numpy copies of (possibly multi-process, batch-sharded) arrays, on every process.

  `jax.device_get` cannot read arrays spanning other processes' devices; those are
  all-gathered first (a collective: every process must call this).
  """

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(one, tree)


def check_batch_divides_mesh(global_batch_size: int, mesh: Mesh) -> None:
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch_size % n:
    raise ValueError(
        f"batch_size={global_batch_size} must be divisible by the {n} "
        f"devices of the mesh {dict(mesh.shape)}."
    )

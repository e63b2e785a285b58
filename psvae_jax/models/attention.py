"""Softmax attention, one function for every model: ``jax.nn.dot_product_attention`` on GPU/TPU,
an XLA:CPU-friendly formulation on the CPU.

Why a CPU path (2-core x86 CPU, jax 0.10.2, DINOv2 shapes: batch 8, 257 tokens, heads of 64;
``python bench/psvae_vs_torch.py --parts attention-S attention-B [--attention-impl xla]``):
``jax.nn.dot_product_attention``'s forward + backward took 59.7 / 144.0 ms (6 / 12 heads), 1.8x /
2.7x PyTorch's ``scaled_dot_product_attention``, the largest gap in the DINOv2 train step vs
transformers; this path took 36.1 / 75.3 ms. Two causes, both fixed without changing the math:

* XLA:CPU runs a batched dot (``bhqd,bhkd->bhqk``) as a loop of small GEMMs on one thread;
  independent dots, though, run concurrently (XLA:CPU's thunk executor). The heads are split into
  ``chunks`` groups, each its own set of dots, so both cores work. The split is along heads, never
  the batch, so a batch sharded over the mesh is not resharded.
* Autodiff of softmax reduces ``p · dp`` over the (N, N) scores. The custom VJP uses the
  flash-attention identity ``rowsum(p · dp) = rowsum(dO · O)``, a reduction over the head width.

The probabilities are kept for the backward (as autodiff keeps them); the logits and softmax run in
float32 for low-precision inputs, as ``jax.nn.dot_product_attention`` does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("", "cpu", "xla", "cudnn")


def _scores(q, k, bias, mask, scale):
  # The scale goes on q (B, H, Q, Dh), not on the (Q, K) scores: XLA:CPU would materialise a
  # broadcast constant of the scores' size to multiply them.
  q = q * jnp.asarray(scale, q.dtype)
  s = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
  if bias is not None:
    s = s + bias.astype(jnp.float32)
  if mask is not None:
    s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
  return s


def _forward(q, k, v, bias, mask, scale):
  s = _scores(q, k, bias, mask, scale)
  s = s - jnp.max(s, axis=-1, keepdims=True)
  p = jnp.exp(s)
  p = p / jnp.sum(p, axis=-1, keepdims=True)  # (B, H, Q, K) float32
  o = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v)
  return o, p


def _unbroadcast(x, shape):
  """Sums ``x`` down to ``shape`` (the inverse of broadcasting ``shape`` to ``x.shape``)."""
  axes = tuple(i for i, (a, b) in enumerate(zip(x.shape, shape)) if b == 1 and a != 1)
  return jnp.sum(x, axis=axes, keepdims=True) if axes else x


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attend(q, k, v, bias, mask, scale):
  return _forward(q, k, v, bias, mask, scale)[0]


def _attend_fwd(q, k, v, bias, mask, scale):
  o, p = _forward(q, k, v, bias, mask, scale)
  return o, (q, k, v, o, p, bias, mask)


def _attend_bwd(scale, res, do):
  q, k, v, o, p, bias, mask = res
  f32 = lambda t: t.astype(jnp.float32)
  dv = jnp.einsum("bhqk,bhqd->bhkd", p.astype(do.dtype), do).astype(v.dtype)
  dp = jnp.einsum("bhqd,bhkd->bhqk", do, v, preferred_element_type=jnp.float32)
  delta = jnp.sum(f32(do) * f32(o), axis=-1, keepdims=True)  # rowsum(p · dp)
  ds = p * (dp - delta)  # d(logits), (B, H, Q, K) float32
  dbias = None if bias is None else _unbroadcast(ds, bias.shape).astype(bias.dtype)
  if mask is not None:
    ds = jnp.where(mask, ds, 0.0)
  ds = ds.astype(q.dtype)
  scale = jnp.asarray(scale, q.dtype)
  dq = jnp.einsum("bhqk,bhkd->bhqd", ds, k) * scale
  dk = jnp.einsum("bhqk,bhqd->bhkd", ds, q * scale)
  return dq, dk, dv, dbias, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def _split_heads(t, axis, bounds):
  if t is None or t.shape[axis] == 1:
    return [t] * len(bounds)
  return [jax.lax.slice_in_dim(t, a, b, axis=axis) for a, b in bounds]


def cpu_attention(q, k, v, bias=None, mask=None, scale=None, chunks: int | None = None):
  """Softmax attention in the (B, N, H, Dh) layout of ``jax.nn.dot_product_attention``.

  Args:
    q: queries ``(B, Q, H, Dh)``; k, v: ``(B, K, H, Dh)``.
    bias: optional additive logits bias broadcastable to ``(B, H, Q, K)``.
    mask: optional boolean, broadcastable to ``(B, H, Q, K)``; False positions get no weight (a
      row with none left attends uniformly, as in jax.nn.dot_product_attention).
    scale: logits scale; default ``Dh ** -0.5``.
    chunks: head groups computed as independent dots (default: up to 4, dividing the heads).

  Returns:
    ``(B, Q, H, Dh)`` in ``q.dtype``.
  """
  heads = q.shape[2]
  scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
  if chunks is None:
    chunks = max(c for c in (1, 2, 3, 4) if heads % c == 0)
  chunks = max(1, min(int(chunks), heads))
  step = -(-heads // chunks)
  bounds = [(a, min(a + step, heads)) for a in range(0, heads, step)]
  bias = (
      None if bias is None else jnp.broadcast_to(bias, jnp.broadcast_shapes(bias.shape, (1,) * 4))
  )
  mask = (
      None if mask is None else jnp.broadcast_to(mask, jnp.broadcast_shapes(mask.shape, (1,) * 4))
  )
  q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # (B, H, N, Dh)
  parts = zip(
      _split_heads(q, 1, bounds),
      _split_heads(k, 1, bounds),
      _split_heads(v, 1, bounds),
      _split_heads(bias, 1, bounds),
      _split_heads(mask, 1, bounds),
  )
  out = [_attend(*p, scale) for p in parts]
  out = out[0] if len(out) == 1 else jnp.concatenate(out, axis=1)
  return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def dot_product_attention(q, k, v, bias=None, mask=None, scale=None, implementation=None):
  """``jax.nn.dot_product_attention``'s contract (``(B, N, H, Dh)`` in and out), with the CPU path.

  Args:
    q, k, v, bias, mask, scale: as ``jax.nn.dot_product_attention``.
    implementation: "" or None: ``cpu_attention`` when the default backend is the CPU, else jax's
      default; "cpu": always ``cpu_attention``; "xla" / "cudnn": ``jax.nn.dot_product_attention``
      with that implementation.
  """
  impl = implementation or ""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {impl!r}: expected one of {IMPLEMENTATIONS}")
  if impl == "cpu" or (not impl and jax.default_backend() == "cpu"):
    return cpu_attention(q, k, v, bias=bias, mask=mask, scale=scale)
  return jax.nn.dot_product_attention(
      q, k, v, bias=bias, mask=mask, scale=scale, implementation=impl or None
  )

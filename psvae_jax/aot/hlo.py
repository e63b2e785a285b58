"""Where a compiled program's HBM traffic goes: the bytes each top-level op of its entry
computation reads and writes, summed by the model scope in the op's metadata."""

from __future__ import annotations

import re

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4}
_DTYPE_BYTES.update({"s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8})
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) (\w[\w-]*)\((.*)$")


def _bytes_of(type_text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(type_text):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _DTYPE_BYTES.get(dtype, 4)
  return total


def _scope(op_name: str, depth: int) -> str:
  """ "jit(train_step)/jvp(DiT)/blocks_3/mlp/fc1/dot_general" -> "DiT/blocks_3" (depth 2): the
  model and its top submodules, with JAX's transformation wrappers (jvp, transpose) dropped."""
  parts = []
  for part in op_name.split("/")[1:]:
    while "(" in part and part.endswith(")"):
      part = part[part.index("(") + 1 : -1]
    parts.append(part)
  return "/".join(parts[:depth]) or "(other)"


_READS_ITS_RESULT = ("slice", "dynamic-slice")  # reads only what it returns, not its operand
_PREFETCH = ("slice-start", "copy-start", "dynamic-slice-start")  # async copies of one buffer


def _traffic(opcode: str, result: int, operands: int) -> int:
  """The bytes an op moves. An async op's "-start" returns (its operands, its destination,
  context scalars) and its "-done" the destination again: the pair counts once, at the start,
  as the destination's bytes (a prefetch or slice reads only those) plus, for a collective, its
  operands."""
  if opcode.endswith("-done"):
    return 0
  if opcode.endswith("-start"):
    dest = max(result - operands, 0)
    return dest if opcode in _PREFETCH else dest + operands
  if opcode in _READS_ITS_RESULT:
    return 2 * result
  return result + operands


def bytes_by_scope(hlo_text: str, depth: int = 2) -> dict[str, float]:
  """Bytes each top-level op of the compiled program's entry computation reads and writes (its
  operands' and result's sizes, as XLA's cost analysis counts a fusion; slices and async copies
  as `_traffic` says), summed by the model scope in its metadata: where a memory-bound step's
  HBM traffic goes. An upper bound for fusions that read part of an operand."""
  sizes: dict[str, int] = {}
  out: dict[str, float] = {}
  in_entry = False
  for line in hlo_text.splitlines():
    if line.startswith("ENTRY "):
      in_entry = True
      continue
    if in_entry and line.startswith("}"):
      break
    if not in_entry:
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, type_text, opcode, rest = m.groups()
    sizes[name] = _bytes_of(type_text)
    if opcode in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"):
      continue
    args = rest.split("), ", 1)[0]
    operands = sum(sizes.get(a.strip().lstrip("%"), 0) for a in args.split(","))
    op_name = re.search(r'op_name="([^"]*)"', rest)
    key = _scope(op_name.group(1), depth) if op_name else f"({opcode})"
    moved = _traffic(opcode, sizes[name], operands)
    if moved:
      out[key] = out.get(key, 0.0) + moved
  return dict(sorted(out.items(), key=lambda kv: -kv[1]))

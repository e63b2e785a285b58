"""Ahead-of-time compilation for TPU slices and GPU hosts without them (`python -m psvae_jax.aot`,
launch/aot.sh; the CLI's docstring in __main__.py has the usage).

  programs   the production programs of a config over a slice's devices, abstract sharded inputs
  compiler   compiling one, reading its memory and cost analyses, the report table
  hlo        where a compiled program's HBM traffic goes, by model scope
"""

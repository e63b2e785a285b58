"""Importers for foreign checkpoints: each `load_*(path)` returns `(module, params)`."""

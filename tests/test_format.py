"""Formatting: the tree is pyink-clean (pyproject.toml) and no Python line exceeds 100 characters.

pyink does not split long strings, comments or docstrings, so the line-length test covers what the
formatter leaves alone. Fix formatting with `pyink .` from the repository root.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINE = 100
# Walked when git is unavailable (e.g. an exported tree without .git).
SOURCE_DIRS = ("psvae_jax", "configs", "tests", "bench", "launch")


def _python_files() -> list[str]:
  """Tracked .py files (git ls-files), else every .py file under SOURCE_DIRS."""
  try:
    r = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    if r.returncode == 0 and r.stdout.strip():
      return r.stdout.split()
  except OSError:
    pass
  files = []
  for d in SOURCE_DIRS:
    for dirpath, _, names in os.walk(os.path.join(ROOT, d)):
      files += [os.path.relpath(os.path.join(dirpath, n), ROOT) for n in names if n.endswith(".py")]
  return sorted(files)


def test_pyink_check():
  r = subprocess.run(
      [sys.executable, "-m", "pyink", "--check", "."],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == 0, f"run `pyink .` to fix:\n{r.stdout}{r.stderr}"


def test_no_long_lines():
  files = _python_files()
  assert files
  long_lines = []
  for path in files:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if len(line.rstrip("\r\n")) > MAX_LINE:
          long_lines.append(f"{path}:{n}: {len(line.rstrip())} chars")
  assert not long_lines, f"lines over {MAX_LINE} characters:\n" + "\n".join(long_lines)

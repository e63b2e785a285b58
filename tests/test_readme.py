"""README's and docs/'s commands: every fenced shell command pastes (no comment after a line
continuation) and its psvae_jax flags parse (configs load, overrides name existing keys); every
`python -m psvae_jax.X` they mention is a module that exists; their relative links lead to files;
docs/layout.md names every file of the package, configs, bench, launch and docs, and only those."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")
)
TEXT = {p: open(os.path.join(ROOT, p), encoding="utf-8").read() for p in PAGES}
README = "\n".join(TEXT.values())
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)
LAYOUT_DIRS = ("psvae_jax", "configs", "bench", "launch", "docs")

# Parses a module's flags as `python -m MODULE ARGS` would, without running it: the module runs as
# __main__ (flags some modules define only there count) with absl's app.run replaced by a parse.
_PARSE = """
import runpy, sys
from absl import app, flags

def _parse_only(main, argv=None, flags_parser=None, **kwargs):
  del main, argv, flags_parser, kwargs
  flags.FLAGS(sys.argv)
  for name in flags.FLAGS:  # config files load lazily: load them (and apply the overrides) now
    report = getattr(flags.FLAGS[name].value, "_ReportError", None)
    if report is not None:
      report()
    value = flags.FLAGS[name].value
    if hasattr(value, "to_dict"):
      value.to_dict()

app.run = _parse_only
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _commands():
  out = []
  for block in BLOCKS:
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
      line = re.split(r"\s#", line)[0].strip()
      if line.startswith("python -m psvae_jax."):
        out.append(line)
  return out


def test_no_comment_after_a_line_continuation():
  bad = [line for b in BLOCKS for line in b.splitlines() if re.search(r"\\\s+#", line)]
  assert not bad, bad


@pytest.mark.parametrize("command", _commands())
def test_readme_command_flags_parse(command):
  args = shlex.split(command)[2:]  # MODULE, flags
  r = subprocess.run(
      [sys.executable, "-c", _PARSE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert r.returncode == 0, f"{command}\n{r.stderr[-2000:]}"


def test_readme_modules_exist():
  sys.path.insert(0, ROOT)
  modules = set(re.findall(r"python -m (psvae_jax(?:\.\w+)+)", README))
  missing = [m for m in sorted(modules) if importlib.util.find_spec(m) is None]
  assert modules and not missing, missing


def test_readme_is_a_guide():
  assert len(TEXT["README.md"].splitlines()) <= 160


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_lead_to_files(page):
  here = os.path.dirname(os.path.join(ROOT, page))
  links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", TEXT[page])
  missing = [l for l in links if "://" not in l and not os.path.exists(os.path.join(here, l))]
  assert not missing, missing


def _layout_block() -> dict[str, str]:
  """docs/layout.md's block as {path: description}: `dir/` lines, then `  name  what` lines."""
  block = re.search(r"```\n(.*?)```", TEXT[os.path.join("docs", "layout.md")], re.S).group(1)
  named, directory = {}, None
  for line in block.splitlines():
    if not line.strip():
      continue
    if not line.startswith(" "):
      directory = line.strip()
      assert directory.endswith("/"), line
      continue
    name, _, what = line.strip().partition(" ")
    assert directory and what.strip(), f"{line!r}: a file needs its directory and a description"
    named[directory + name] = what.strip()
  return named


def test_layout_names_every_file_and_only_files_that_exist():
  named = set(_layout_block())
  present = set()
  for top in LAYOUT_DIRS:
    for d, dirs, files in os.walk(os.path.join(ROOT, top)):
      dirs[:] = [x for x in dirs if x != "__pycache__"]
      for f in files:
        if f.endswith((".py", ".sh", ".md", ".txtpb")) and f != "__init__.py":
          present.add(os.path.relpath(os.path.join(d, f), ROOT))
  assert not present - named, f"files docs/layout.md does not name: {sorted(present - named)}"
  assert not named - present, f"named in docs/layout.md, not present: {sorted(named - present)}"

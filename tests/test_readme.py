"""The README's commands: every fenced shell command pastes (no comment after a line
continuation) and its psvae_jax flags parse (configs load, overrides name existing keys); every
`python -m psvae_jax.X` it mentions is a module that exists."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)

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

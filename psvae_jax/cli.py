"""What the command-line entry points share: flag errors as one line (no JAX imported here).

  app.run(main, flags_parser=cli.flags_parser("sample"))

absl prints a flag error with the module docstring, or a config override error
(`--config.optim.lrr=1`) as a 55-line traceback. Here it is one line naming the problem, a
pointer to --help, and exit status 1, before anything starts.
"""

from __future__ import annotations

import logging as logging_std
import re
import sys
from typing import Callable, Sequence

from absl import flags
from absl import logging as absl_logging


def one_line(e: BaseException) -> str:
  """An exception's message on one line (config_flags wraps a KeyError's repr in quotes)."""
  text = str(e).strip()
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    text = text[1:-1].replace("\\n", " ").replace("\\'", "'")
  return " ".join(text.split())


_QUIET = [False]


def quiet_by_default() -> None:
  """Logs WARNING and above unless --verbosity / -v asks for more (absl's INFO default floods a
  user tool with Orbax and JAX lines); the tool prints what a user needs to stdout itself.

  Applied by `flags_parser` after parsing: absl 2.5's app.run ignores a changed default of
  --verbosity (set_default left every INFO line in view)."""
  _QUIET[0] = True


_CHATTY = (
    "/orbax/",
    "/clu/metric_writers/",
    "/clu/periodic_actions",
    "/clu/platform/",
)


class _DropLibraryInfo(logging_std.Filter):
  """Drops INFO records of Orbax, CLU (checkpoint manager internals, CLU's copy of every scalar)
  and JAX's backend probing: the run's own step, eval and checkpoint lines stay in view."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno >= logging_std.WARNING or not any(
        part in record.pathname for part in _CHATTY
    )


def quiet_libraries() -> None:
  """Hides the libraries' INFO lines unless --verbosity >= 1 (-v 1); call after flag parsing."""
  if flags.FLAGS.verbosity < 1:
    absl_logging.get_absl_logger().addFilter(_DropLibraryInfo())
    # JAX's backend probe ("Unable to initialize backend 'tpu'") on every host without one.
    logging_std.getLogger("jax._src.xla_bridge").setLevel(logging_std.WARNING)


def _config_error(text: str) -> str:
  """A config file's load error as its cause alone (ml_collections wraps a missing file, or a
  traceback of get_config, into one long message)."""
  missing = re.search(r"Attempted \[[^]]*\]: (\S+) \[Errno 2\]", text)
  if missing:
    return f"--config: no config file {missing.group(1)}."
  if "Traceback (most recent call last)" in text:
    causes = list(re.finditer(r"\b[A-Z]\w*(Error|Exception): ", text))
    if causes:
      flag = re.match(r"flag (--\S+): ", text)
      return (f"{flag.group(1)}: " if flag else "") + text[causes[-1].start() :]
  return text


def flags_parser(prog: str) -> Callable[[Sequence[str]], list[str]]:
  """An absl `flags_parser` that turns every flag / config override error into one line."""

  def parse(argv: Sequence[str]) -> list[str]:
    try:
      rest = flags.FLAGS(argv)
      if _QUIET[0] and not flags.FLAGS["verbosity"].present:
        flags.FLAGS.verbosity = -1
      for name in flags.FLAGS:  # config_flags defers a config file's load error: raise it now
        report = getattr(flags.FLAGS[name].value, "_ReportError", None)
        if report is not None:
          report()
      return rest
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
      sys.exit(f"{prog}: error: {_config_error(one_line(e))} (--help lists the flags)")

  return parse

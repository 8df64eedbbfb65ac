"""User errors at the command line: one line starting with FATAL and exit status 2, no traceback (commands
show it with --verbosity=1 or MEDSSL_TRACEBACK=1)."""
from __future__ import annotations

import os
import sys

USER_ERROR = 2  # Exit status of a user error (as argparse and absl use for bad usage).
# Exceptions whose message is meant for the user (the code raises them for bad input, naming what to change).
USER_ERRORS = (ValueError, OSError)


def fatal(message: str):
  """Exits with one line and USER_ERROR."""
  print(f"FATAL: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(USER_ERROR)


def report(error: BaseException, *, verbose: bool):
  """A user error met while running: re-raised (traceback) when `verbose` or MEDSSL_TRACEBACK is set, else
  one FATAL line that says how to see the traceback."""
  if verbose or os.environ.get("MEDSSL_TRACEBACK"):
    raise error
  fatal(f"{error}  (--verbosity=1 shows the traceback)")

"""One run per workdir: process 0 holds <workdir>/.medssl.lock (medssl_jax/locks.py) for the whole run, so a second
run started on the same workdir stops at once with a line naming the first, before touching anything. Nested holds
by the same process (a mode that runs another mode, a curriculum stage) share the one lock."""
from __future__ import annotations

import contextlib

import jax

from medssl_jax import locks
from medssl_jax import paths

LOCK_FILE = ".medssl.lock"
_held: dict[str, locks.FileLock] = {}


class WorkdirInUse(locks.Busy):
  """Another live process runs in this workdir."""


@contextlib.contextmanager
def hold(workdir: str, *, what: str = "workdir"):
  """Holds the lock of `workdir` (process 0 only; the others follow it) for the duration of the block."""
  path = paths.join(paths.absolute(workdir), LOCK_FILE)
  if jax.process_index() != 0 or path in _held:
    yield
    return
  lock = locks.FileLock(path)
  try:
    lock.acquire()
  except locks.Busy:
    later = (f"{locks.STALE_S / 60:.0f} minutes after it stopped renewing it" if paths.is_url(path)
             else "by the next run")
    raise WorkdirInUse(f"{what} {paths.absolute(workdir)} is in use by {locks.describe(lock.holder())}. Wait for "
                       f"that run to finish or stop it (the lock of a process that died is taken over {later}), or "
                       "use another --workdir") from None
  if lock.previous:
    print(f"{what} lock: taking over from {locks.describe(lock.previous)}, which is no longer running", flush=True)
  _held[path] = lock
  try:
    yield
  finally:
    del _held[path]
    lock.release()

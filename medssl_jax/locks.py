"""Locks between processes: one writer per workdir, one builder per dataset.

A lock is a file holding its holder's record (host, pid, start time, command). On a local or network disk the
holder keeps an exclusive `flock` on it, which the kernel releases when the process ends however it ends
(SIGKILL included), so a lock left by a dead process is simply taken over. Object stores (gs://...) have no
locks: there the record carries a heartbeat that the holder renews every `HEARTBEAT_S`; a record whose heartbeat
is older than `STALE_S` belongs to a dead holder and is taken over. Claiming one there writes the record, waits
and reads it back, so of two processes claiming at once exactly one sees its own record.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid

from medssl_jax import paths

HEARTBEAT_S = 30.0
STALE_S = 180.0
SETTLE_S = 1.0  # Object stores: how long a claim waits before reading its record back (>> one write).


class Busy(OSError):
  """The lock is held by another live process; the message names it."""


def record() -> dict:
  """This process's holder record."""
  return dict(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex,
              started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              command=" ".join(sys.argv)[:300], heartbeat=time.time())


def describe(holder: dict | None) -> str:
  if not holder:
    return "another process"
  return (f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')}: "
          f"{holder.get('command') or '?'})")


class FileLock:
  """An exclusive lock on file `path` (see the module docstring); `acquire(wait=False)` raises Busy when held."""

  def __init__(self, path: str):
    self.path = paths.absolute(path)
    self.previous: dict | None = None  # The record of a dead holder this lock was taken from, if any.
    self._fd = None
    self._record = None
    self._stop = threading.Event()
    self._beat = None

  # -- holder ---------------------------------------------------------------------------------------

  def acquire(self, *, wait: bool = False, on_wait=None) -> "FileLock":
    """Takes the lock. `wait`: block until it is free (calling `on_wait(holder record)` once); else Busy."""
    take = self._acquire_url if paths.is_url(self.path) else self._acquire_local
    told = False
    while True:
      try:
        take()
        return self
      except Busy:
        if not wait:
          raise
        if on_wait and not told:
          on_wait(self.holder())
          told = True
        time.sleep(0.5 if not paths.is_url(self.path) else SETTLE_S)

  def release(self):
    self._stop.set()
    if self._beat is not None:
      self._beat.join()
      self._beat = None
    if paths.is_url(self.path):
      if self._record is not None and (self.holder() or {}).get("token") == self._record["token"]:
        paths.path(self.path).unlink(missing_ok=True)
    elif self._fd is not None:
      try:  # Unlinked before unlocking: a waiter then finds the file gone and makes a new one (see _acquire_local).
        os.unlink(self.path)
      except FileNotFoundError:
        pass
      os.close(self._fd)
      self._fd = None
    self._record = None

  def holder(self) -> dict | None:
    """The record in the lock file (None when there is none or it cannot be read)."""
    try:
      return json.loads(paths.read_text(self.path))
    except (OSError, ValueError):
      return None

  # -- local and network disks: flock ---------------------------------------------------------------

  def _acquire_local(self):
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise Busy(f"{self.path} is held by {describe(self.holder())}") from None
        raise
      try:
        if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
          break
      except FileNotFoundError:
        pass
      os.close(fd)  # The holder unlinked the file between our open and our flock: lock the new file instead.
    left = os.read(fd, 65536)
    try:
      self.previous = json.loads(left) if left.strip() else None
    except ValueError:
      self.previous = None
    self._record = record()
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(self._record).encode(), 0)
    os.fsync(fd)
    self._fd = fd

  # -- object stores: heartbeat records -------------------------------------------------------------

  def _acquire_url(self):
    held = self.holder()
    if held is not None and time.time() - float(held.get("heartbeat", 0)) < STALE_S:
      raise Busy(f"{self.path} is held by {describe(held)}")
    self.previous = held
    self._record = record()
    paths.write_text(self.path, json.dumps(self._record))
    time.sleep(SETTLE_S)
    if (self.holder() or {}).get("token") != self._record["token"]:
      self._record = None
      raise Busy(f"{self.path} is held by {describe(self.holder())}")
    self._stop.clear()
    self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="medssl-lock-heartbeat")
    self._beat.start()

  def _heartbeat(self):
    while not self._stop.wait(HEARTBEAT_S):
      self._record["heartbeat"] = time.time()
      try:
        paths.write_text(self.path, json.dumps(self._record))
      except OSError:
        pass  # A missed beat; the next one tries again, and STALE_S allows several.

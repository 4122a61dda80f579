"""Stopping on SIGTERM or SIGINT without losing work.

Clusters and cloud TPUs stop jobs with SIGTERM (SLURM at its time limit with `--signal`,
spot VMs, TPU maintenance), people with Ctrl-C. While a training stage or the cache
builder runs (`stop_signals_deferred`), the first such signal only *requests* a stop:
the training loop finishes the step in flight and checkpoints it, the cache builder
writes its finished chunks, and both raise `Stopped`; `rrjax.main` then prints how to
resume and exits with 128 + the signal's number. A second signal acts as it did before
(an immediate stop). Outside those loops signals keep their usual effect.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: list[signal.Signals] = []  # The signal that asked for a stop, if one did.


class Stopped(Exception):
  """A stage stopped on a signal after saving its work (`where`: what was saved).
  `signum` is None on the processes of a job that stopped with another one."""

  def __init__(self, signum: int | None, where: str):
    self.signum = signum
    cause = signal.Signals(signum).name if signum else "a signal to another process"
    super().__init__(f"stopped by {cause}; {where}")

  @property
  def exit_status(self) -> int:
    """128 + the signal's number, as a shell reports a process ended by it (SIGTERM's
    for processes that stopped with another one)."""
    return 128 + (self.signum or signal.SIGTERM)


def requested() -> signal.Signals | None:
  """The signal that asked this process to stop, or None."""
  return _requested[0] if _requested else None


def stop(where: str) -> None:
  """Raises `Stopped` for the requested signal once the caller saved `where`."""
  raise Stopped(requested(), where)


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
  """Within: SIGTERM and SIGINT set `requested()` instead of stopping the process (the
  caller polls it); the previous handlers come back at the first signal and on exit."""
  _requested.clear()
  if threading.current_thread() is not threading.main_thread():
    yield  # Python runs signal handlers in the main thread only.
    return
  previous = {s: signal.getsignal(s) for s in _SIGNALS}

  def request_stop(signum, frame) -> None:
    del frame
    _requested.append(signal.Signals(signum))
    for s, handler in previous.items():  # A second signal stops at once.
      signal.signal(s, handler)

  for s in _SIGNALS:
    signal.signal(s, request_stop)
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)

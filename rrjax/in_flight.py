"""A few batches in flight: each batch's program is dispatched before the results of the
ones before it are fetched.

JAX dispatch is asynchronous, so while the host fetches batch k's results and uses them
(converts, writes, concatenates), the device is already running batch k+1; fetching
each batch right after dispatching it leaves the device idle for all of that host work.
Evaluation, the L-BFGS probe's feature pass and the teacher-cache build share this loop.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterable, Iterator

import jax

# Programs an accelerator may have queued at once: enough to hide the host's work on one
# batch behind the device's work on the next, few enough that the batches and results they
# hold on the device stay small.
ACCELERATOR_DEPTH = 3


def default_depth(*, collectives: bool) -> int:
  """How many programs to keep in flight on this backend. On CPU devices, two programs
  with collectives (e.g. replicated outputs of a sharded batch) running together can
  deadlock XLA's in-process rendezvous, so those run one at a time there."""
  if collectives and jax.default_backend() == "cpu":
    return 1
  return ACCELERATOR_DEPTH


def pipelined(items: Iterable, dispatch: Callable[[Any], Any], *, depth: int,
              fetch: Callable[[Any], Any] = jax.device_get) -> Iterator:
  """Yields `fetch(dispatch(item))` for every item, in order, with up to `depth` items
  dispatched and not yet fetched: item k+depth-1 is dispatched before item k is fetched
  (depth 1: each item is fetched before the next is dispatched).

  Items are pulled from `items` only when they are dispatched. A consumer that stops
  early leaves what is still in flight unfetched; a finite `items` that ends has all of
  its items fetched.
  """
  if depth < 1:
    raise ValueError(f"depth={depth} must be at least 1.")
  pending: collections.deque = collections.deque()
  for item in items:
    pending.append(dispatch(item))
    if len(pending) >= depth:
      yield fetch(pending.popleft())
  while pending:
    yield fetch(pending.popleft())

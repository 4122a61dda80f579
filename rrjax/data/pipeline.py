"""Multi-host data-parallel loading: each process reads only its share of every batch.

A global batch is the concatenation of the processes' local batches in process order
(`rrjax.sharding.shard_batch` builds the global array from them). Everything random is
derived statelessly from the seed, so all processes agree on the global batch without
talking to each other, and a position (epoch, step) is all it takes to resume exactly.

Views are cut in worker processes (`rrjax.data.workers.ViewCutter`), a few batches
ahead of the consumer. Sources of encoded files are cut straight from their bytes, so
training views can use reduced-size JPEG decoding (`ViewSpec.decode`) and no full-size
array is copied around. A loader makes its own workers (`num_workers`), or uses a
`cutter` that lives longer (one per source for a whole run: workers start once).
"""

from __future__ import annotations

import collections
from typing import Any, Iterator

import jax
import numpy as np

from rrjax.data.views import ViewSpec
from rrjax.data.workers import ViewCutter

# Leading entropy word for loader streams, so they never coincide with a view's stream
# `default_rng([seed, example_id, view_index])`.
_LOADER_SALT = 0x6C6F6164


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the examples in `epoch`: a permutation that depends on (seed, epoch)."""
  return np.random.default_rng([_LOADER_SALT, seed, epoch, 0]).permutation(num_examples)


def epoch_views(num_examples: int, seed: int, epoch: int, num_views: int) -> np.ndarray:
  """The training view (1..num_views) of every example id in `epoch`."""
  rng = np.random.default_rng([_LOADER_SALT, seed, epoch, 1])
  return rng.integers(1, num_views + 1, size=num_examples)


def _process_share(global_batch_size: int, process_index: int | None,
                   process_count: int | None) -> tuple[int, int, int]:
  """(process_index, process_count, local batch size), defaulting to JAX's processes."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"batch_size={global_batch_size} must be a positive multiple of the "
                     f"number of processes ({process_count}).")
  return process_index, process_count, global_batch_size // process_count


def _cutter(source, view: ViewSpec, seed: int, num_workers: int,
            cutter: ViewCutter | None) -> tuple[ViewCutter, bool]:
  """(the cutter to use, whether this loader owns it)."""
  if cutter is None:
    return ViewCutter(source, view, seed, num_workers), True
  if cutter.source is not source or cutter.view != view or cutter.seed != seed:
    raise ValueError("cutter was made for another source, view spec or seed.")
  return cutter, False


class TrainLoader:
  """An endless stream of host-local training batches, epoch after epoch.

  Epoch e visits `epoch_permutation(n, seed, e)` in global batches of `global_batch_size`
  (the last incomplete batch is dropped), giving example i the view
  `epoch_views(n, seed, e, num_views)[i]`. Process p of P takes rows
  [p*B/P, (p+1)*B/P) of each global batch. Batches are dicts of numpy arrays:
  image uint8 [B/P,S,S,3], label/id/view int32 [B/P].

  `get_state()` is the position of the next batch, as a JSON-able dict;
  `set_state(state)` moves there (a fresh loader with the same settings too).
  """

  def __init__(self, source, *, global_batch_size: int, view: ViewSpec, num_views: int,
               seed: int, process_index: int | None = None,
               process_count: int | None = None, num_workers: int = 8, prefetch: int = 2,
               cutter: ViewCutter | None = None):
    self.process_index, self.process_count, self.local_batch_size = _process_share(
        global_batch_size, process_index, process_count)
    if num_views < 1:
      raise ValueError(f"cache.num_views={num_views} must be >= 1 (training views are "
                       "1..num_views).")
    if len(source) < global_batch_size:
      raise ValueError(f"batch_size={global_batch_size} is larger than the training set "
                       f"({len(source)} examples); lower batch_size.")
    self.source, self.view, self.num_views, self.seed = source, view, num_views, seed
    self.global_batch_size = global_batch_size
    self.steps_per_epoch = len(source) // global_batch_size
    self.prefetch = max(prefetch, 0)
    self._cutter, self._owns_cutter = _cutter(source, view, seed, num_workers, cutter)
    self._epoch_plan: tuple[int, np.ndarray, np.ndarray] | None = None
    self._in_flight: collections.deque = collections.deque()
    self._epoch, self._step = 0, 0

  def get_state(self) -> dict[str, int]:
    return {"epoch": self._epoch, "step": self._step, "seed": self.seed,
            "global_batch_size": self.global_batch_size, "num_examples": len(self.source)}

  def set_state(self, state: dict[str, Any]) -> None:
    for key in ("seed", "global_batch_size", "num_examples"):
      if int(state[key]) != self.get_state()[key]:
        raise ValueError(f"loader state has {key}={state[key]} but this loader has "
                         f"{self.get_state()[key]}; resume with the same data and batch size.")
    if not 0 <= int(state["step"]) < self.steps_per_epoch:
      raise ValueError(f"loader state step={state['step']} is outside an epoch of "
                       f"{self.steps_per_epoch} steps.")
    self._drop_in_flight()
    self._epoch, self._step = int(state["epoch"]), int(state["step"])

  def batch_rows(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, view indices) of this process's rows of batch (epoch, step)."""
    if self._epoch_plan is None or self._epoch_plan[0] != epoch:
      n = len(self.source)
      self._epoch_plan = (epoch, epoch_permutation(n, self.seed, epoch),
                          epoch_views(n, self.seed, epoch, self.num_views))
    _, order, views = self._epoch_plan
    start = step * self.global_batch_size + self.process_index * self.local_batch_size
    indices = order[start:start + self.local_batch_size]
    return indices, views[indices]

  def _advance(self, epoch: int, step: int) -> tuple[int, int]:
    step += 1
    return (epoch + 1, 0) if step == self.steps_per_epoch else (epoch, step)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    # Keep `prefetch` batches beyond the current one decoding in the background.
    position = (self._epoch, self._step)
    if self._in_flight:
      position = self._advance(*self._in_flight[-1][0])
    while len(self._in_flight) <= self.prefetch:
      indices, views = self.batch_rows(*position)
      self._in_flight.append((position, self._cutter.submit(indices, views)))
      position = self._advance(*position)
    (epoch, step), pending = self._in_flight.popleft()
    batch = self._cutter.collect(pending)
    self._epoch, self._step = self._advance(epoch, step)
    return batch

  def _drop_in_flight(self) -> None:
    while self._in_flight:
      self._cutter.discard(self._in_flight.popleft()[1])

  def close(self) -> None:
    self._drop_in_flight()
    if self._owns_cutter:
      self._cutter.close()


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  return -(-num_examples // global_batch_size)


def eval_batches(source, *, global_batch_size: int, view: ViewSpec, seed: int = 0,
                 view_index: int = 0, process_index: int | None = None,
                 process_count: int | None = None, num_workers: int = 8,
                 cutter: ViewCutter | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Every example exactly once, in id order, as host-local batches with a "valid" mask.

  Global batch b holds examples [b*B, (b+1)*B); the last one is padded to B rows with
  zero images, label 0, id 0 and valid=False. Every process yields the same number of
  batches (`num_eval_batches`). `view_index` selects the view (0 = evaluation view).
  """
  process_index, _, local = _process_share(global_batch_size, process_index, process_count)
  cutter, owns_cutter = _cutter(source, view, seed, num_workers, cutter)
  n = len(source)
  num_batches = num_eval_batches(n, global_batch_size)

  def submit(b: int):
    rows = b * global_batch_size + process_index * local + np.arange(local)
    real = rows[rows < n]
    return real, cutter.submit(real, np.full(len(real), view_index))

  def padded(real: np.ndarray, pending) -> dict[str, np.ndarray]:
    pad = local - len(real)
    padding = {"image": np.zeros((pad, view.size, view.size, 3), np.uint8),
               "label": np.zeros(pad, np.int32), "id": np.zeros(pad, np.int32),
               "view": np.full(pad, view_index, np.int32)}
    batch = padding
    if len(real):
      decoded = cutter.collect(pending)
      batch = {k: np.concatenate([decoded[k], padding[k]]) for k in padding}
    batch["valid"] = np.arange(local) < len(real)
    return batch

  in_flight = collections.deque()
  try:
    for b in range(num_batches):
      while len(in_flight) < 2 and b + len(in_flight) < num_batches:
        in_flight.append(submit(b + len(in_flight)))  # Cut the next while this is used.
      yield padded(*in_flight.popleft())
  finally:
    for _, pending in in_flight:
      cutter.discard(pending)
    if owns_cutter:
      cutter.close()

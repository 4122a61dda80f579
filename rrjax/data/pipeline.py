"""Multi-host data-parallel loading: each process reads only its share of every batch.

A global batch is the concatenation of the processes' local batches in process order
(`rrjax.sharding.shard_batch` builds the global array from them). Everything random is
derived statelessly from the seed, so all processes agree on the global batch without
talking to each other, and a position (epoch, step) is all it takes to resume exactly.

Decoding and cropping run in a pool of threads (PIL releases the GIL while it decodes
and resamples), a few batches ahead of the consumer. Sources of encoded files are cut
straight from their bytes (`example_view`), so training views can use reduced-size JPEG
decoding (`ViewSpec.decode`) and no full-size array is copied around.
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Any, Iterator

import jax
import numpy as np

from rrjax.data.views import ViewSpec

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


def example_view(source, index: int, view: ViewSpec, *, seed: int,
                 view_index: int) -> tuple[np.ndarray, int, int]:
  """(view `view_index` of example `index`, its label, its id): from the encoded bytes
  when the source has them (`encoded_example`), else from the decoded image."""
  if hasattr(source, "encoded_example"):
    example = source.encoded_example(index)
    image = view.from_encoded(example["encoded"], example["name"], seed=seed,
                              example_id=example["id"], view_index=view_index)
  else:
    example = source[index]
    image = view(example["image"], seed=seed, example_id=example["id"],
                 view_index=view_index)
  return image, example["label"], example["id"]


class _Decoder:
  """Cuts views of source examples in a thread pool, keeping a few batches in flight."""

  def __init__(self, source, view: ViewSpec, seed: int, num_workers: int):
    if num_workers <= 0:
      raise ValueError(f"data.num_workers={num_workers} must be positive.")
    self.source, self.view, self.seed = source, view, seed
    self.pool = concurrent.futures.ThreadPoolExecutor(num_workers)

  def submit(self, indices: np.ndarray, view_indices: np.ndarray) -> list:
    return [self.pool.submit(example_view, self.source, int(i), self.view, seed=self.seed,
                             view_index=int(v))
            for i, v in zip(indices, view_indices)]

  def collect(self, futures: list, view_indices: np.ndarray) -> dict[str, np.ndarray]:
    images, labels, ids = zip(*(f.result() for f in futures))
    return {"image": np.stack(images), "label": np.asarray(labels, np.int32),
            "id": np.asarray(ids, np.int32), "view": np.asarray(view_indices, np.int32)}

  def close(self):
    self.pool.shutdown(wait=False, cancel_futures=True)


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
               process_count: int | None = None, num_workers: int = 8, prefetch: int = 2):
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
    self._decoder = _Decoder(source, view, seed, num_workers)
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
    self._in_flight.clear()
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
      self._in_flight.append((position, views, self._decoder.submit(indices, views)))
      position = self._advance(*position)
    (epoch, step), views, futures = self._in_flight.popleft()
    batch = self._decoder.collect(futures, views)
    self._epoch, self._step = self._advance(epoch, step)
    return batch

  def close(self) -> None:
    self._decoder.close()


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  return -(-num_examples // global_batch_size)


def eval_batches(source, *, global_batch_size: int, view: ViewSpec, seed: int = 0,
                 view_index: int = 0, process_index: int | None = None,
                 process_count: int | None = None,
                 num_workers: int = 8) -> Iterator[dict[str, np.ndarray]]:
  """Every example exactly once, in id order, as host-local batches with a "valid" mask.

  Global batch b holds examples [b*B, (b+1)*B); the last one is padded to B rows with
  zero images, label 0, id 0 and valid=False. Every process yields the same number of
  batches (`num_eval_batches`). `view_index` selects the view (0 = evaluation view).
  """
  process_index, _, local = _process_share(global_batch_size, process_index, process_count)
  decoder = _Decoder(source, view, seed, num_workers)
  n = len(source)
  num_batches = num_eval_batches(n, global_batch_size)

  def submit(b: int):
    rows = b * global_batch_size + process_index * local + np.arange(local)
    real = rows[rows < n]
    views = np.full(len(real), view_index)
    return real, views, decoder.submit(real, views)

  def padded(real: np.ndarray, views: np.ndarray, futures: list) -> dict[str, np.ndarray]:
    pad = local - len(real)
    padding = {"image": np.zeros((pad, view.size, view.size, 3), np.uint8),
               "label": np.zeros(pad, np.int32), "id": np.zeros(pad, np.int32),
               "view": np.full(pad, view_index, np.int32)}
    batch = padding
    if len(real):
      decoded = decoder.collect(futures, views)
      batch = {k: np.concatenate([decoded[k], padding[k]]) for k in padding}
    batch["valid"] = np.arange(local) < len(real)
    return batch

  try:
    pending = submit(0) if num_batches else None
    for b in range(num_batches):
      current = pending
      if b + 1 < num_batches:  # Decode the next batch while this one is consumed.
        pending = submit(b + 1)
      yield padded(*current)
  finally:
    decoder.close()

"""Cutting views in worker processes: the parallel part of the host input pipeline.

A training view (JPEG decode, crop, antialiased resize) costs about 2 ms of CPU, most of
it in C code that holds Python's GIL for part of the time, so threads stop scaling at a
couple of cores. `ViewCutter` cuts views in processes instead:

- the workers are started by a forkserver (never forked from the caller, whose JAX
  runtime threads make `fork` unsafe) that has imported only this module (numpy, PIL,
  simplejpeg): no JAX, no `__main__`, a few MB each;
- each worker receives the source, the `ViewSpec` and the seed once, when it starts;
- a batch's rows are split into one chunk per worker; a worker writes its views straight
  into a shared-memory buffer holding the batch and returns only labels, ids and the CPU
  seconds it spent (telemetry); the caller copies the finished batch out and reuses the
  buffer, so no image is pickled.

`num_workers=0` cuts views in the calling thread (debugging, tiny data); -1, the default of
`data.num_workers`, starts one worker per CPU this process may use, less one
(`resolve_num_workers`). Views are a pure function of (source, spec, seed, example id,
view index), so which worker cuts a view never changes it, and a loader's stream is the
same for any number of workers.

Sources are sent to the workers by pickling: image folders send their file list, records
reopen their files in each worker (`RecordSource.__getstate__`).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import threading
import time
import weakref
from multiprocessing import shared_memory
from typing import Any, Sequence

import numpy as np

from rrjax.data.views import ViewSpec

# Only this module is imported by the forkserver before it forks the workers.
_PRELOAD = [__name__]
# Each worker's source, view spec, seed and attached shared buffers (`_start_worker`).
_WORKER: dict[str, Any] = {}
# How often a worker checks that the process it works for still runs.
_OWNER_CHECK_SECONDS = 0.5


def usable_cpus() -> int:
  """The CPUs this process may run on: its affinity mask where the OS has one (a SLURM task
  or `taskset` sees only its own share of the machine), else every CPU."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def resolve_num_workers(num_workers: int) -> int:
  """The number of view-cutting worker processes `data.num_workers` asks for.

  -1: one per usable CPU less one, at least one. The one left is the main process's: it
  copies finished batches out, feeds the devices and runs the training loop, and a worker
  sharing its core would slow every step. 0 (the main process cuts) and counts are kept.
  """
  if num_workers < -1:
    raise ValueError(f"data.num_workers={num_workers} must be -1 (one worker per CPU, less "
                     "one), 0 (cut views in the main process) or a number of workers.")
  return max(usable_cpus() - 1, 1) if num_workers == -1 else num_workers


def example_view(source, index: int, view: ViewSpec, *, seed: int,
                 view_index: int) -> tuple[np.ndarray, int, int]:
  """(view `view_index` of example `index`, its label, its id): from the encoded bytes
  when the source has them (`encoded_example`), else from the decoded image."""
  images, label, example_id = example_views(source, index, view, seed=seed,
                                            view_indices=(view_index,))
  return images[0], label, example_id


def example_views(source, index: int, view: ViewSpec, *, seed: int,
                  view_indices: Sequence[int]) -> tuple[np.ndarray, int, int]:
  """(views `view_indices` of example `index` as uint8 [V,S,S,3], its label, its id),
  decoding the example once (`ViewSpec.from_encoded` for encoded sources)."""
  if hasattr(source, "encoded_example"):
    example = source.encoded_example(index)
    images = view.from_encoded(example["encoded"], example["name"], seed=seed,
                               example_id=example["id"], view_indices=view_indices)
  else:
    example = source[index]
    images = np.stack([view(example["image"], seed=seed, example_id=example["id"],
                            view_index=v) for v in view_indices])
  return images, example["label"], example["id"]


def _start_worker(source, view: ViewSpec, seed: int, owner_pid: int) -> None:
  _WORKER.update(source=source, view=view, seed=seed, buffers={})
  threading.Thread(target=_exit_without_owner, args=(owner_pid,), daemon=True,
                   name="rrjax-owner-watch").start()


def _exit_without_owner(owner_pid: int) -> None:
  """Ends this worker within a second of the process it cuts views for. A SIGKILLed or
  OOM-killed owner runs no cleanup, and a pool worker holds both ends of its task pipe,
  so it would wait for tasks forever, keeping the forkserver, the resource tracker and
  (through the tracker) the batch buffers' shared memory alive. Once every worker is
  gone, the forkserver exits and the tracker unlinks the owner's shared memory."""
  while _is_running(owner_pid):
    time.sleep(_OWNER_CHECK_SECONDS)
  os._exit(0)


def _is_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  try:  # Linux: a killed process stays a zombie until its parent reaps it.
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return True


def _worker_buffer(name: str, shape: tuple[int, ...]) -> np.ndarray:
  buffers = _WORKER["buffers"]
  if name not in buffers:
    buffers[name] = shared_memory.SharedMemory(name=name)
  return np.ndarray(shape, np.uint8, buffers[name].buf)


def _cut_rows(source, view: ViewSpec, seed: int, images: np.ndarray, start: int,
              indices: Sequence[int], view_indices: Sequence[int]):
  """Cuts rows start, start+1, ... of `images`; consecutive rows of one example (the
  cache builder's several views) share one decode. Returns (labels, ids)."""
  labels, ids = [], []
  row = 0
  while row < len(indices):
    end = row + 1
    while end < len(indices) and indices[end] == indices[row]:
      end += 1
    cut, label, example_id = example_views(source, int(indices[row]), view, seed=seed,
                                           view_indices=[int(v) for v in view_indices[row:end]])
    images[start + row:start + end] = cut
    labels += [label] * (end - row)
    ids += [example_id] * (end - row)
    row = end
  return labels, ids


def _cut_chunk(buffer_name: str, shape: tuple[int, ...], start: int,
               indices: list[int], view_indices: list[int]) -> tuple[list, list, float]:
  """In a worker: cuts a chunk of a batch into the shared buffer; returns its labels, ids
  and the CPU seconds spent."""
  cpu = time.process_time()
  labels, ids = _cut_rows(_WORKER["source"], _WORKER["view"], _WORKER["seed"],
                          _worker_buffer(buffer_name, shape), start, indices, view_indices)
  return labels, ids, time.process_time() - cpu


class _Pending:
  """A submitted batch: its buffer, chunk futures (workers) or rows (in-thread)."""

  def __init__(self, indices, view_indices, buffer=None, futures=()):
    self.indices, self.view_indices = indices, view_indices
    self.buffer, self.futures = buffer, list(futures)


class ViewCutter:
  """Cuts the views of batches of (example index, view index) pairs of one source.

  `submit(indices, view_indices)` starts a batch and returns a handle; `collect(handle)`
  waits for it and returns {"image": uint8 [N,S,S,3], "label", "id", "view": int32 [N]};
  `discard(handle)` drops one that will not be collected. Several batches may be in
  flight. `worker_cpu_seconds` is the CPU time the workers spent cutting so far.
  `num_workers` is resolved by `resolve_num_workers` (-1: one per usable CPU, less one).
  """

  def __init__(self, source, view: ViewSpec, seed: int, num_workers: int):
    num_workers = resolve_num_workers(num_workers)
    self.source, self.view, self.seed, self.num_workers = source, view, seed, num_workers
    self.worker_cpu_seconds = 0.0
    self._free: list[shared_memory.SharedMemory] = []
    self._all: list[shared_memory.SharedMemory] = []
    self._pool = None
    if num_workers:
      context = multiprocessing.get_context("forkserver")
      context.set_forkserver_preload(_PRELOAD)
      self._pool = concurrent.futures.ProcessPoolExecutor(
          num_workers, mp_context=context, initializer=_start_worker,
          initargs=(source, view, seed, os.getpid()))
    # Workers and shared memory are released even when nobody calls close().
    self._release = weakref.finalize(self, _release, self._pool, self._all)

  def submit(self, indices: Sequence[int], view_indices: Sequence[int]) -> _Pending:
    indices, view_indices = list(map(int, indices)), list(map(int, view_indices))
    if self._pool is None or not indices:
      return _Pending(indices, view_indices)
    shape = (len(indices), self.view.size, self.view.size, 3)
    buffer = self._buffer(int(np.prod(shape)))
    per_worker = -(-len(indices) // self.num_workers)
    futures = [self._pool.submit(_cut_chunk, buffer.name, shape, start,
                                 indices[start:start + per_worker],
                                 view_indices[start:start + per_worker])
               for start in range(0, len(indices), per_worker)]
    return _Pending(indices, view_indices, buffer, futures)

  def collect(self, pending: _Pending) -> dict[str, np.ndarray]:
    n, size = len(pending.indices), self.view.size
    if pending.buffer is None:
      images = np.empty((n, size, size, 3), np.uint8)
      labels, ids = _cut_rows(self.source, self.view, self.seed, images, 0,
                              pending.indices, pending.view_indices)
    else:
      labels, ids = [], []
      try:
        for future in pending.futures:
          chunk_labels, chunk_ids, cpu = self._result(future)
          labels += chunk_labels
          ids += chunk_ids
          self.worker_cpu_seconds += cpu
        images = np.ndarray((n, size, size, 3), np.uint8, pending.buffer.buf).copy()
      finally:
        self.discard(pending)
    return {"image": images, "label": np.asarray(labels, np.int32),
            "id": np.asarray(ids, np.int32), "view": np.asarray(pending.view_indices, np.int32)}

  def discard(self, pending: _Pending) -> None:
    """Waits until no worker writes into the batch's buffer any more, then reuses it."""
    if pending.buffer is None:
      return
    concurrent.futures.wait(pending.futures)
    self._free.append(pending.buffer)
    pending.buffer = None

  def _result(self, future):
    try:
      return future.result()
    except concurrent.futures.process.BrokenProcessPool as e:
      raise RuntimeError(
          "a data worker process died (out of memory? see the system log); lower "
          "data.num_workers or the batch size, or set data.num_workers=0 to cut views in "
          "the main process.") from e

  def _buffer(self, nbytes: int) -> shared_memory.SharedMemory:
    for i, buffer in enumerate(self._free):
      if buffer.size >= nbytes:
        return self._free.pop(i)
    _check_shared_memory(nbytes)
    buffer = shared_memory.SharedMemory(create=True, size=nbytes)
    self._all.append(buffer)
    return buffer

  def close(self) -> None:
    self._release()
    self._pool = None
    self._free = []

  def __enter__(self) -> "ViewCutter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _release(pool, buffers: list) -> None:
  if pool is not None:
    pool.shutdown(wait=True, cancel_futures=True)
  for buffer in buffers:
    buffer.close()
    buffer.unlink()
  buffers.clear()


def _check_shared_memory(nbytes: int, path: str = "/dev/shm") -> None:
  """Containers often mount a small /dev/shm (Docker: 64 MB); writing past it kills the
  worker with SIGBUS, so refuse up front."""
  if not os.path.isdir(path):
    return
  stats = os.statvfs(path)
  free = stats.f_bavail * stats.f_frsize
  if nbytes > free:
    raise RuntimeError(
        f"data.num_workers>0 needs {nbytes / 2**20:.0f} MB more shared memory for a batch, "
        f"but {path} has {free / 2**20:.0f} MB free; give the container more (docker run "
        "--shm-size=8g), lower the batch size, or set data.num_workers=0.")

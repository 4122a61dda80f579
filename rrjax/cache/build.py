"""Building and verifying a teacher-embedding cache.

Parallel over hosts: chunk c (see `store`) belongs to process c % process_count, and
each process works on its own devices only (no cross-host collectives), so hosts never
wait for each other and can even run at different times. Parallel over devices: every
batch is sharded over a data mesh of the local devices and the teacher's jittable
`apply` runs under jit; batches are padded to one fixed shape so it compiles once.
Decoding and cropping run on host worker threads a few batches ahead of the device
(PIL releases the GIL), and shard writes overlap the next chunk's compute.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from rrjax import in_flight, preemption, sharding
from rrjax.cache import store
from rrjax.data.workers import ViewCutter

# Test hook: when set to N, the builder writes the data of the (N+1)-th chunk it
# finishes in this run, prints HANG_MESSAGE and sleeps instead of marking it done, so a
# test can SIGKILL it at the worst moment (data written, not yet marked).
HANG_ENV = "RRJAX_CACHE_TEST_HANG_AFTER_CHUNKS"
HANG_MESSAGE = "rrjax.cache: test hook hanging before marking a chunk done"
_OVERWRITE_WAIT_S = 600


@dataclasses.dataclass(frozen=True)
class BuildReport:
  """What one `build_cache` call did (this process only)."""
  path: str
  num_chunks: int
  chunks_this_process: int
  chunks_already_done: int
  chunks_computed: int
  images_computed: int
  seconds: float

  @property
  def images_per_s(self) -> float:
    return self.images_computed / max(self.seconds, 1e-9)

  def as_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "images_per_s": round(self.images_per_s, 2)}


class TeacherForward:
  """The teacher on fixed-shape uint8 batches: `forward(put(host_batch))`.

  Teachers with `params` and a jittable `apply` run under jit with the batch sharded over
  `mesh` and the params replicated; plug-ins with only `embed` are called as they are.
  `put` and the forward are separate so a benchmark can time the forward alone.
  """

  def __init__(self, teacher, mesh):
    self.jitted = self.is_jittable(teacher)
    self.teacher, self.mesh = teacher, mesh
    self._batch_sharding = sharding.data_sharding(mesh)
    if self.jitted:
      self._params = sharding.replicate(teacher.params, mesh)
      self._apply = jax.jit(teacher.apply, out_shardings=self._batch_sharding)

  @staticmethod
  def is_jittable(teacher) -> bool:
    return hasattr(teacher, "apply") and hasattr(teacher, "params")

  def put(self, images: np.ndarray):
    return jax.device_put(images, self._batch_sharding) if self.jitted else images

  def __call__(self, images):
    if self.jitted:
      return self._apply(self._params, images)
    return self.teacher.embed(images)


def build_cache(teacher, source, path: str, *, view_spec, views: Sequence[int], seed: int,
                batch_size: int, dataset: Mapping[str, Any], mesh=None,
                forward: TeacherForward | None = None, process_index: int | None = None,
                process_count: int | None = None, dtype: str = "float16",
                chunk_rows: int | None = None, overwrite: bool = False,
                num_workers: int | None = None, prefetch: int = 4) -> BuildReport:
  """Computes this process's share of the cache at `path`, skipping finished chunks.

  Args:
    teacher: a Teacher (`image_size`, `dim`, `fingerprint`, `embed`, optionally
      `params` + `apply`).
    source: random-access source; `source[i]["id"]` must be `i` (rows are example ids).
    view_spec: `rrjax.data.views.ViewSpec`; its `size` must be the teacher's image size.
    views: view indices to store (0 = eval view, 1..V = training views).
    seed: the view seed (the same one the training pipeline uses).
    batch_size: images per device batch (all local devices together).
    dataset: identity of the source (name, root, split, ...) for the fingerprint.
    mesh: a mesh of this process's devices (default: all local devices).
    forward: a `TeacherForward(teacher, mesh)` already compiled (e.g. shared by several
      builds, or warmed up by a benchmark); default: a new one on `mesh`.
    process_index, process_count: this process's share. Default: JAX's processes, and
      with several of them every process returns only when all have finished (so the
      cache is complete for all); explicit values make independent jobs that don't wait.
    dtype: storage dtype, "float16" (default), "bfloat16" or "float32".
    chunk_rows: examples per chunk (unit of work and of resumption) for a new cache;
      default `batch_size`. An existing cache keeps its own.
    overwrite: replace a cache with a different fingerprint at `path` (process 0
      deletes it, others wait for the new one). Without it such a cache is refused.
    num_workers: worker processes cutting views (default: CPU count; 0: this thread).
    prefetch: device batches prepared ahead of the device.
  """
  views = store.check_views(views)
  storage_dtype = store.check_dtype(dtype)
  if view_spec.size != teacher.image_size:
    raise ValueError(f"data.image_size={view_spec.size} but the teacher takes "
                     f"{teacher.image_size}x{teacher.image_size} images; set "
                     f"data.image_size={teacher.image_size}.")
  num_examples = len(source)
  if num_examples == 0:
    raise ValueError(f"The source of dataset {dict(dataset)} is empty; nothing to cache.")
  if forward is not None:
    if forward.teacher is not teacher or (mesh is not None and mesh != forward.mesh):
      raise ValueError("forward must be a TeacherForward of this teacher and mesh.")
    mesh = forward.mesh
  mesh = sharding.make_mesh(jax.local_devices()) if mesh is None else mesh
  if any(d.process_index != jax.process_index() for d in mesh.devices.flat):
    raise ValueError("build_cache needs a mesh of this process's own devices "
                     "(make_mesh(jax.local_devices())): hosts build independently.")
  if TeacherForward.is_jittable(teacher):
    sharding.check_batch_divisible(batch_size, mesh, "cache.batch_size")
  wait_for_all = process_index is None and process_count is None and jax.process_count() > 1
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
  fingerprint = store.cache_fingerprint(
      teacher, dataset=dataset, num_examples=num_examples,
      preprocessing=view_spec.as_dict(), seed=seed, views=views, dtype=dtype)

  kvstore = store.open_kvstore(path)
  chunk_rows = _create_or_resume(kvstore, path, fingerprint, chunk_rows or batch_size,
                                 overwrite, process_index)
  array = store.open_array(kvstore, fingerprint, chunk_rows)
  num_chunks = -(-num_examples // chunk_rows)
  mine = range(process_index, num_chunks, process_count)
  done = store.done_chunks(kvstore)
  todo = [c for c in mine if c not in done]
  logging.info("teacher cache %s: %d chunks, %d for process %d/%d, %d already done",
               path, num_chunks, len(mine), process_index, process_count,
               len(mine) - len(todo))

  start = time.perf_counter()
  writer = _ChunkWriter(kvstore, array, storage_dtype, num_examples, chunk_rows)
  forward = TeacherForward(teacher, mesh) if forward is None else forward
  num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
  with ViewCutter(source, view_spec, seed, num_workers) as cutter, \
      preemption.stop_signals_deferred():
    images_computed = _run(cutter, forward, writer, todo, views=views,
                           batch_size=batch_size, prefetch=prefetch, dim=teacher.dim)
    writer.drain()
    if preemption.requested():
      preemption.stop(f"the teacher cache keeps its finished chunks in {path}")
  seconds = time.perf_counter() - start
  if wait_for_all:
    multihost_utils.sync_global_devices(f"rrjax.cache.build_cache {path}")
  return BuildReport(path=path, num_chunks=num_chunks, chunks_this_process=len(mine),
                     chunks_already_done=len(mine) - len(todo), chunks_computed=len(todo),
                     images_computed=images_computed, seconds=seconds)


def _create_or_resume(kvstore, path: str, fingerprint: dict, chunk_rows: int,
                      overwrite: bool, process_index: int) -> int:
  """Writes the metadata of a new cache or checks an existing one; returns chunk_rows."""
  metadata = store.read_metadata(kvstore)
  if metadata is not None:
    differences = store.fingerprint_differences(metadata["fingerprint"], fingerprint)
    if not differences:
      return metadata["layout"]["chunk_rows"]
    if not overwrite:
      raise ValueError(
          f"{path} holds a teacher cache built for a different configuration:\n  "
          + "\n  ".join(differences)
          + "\nRefusing to overwrite it. Choose another cache.path, or pass --overwrite "
          "(overwrite=True) to delete it and build this one.")
    if process_index != 0:
      return _wait_for_new_metadata(kvstore, path, fingerprint)
    logging.warning("teacher cache %s: deleting a cache with a different fingerprint "
                    "(overwrite=True):\n  %s", path, "\n  ".join(differences))
    store.delete_cache(kvstore)
  elif any(key.startswith((store.ARRAY_DIR.encode(), store.DONE_PREFIX.encode()))
           for key in kvstore.list().result()):
    if not overwrite:
      raise ValueError(f"{path} holds teacher-cache data without {store.METADATA_KEY} "
                       "(an interrupted delete?); pass --overwrite (overwrite=True) to "
                       "clear it, or choose another cache.path.")
    store.delete_cache(kvstore)
  store.write_metadata(kvstore, fingerprint, chunk_rows)
  return chunk_rows


def _wait_for_new_metadata(kvstore, path: str, fingerprint: dict) -> int:
  """Processes other than 0 wait while process 0 replaces a cache (overwrite=True)."""
  deadline = time.monotonic() + _OVERWRITE_WAIT_S
  while time.monotonic() < deadline:
    metadata = store.read_metadata(kvstore)
    if metadata is not None and not store.fingerprint_differences(
        metadata["fingerprint"], fingerprint):
      return metadata["layout"]["chunk_rows"]
    time.sleep(1.0)
  raise TimeoutError(f"Waited {_OVERWRITE_WAIT_S}s for process 0 to replace the teacher "
                     f"cache at {path} (overwrite=True); is process 0 running?")


class _ChunkWriter:
  """Writes finished chunks; marks each done only after its data write has completed."""

  def __init__(self, kvstore, array, storage_dtype, num_examples: int, chunk_rows: int):
    self._kvstore = kvstore
    self._array = array
    self._dtype = storage_dtype
    self._num_examples = num_examples
    self._chunk_rows = chunk_rows
    self._pending: collections.deque = collections.deque()
    self._marked = 0
    hang = os.environ.get(HANG_ENV)
    self._hang_after = int(hang) if hang else None

  def rows(self, chunk: int) -> tuple[int, int]:
    start = chunk * self._chunk_rows
    return start, min(start + self._chunk_rows, self._num_examples)

  def write(self, chunk: int, embeddings: np.ndarray) -> None:
    """Starts writing `embeddings` [rows, views, dim] (float32) of `chunk`."""
    start, stop = self.rows(chunk)
    future = self._array[start:stop].write(embeddings.astype(self._dtype))
    self._pending.append((chunk, future))
    # Keep at most two writes in flight; mark whatever has already landed.
    while self._pending and (len(self._pending) > 2 or self._pending[0][1].commit.done()):
      self._finish_oldest()

  def drain(self) -> None:
    while self._pending:
      self._finish_oldest()

  def _finish_oldest(self) -> None:
    chunk, future = self._pending.popleft()
    future.result()
    if self._hang_after is not None and self._marked == self._hang_after:
      print(HANG_MESSAGE, flush=True)
      time.sleep(3600)
    store.mark_done(self._kvstore, chunk, self.rows(chunk))
    self._marked += 1


def _chunk_batches(rows: range, views: Sequence[int],
                   batch_size: int) -> tuple[int, Iterator[list[tuple[int, list[int]]]]]:
  """Splits a chunk's (row, view) pairs, row-major, into batches of `batch_size` pairs.

  Returns the number of batches and an iterator over them, each batch given as
  [(row, [views of that row in the batch]), ...], so a row is decoded once per batch.
  """
  pairs = [(r, v) for r in rows for v in views]
  num_batches = -(-len(pairs) // batch_size)

  def batches():
    for b in range(num_batches):
      groups: dict[int, list[int]] = {}
      for r, v in pairs[b * batch_size:(b + 1) * batch_size]:
        groups.setdefault(r, []).append(v)
      yield list(groups.items())

  return num_batches, batches()


def _run(cutter: ViewCutter, forward: TeacherForward, writer: _ChunkWriter, todo: list[int],
         *, views, batch_size: int, prefetch: int, dim: int) -> int:
  """The build loop; returns the number of images embedded. The cutter cuts exactly the
  views the training loader hands the student (one decode per example and batch)."""
  def planned_batches():
    for chunk in todo:
      num_batches, batches = _chunk_batches(range(*writer.rows(chunk)), views, batch_size)
      for groups in batches:
        yield chunk, num_batches, [row for row, vs in groups for _ in vs], [
            v for _, vs in groups for v in vs]

  def submit(planned):
    chunk, num_batches, rows, row_views = planned
    return chunk, num_batches, rows, cutter.submit(rows, row_views)

  def device_batches():
    # The cutter's workers cut views `prefetch` batches ahead of the device; a stop request
    # ends the build before the next batch's views are waited for.
    for chunk, num_batches, rows, pending in in_flight.pipelined(
        planned_batches(), submit, fetch=lambda submitted: submitted, depth=prefetch + 1):
      if preemption.requested():
        return  # Chunks already complete are written below; the one in progress is redone.
      batch = cutter.collect(pending)
      if not np.array_equal(batch["id"], rows):
        raise ValueError("the source's example ids are not its row numbers; the cache "
                         "addresses rows by example id, so ids must be 0..len(source)-1.")
      images = batch["image"]
      num_valid = len(images)
      if num_valid < batch_size:
        images = np.concatenate(
            [images, np.zeros((batch_size - num_valid, *images.shape[1:]), images.dtype)])
      yield chunk, num_batches, num_valid, images

  def embed(batch):
    chunk, num_batches, num_valid, images = batch
    return chunk, num_batches, num_valid, forward(forward.put(images))

  def fetch(embedded):
    chunk, num_batches, num_valid, embeddings = embedded
    return chunk, num_batches, np.asarray(embeddings, np.float32)[:num_valid]

  buffers: dict[int, list[np.ndarray]] = {}
  images_computed = 0
  last_log = time.monotonic()
  # Each device program embeds its own share of the batch (no collectives), so several can
  # be in flight on any backend: the device embeds the next batches while this one's
  # embeddings are copied back and written.
  for chunk, num_batches, embeddings in in_flight.pipelined(
      device_batches(), embed, fetch=fetch, depth=in_flight.default_depth(collectives=False)):
    buffers.setdefault(chunk, []).append(embeddings)
    if len(buffers[chunk]) == num_batches:
      start, stop = writer.rows(chunk)
      writer.write(chunk, np.concatenate(buffers.pop(chunk)).reshape(
          stop - start, len(views), dim))
    images_computed += len(embeddings)
    if time.monotonic() - last_log > 30:
      last_log = time.monotonic()
      logging.info("teacher cache: %d images embedded", images_computed)
  return images_computed


def verify_cache(cache: store.TeacherCache, teacher, source, *, view_spec, seed: int,
                 num_samples: int, rng_seed: int = 0, rtol: float = 1e-3) -> dict[str, Any]:
  """Recomputes `num_samples` random (example, view) rows with `teacher.embed` and
  compares them with the cache.

  Passes (`ok`) when the max abs difference is within the storage dtype's rounding plus
  `rtol` (numerical noise between batch shapes/devices), both relative to the largest
  embedding entry.
  """
  if num_samples <= 0:
    raise ValueError(f"num_samples={num_samples} must be positive.")
  finished = cache.finished_ids()
  if not len(finished):
    raise ValueError(f"Teacher cache at {cache.path} has no finished chunks to verify.")
  rng = np.random.default_rng(rng_seed)
  ids = rng.choice(finished, size=min(num_samples, len(finished)), replace=False)
  views = rng.choice(cache.views, size=len(ids))
  images = np.stack([view_spec(source[int(i)]["image"], seed=seed, example_id=int(i),
                               view_index=int(v)) for i, v in zip(ids, views)])
  reference = np.asarray(teacher.embed(images), np.float32)
  cached = cache.lookup(ids, views)
  max_abs = float(np.abs(reference).max())
  max_diff = float(np.abs(cached - reference).max())
  tolerance = (2 * float(np.finfo(store.DTYPES[cache.dtype]).eps) + rtol) * max_abs
  return {"num_checked": int(len(ids)), "max_abs_diff": max_diff,
          "max_abs_embedding": max_abs, "tolerance": tolerance, "ok": max_diff <= tolerance}


"""On-disk (or object-store) layout of a teacher-embedding cache, and its reader.

A cache at `path` (a local directory, or a tensorstore kvstore URL such as
`gs://bucket/dir`, `s3://bucket/dir`, `memory://dir`) holds

- `cache.json`: format version, the fingerprint (everything the embeddings depend on)
  and the layout (`chunk_rows`);
- `embeddings/`: a zarr v3 array [num_examples, num_views_stored, dim] in the storage
  dtype. Rows are example ids, columns the cached view indices (`views`). The build's
  unit of work is a *chunk* of `chunk_rows` consecutive examples x all stored views,
  which is exactly one zarr shard: one object, written whole, so hosts never write into
  each other's objects. Inside a shard each (example, view) embedding is its own inner
  chunk, so a training-time lookup of random rows reads only those rows.
- `done/<chunk>`: one small marker per finished chunk, written only after the chunk's
  data write has completed. Single-object writes are atomic on every kvstore (the file
  driver writes a temporary file and renames it), so a chunk marked done is never
  half-written, and a crashed build resumes by skipping exactly the marked chunks.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

import ml_dtypes
import numpy as np
import tensorstore as ts

FORMAT_VERSION = 1
METADATA_KEY = "cache.json"
ARRAY_DIR = "embeddings/"
DONE_PREFIX = "done/"
DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float32": np.dtype(np.float32)}
BUILD_HINT = "python -m rrjax.cache build --config=<your config>"

# One context for every cache opened in this process: shares the chunk cache (so shard
# indices are read once) and makes `memory://` caches visible across open() calls.
_CONTEXT = ts.Context({"cache_pool": {"total_bytes_limit": 64 << 20}})


def cache_fingerprint(teacher, *, dataset: Mapping[str, Any], num_examples: int,
                      preprocessing: Mapping[str, Any], seed: int, views: Iterable[int],
                      dtype: str) -> dict[str, Any]:
  """Everything the stored embeddings depend on, as a flat JSON-able dict.

  `dataset` names the examples (source, name, root, split, ...; see
  `from_config.dataset_identity`) and `preprocessing` is the view settings
  (`ViewSpec.as_dict()`); each of their fields is its own key (`dataset.split`,
  `preprocessing.size`, ...) so that a mismatch names the exact setting.
  """
  views = check_views(views)
  check_dtype(dtype)
  fingerprint = {
      "format_version": FORMAT_VERSION,
      "teacher": str(teacher.fingerprint),
      "teacher_image_size": int(teacher.image_size),
      "teacher_dim": int(teacher.dim),
      "num_examples": int(num_examples),
      "seed": int(seed),
      "views": list(views),
      "dtype": dtype,
  }
  fingerprint.update({f"dataset.{k}": v for k, v in sorted(dataset.items())})
  fingerprint.update({f"preprocessing.{k}": v for k, v in sorted(preprocessing.items())})
  # Round-trip so tuples become lists and the dict compares equal to one read from JSON.
  return json.loads(json.dumps(fingerprint))


def fingerprint_differences(found: Mapping[str, Any],
                            expected: Mapping[str, Any]) -> list[str]:
  """One line per differing key: `key: cache has A, expected B`."""
  expected = json.loads(json.dumps(dict(expected)))
  lines = []
  for key in sorted(set(found) | set(expected)):
    if found.get(key, "<missing>") != expected.get(key, "<missing>"):
      lines.append(f"{key}: cache has {found.get(key, '<missing>')!r}, "
                   f"expected {expected.get(key, '<missing>')!r}")
  return lines


def build_hint(fingerprint: Mapping[str, Any]) -> str:
  """The command that builds (or resumes) the cache with this fingerprint."""
  hint = BUILD_HINT
  if "dataset.split" in fingerprint:
    hint += f" --split={fingerprint['dataset.split']}"
  return hint + (" --views=eval" if fingerprint.get("views") == [0] else "")


def check_views(views: Iterable[int]) -> tuple[int, ...]:
  views = tuple(int(v) for v in views)
  if not views or min(views) < 0 or list(views) != sorted(set(views)):
    raise ValueError(f"views={views} must be a non-empty, strictly increasing list of view "
                     "indices >= 0 (0 = eval view, 1..num_views = training views).")
  return views


def check_dtype(dtype: str) -> np.dtype:
  if dtype not in DTYPES:
    raise ValueError(f"cache.dtype={dtype!r} must be one of {sorted(DTYPES)}.")
  return DTYPES[dtype]


def open_kvstore(path: str) -> ts.KvStore:
  """The kvstore rooted at `path`: a local directory or a tensorstore URL."""
  url = path if "://" in path else "file://" + os.path.abspath(os.path.expanduser(path))
  try:
    return ts.KvStore.open(url.rstrip("/") + "/", context=_CONTEXT).result()
  except ValueError as e:
    raise ValueError(f"cache.path={path!r} is not a local directory or a kvstore URL "
                     f"tensorstore can open (gs://, s3://, memory://): {e}") from e


def read_metadata(kvstore: ts.KvStore) -> dict[str, Any] | None:
  result = kvstore.read(METADATA_KEY).result()
  return json.loads(result.value) if result.state == "value" else None


def write_metadata(kvstore: ts.KvStore, fingerprint: Mapping[str, Any],
                   chunk_rows: int) -> None:
  metadata = {"format_version": FORMAT_VERSION, "fingerprint": dict(fingerprint),
              "layout": {"chunk_rows": int(chunk_rows)}}
  kvstore.write(METADATA_KEY, json.dumps(metadata, indent=1, sort_keys=True)).result()


def delete_cache(kvstore: ts.KvStore) -> None:
  """Removes a cache's own keys (never anything else under its directory)."""
  for prefix in (ARRAY_DIR, DONE_PREFIX):
    kvstore.delete_range(_prefix_range(prefix)).result()
  kvstore.delete_range(ts.KvStore.KeyRange(METADATA_KEY, METADATA_KEY + "\0")).result()


def _prefix_range(directory: str) -> ts.KvStore.KeyRange:
  """All keys under `directory` ("name/"): from "name/" up to "name0" ('0' follows '/')."""
  return ts.KvStore.KeyRange(directory, directory[:-1] + "0")


def done_key(chunk: int) -> str:
  return f"{DONE_PREFIX}{chunk:08d}"


def done_chunks(kvstore: ts.KvStore) -> set[int]:
  keys = kvstore.list(_prefix_range(DONE_PREFIX)).result()
  return {int(key.decode()[len(DONE_PREFIX):]) for key in keys}


def mark_done(kvstore: ts.KvStore, chunk: int, rows: tuple[int, int]) -> None:
  kvstore.write(done_key(chunk), json.dumps({"rows": list(rows)})).result()


def open_array(kvstore: ts.KvStore, fingerprint: Mapping[str, Any] | None = None,
               chunk_rows: int | None = None) -> ts.TensorStore:
  """Opens the embeddings array; creates it when `fingerprint` and `chunk_rows` are given."""
  spec = {"driver": "zarr3", "kvstore": (kvstore / ARRAY_DIR).spec().to_json()}
  if fingerprint is None:
    return ts.open(spec, open=True, context=_CONTEXT).result()
  shape = [fingerprint["num_examples"], len(fingerprint["views"]), fingerprint["teacher_dim"]]
  spec["metadata"] = {
      "shape": shape,
      "data_type": fingerprint["dtype"],
      "chunk_grid": {"name": "regular",
                     "configuration": {"chunk_shape": [chunk_rows, *shape[1:]]}},
      "codecs": [{"name": "sharding_indexed", "configuration": {
          "chunk_shape": [1, 1, shape[2]],
          "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
          "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                           {"name": "crc32c"}]}}],
  }
  # open=True as well: concurrent builders create the same array; the first one wins.
  return ts.open(spec, create=True, open=True, context=_CONTEXT).result()


class TeacherCache:
  """Read access to a teacher-embedding cache; see the module docstring for the layout."""

  def __init__(self, path: str, kvstore: ts.KvStore, metadata: dict[str, Any],
               array: ts.TensorStore, done: set[int]):
    self.path = path
    self.fingerprint: dict[str, Any] = metadata["fingerprint"]
    self.chunk_rows: int = metadata["layout"]["chunk_rows"]
    self.views: tuple[int, ...] = tuple(self.fingerprint["views"])
    self._kvstore = kvstore
    self._array = array
    self._column = {v: i for i, v in enumerate(self.views)}
    self._chunk_done = np.zeros(self.num_chunks, dtype=bool)
    self._chunk_done[sorted(done)] = True
    self._resident: np.ndarray | None = None  # The whole array, once `keep_in_memory`.

  @classmethod
  def open(cls, path: str, expected_fingerprint: Mapping[str, Any] | None = None, *,
           require_complete: bool = True) -> "TeacherCache":
    """Opens the cache at `path`.

    With `expected_fingerprint` (what the config says the embeddings must be), a cache
    built for anything else is refused with a ValueError listing each difference. With
    `require_complete` (the default, what training needs), an unfinished build is refused
    with the number of rows left and how to resume it.
    """
    kvstore = open_kvstore(path)
    metadata = read_metadata(kvstore)
    if metadata is None:
      raise FileNotFoundError(
          f"No teacher cache at {path} ({METADATA_KEY} is missing). Build it with "
          f"`{BUILD_HINT}`, or set cache.path to an existing cache.")
    if metadata["format_version"] != FORMAT_VERSION:
      raise ValueError(f"Teacher cache at {path} has format version "
                       f"{metadata['format_version']}; this rrjax reads version "
                       f"{FORMAT_VERSION}. Rebuild it with `{BUILD_HINT}`.")
    if expected_fingerprint is not None:
      differences = fingerprint_differences(metadata["fingerprint"], expected_fingerprint)
      if differences:
        raise ValueError(
            f"Teacher cache at {path} was built for a different configuration:\n  "
            + "\n  ".join(differences)
            + f"\nRebuild it for this config with `{BUILD_HINT} --overwrite` (or into a "
            "new cache.path), or point cache.path to a cache built for this config.")
    cache = cls(path, kvstore, metadata, open_array(kvstore), done_chunks(kvstore))
    if require_complete and not cache.is_complete:
      raise ValueError(
          f"Teacher cache at {path} is incomplete: {cache.rows_remaining} of "
          f"{cache.num_examples} examples ({cache.num_chunks - cache.num_done_chunks} of "
          f"{cache.num_chunks} chunks) are not computed yet. Resume the build with "
          f"`{build_hint(cache.fingerprint)}` (finished chunks are kept and skipped).")
    return cache

  @property
  def num_examples(self) -> int:
    return int(self.fingerprint["num_examples"])

  @property
  def dim(self) -> int:
    return int(self.fingerprint["teacher_dim"])

  @property
  def dtype(self) -> str:
    return self.fingerprint["dtype"]

  @property
  def num_chunks(self) -> int:
    return -(-self.num_examples // self.chunk_rows)

  @property
  def num_done_chunks(self) -> int:
    return int(self._chunk_done.sum())

  @property
  def is_complete(self) -> bool:
    return bool(self._chunk_done.all())

  @property
  def rows_remaining(self) -> int:
    return self.num_examples - len(self.finished_ids())

  @property
  def nbytes(self) -> int:
    """Size of the whole array in its storage dtype."""
    return self.num_examples * len(self.views) * self.dim * DTYPES[self.dtype].itemsize

  def keep_in_memory(self, budget_bytes: float) -> bool:
    """Reads the whole array into host memory once if it fits in `budget_bytes` (and the
    build is complete); lookups then index it in numpy instead of reading the store, so a
    training step never waits on storage latency (ImageNet-100 x 25 views x 512 float16
    is 3.2 GB). Returns whether the array is now resident."""
    if self._resident is None and self.is_complete and self.nbytes <= budget_bytes:
      self._resident = self.to_numpy()
    return self._resident is not None

  def finished_ids(self) -> np.ndarray:
    """Example ids whose chunks the build has finished (all of them when complete)."""
    ids = np.arange(self.num_examples)
    return ids[self._chunk_done[ids // self.chunk_rows]]

  def lookup(self, ids, views) -> np.ndarray:
    """Embeddings of (ids[i], views[i]) -> float32 [B, dim]; `views` may be one int."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    views = np.broadcast_to(np.asarray(views, dtype=np.int64), ids.shape)
    if ids.size and (ids.min() < 0 or ids.max() >= self.num_examples):
      raise ValueError(f"example ids must be in [0, {self.num_examples}); got "
                       f"{ids.min()}..{ids.max()}.")
    unknown = sorted(set(views.tolist()) - set(self.views))
    if unknown:
      raise ValueError(f"views {unknown} are not in the cache at {self.path} (it holds "
                       f"views {list(self.views)}); check config.cache.num_views.")
    not_done = ~self._chunk_done[ids // self.chunk_rows]
    if not_done.any():
      raise ValueError(f"example ids {ids[not_done][:5].tolist()}... are in chunks the "
                       f"build has not finished; resume it with "
                       f"`{build_hint(self.fingerprint)}`.")
    columns = np.array([self._column[v] for v in views.tolist()], dtype=np.int64)
    if self._resident is not None:
      rows = self._resident[ids, columns]
    else:
      rows = self._array.vindex[ids, columns].read().result()
    return np.asarray(rows, dtype=np.float32).reshape(len(ids), self.dim)

  def to_numpy(self) -> np.ndarray:
    """The whole array [num_examples, len(views), dim] in the storage dtype."""
    if not self.is_complete:
      raise ValueError(f"Teacher cache at {self.path} is incomplete ({self.rows_remaining} "
                       f"rows left); resume the build with `{build_hint(self.fingerprint)}`.")
    return np.asarray(self._array.read().result())

"""Build, inspect and verify teacher-embedding caches from an experiment config.

  python -m rrjax.cache build   --config=configs/x.py [--workdir=DIR] [--split=train]
                                [--views=train|eval] [--overwrite]
                                [--process_index=i --process_count=n | --distributed]
  python -m rrjax.cache inspect --config=configs/x.py [--workdir=DIR]  (or --path=CACHE)
  python -m rrjax.cache verify  --config=configs/x.py [--workdir=DIR] [--num_samples=32]

`build` resumes an interrupted build (finished chunks are kept) and refuses to replace
a cache built for another configuration unless --overwrite. Hosts share the work: run
the same command on every host with --distributed (jax.distributed.initialize()), or
as n independent jobs with --process_index/--process_count (hosts never communicate).
`inspect` prints the fingerprint and how much is done; `verify` recomputes a random
sample of rows with the teacher and reports the largest difference (exit status 1 when
it exceeds the storage dtype's rounding). Each command prints one JSON line last.
Config fields used: see `rrjax.cache.from_config`.
"""

from __future__ import annotations

import json

import jax
from absl import app, flags
from ml_collections import config_flags

from rrjax.cache import build, from_config, store
from rrjax.data.sources import build_source
from rrjax.teachers import build_teacher

COMMANDS = ("build", "inspect", "verify")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Work directory (cache.path defaults to "
                               "WORKDIR/teacher_cache).")
_SPLIT = flags.DEFINE_string("split", None, "Data split to cache (default: data.train_split).")
_VIEWS = flags.DEFINE_enum("views", "train", ["train", "eval"],
                           "train: views 1..cache.num_views; eval: view 0.")
_PATH = flags.DEFINE_string("path", None, "inspect: a cache path, instead of --config.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "build: replace a cache at the path that "
                               "was built for a different configuration.")
_PROCESS_INDEX = flags.DEFINE_integer("process_index", None, "build: this job's share.")
_PROCESS_COUNT = flags.DEFINE_integer("process_count", None, "build: number of jobs.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() first (multi-host).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 32, "verify: rows to recompute.")


def _print_json(result: dict) -> None:
  print(json.dumps(result, sort_keys=True), flush=True)


def _inspect(path: str) -> dict:
  cache = store.TeacherCache.open(path, require_complete=False)
  return {"path": path, "fingerprint": cache.fingerprint, "chunk_rows": cache.chunk_rows,
          "num_chunks": cache.num_chunks, "chunks_done": cache.num_done_chunks,
          "rows_remaining": cache.rows_remaining, "complete": cache.is_complete}


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m rrjax.cache {{{'|'.join(COMMANDS)}}} "
                         "--config=CONFIG [flags]")
  command, config = argv[1], _CONFIG.value
  if command == "inspect" and _PATH.value:
    _print_json(_inspect(_PATH.value))
    return
  if config is None:
    raise app.UsageError("--config is required (or --path for inspect).")
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  split = _SPLIT.value or config.data.train_split
  path = from_config.cache_path(config, _WORKDIR.value, split, _VIEWS.value)
  if command == "inspect":
    _print_json(_inspect(path))
    return
  teacher = build_teacher(config.teacher)
  source = build_source(config.data, split)
  if command == "build":
    report = from_config.build_from_config(
        config, _WORKDIR.value, teacher, source, split=split, view_set=_VIEWS.value,
        overwrite=_OVERWRITE.value, process_index=_PROCESS_INDEX.value,
        process_count=_PROCESS_COUNT.value)
    _print_json(report.as_dict())
    return
  expected = from_config.expected_fingerprint(config, teacher, source, split=split,
                                              view_set=_VIEWS.value)
  cache = store.TeacherCache.open(path, expected, require_complete=False)
  result = build.verify_cache(cache, teacher, source,
                              view_spec=from_config.teacher_views(config, teacher),
                              seed=config.seed,
                              num_samples=_NUM_SAMPLES.value)
  _print_json({"path": path, **result})
  if not result["ok"]:
    raise SystemExit(1)


if __name__ == "__main__":
  app.run(main)

"""The cache as the project's configs describe it: where it lives, what it must match.

Config fields (`rrjax.config.base_config`):
- `cache.path`: root directory or kvstore URL of the caches ("" = WORKDIR/teacher_cache);
  the cache of one split and view set lives in `<root>/<split>/<view set>_views`.
- `cache.num_views`: V, the training views 1..V stored per example.
- `cache.dtype`: storage dtype ("float16", "bfloat16", "float32").
- `cache.batch_size`: images per device batch while building (all local devices).
- `seed`: the view seed (the training loader cuts its views with the same one).
- `data.*`: the source (`rrjax.data.sources.build_source`) and the view settings
  (`ViewSpec.from_config`); `teacher.*`: the teacher (`rrjax.teachers.build_teacher`).

View sets: "train" = views 1..V (student training targets), "eval" = view 0 (clean
evaluation-view embeddings, e.g. for a probe on clean teacher features, SPEC E8).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from rrjax.cache import build, store
from rrjax.data.views import ViewSpec

VIEW_SETS = ("train", "eval")


def cached_views(view_set: str, num_views: int) -> tuple[int, ...]:
  if view_set not in VIEW_SETS:
    raise ValueError(f"view set {view_set!r} must be one of {VIEW_SETS}.")
  if num_views < 1:
    raise ValueError(f"cache.num_views={num_views} must be at least 1.")
  return (0,) if view_set == "eval" else tuple(range(1, num_views + 1))


def cache_path(config, workdir: str, split: str, view_set: str) -> str:
  """`<cache.path or WORKDIR/teacher_cache>/<split>/<view set>_views`."""
  cached_views(view_set, config.cache.num_views)
  root = config.cache.path
  if not root:
    if not workdir:
      raise ValueError("cache.path is empty and no workdir was given; set "
                       "--config.cache.path or --workdir.")
    root = os.path.join(workdir, "teacher_cache")
  return f"{root.rstrip('/')}/{split}/{view_set}_views"


def dataset_identity(data_cfg, split: str, source) -> dict[str, Any]:
  """What names the examples behind the cache's rows: the source settings, the split,
  for image folders a hash of the file list (relative paths, in row order), and for
  records how their images were stored (`prepare --shorter_side`)."""
  identity = {"source": data_cfg.source, "name": data_cfg.name, "root": data_cfg.root,
              "wnids": data_cfg.wnids, "out_of_class": bool(data_cfg.get("out_of_class", False)),
              "split": split}
  preparation = getattr(source, "preparation", None)  # Records: how images were stored.
  if preparation is not None:
    identity["preparation"] = preparation
  files = getattr(source, "files", None)
  if files is not None:
    relative = "\n".join(os.path.relpath(f, data_cfg.root) for f in files)
    identity["files_sha256"] = hashlib.sha256(relative.encode()).hexdigest()
  return identity


def teacher_views(config, teacher) -> ViewSpec:
  """The views the teacher embeds: the student's (`data.*`) cut at the teacher's input
  size, so a student may train at a lower resolution than its teacher."""
  return ViewSpec.from_config(config.data).at_size(teacher.image_size)


def expected_fingerprint(config, teacher, source, *, split: str,
                         view_set: str) -> dict[str, Any]:
  """The fingerprint a cache must have to serve this config (see `store`)."""
  return store.cache_fingerprint(
      teacher, dataset=dataset_identity(config.data, split, source),
      num_examples=len(source), preprocessing=teacher_views(config, teacher).as_dict(),
      seed=config.seed, views=cached_views(view_set, config.cache.num_views),
      dtype=config.cache.dtype)


def open_cache(config, workdir: str, teacher, source, *, split: str,
               view_set: str = "train") -> store.TeacherCache:
  """The complete cache matching this config; ValueError (what differs, or how much is
  left to build) otherwise. Call it before training starts."""
  return store.TeacherCache.open(
      cache_path(config, workdir, split, view_set),
      expected_fingerprint(config, teacher, source, split=split, view_set=view_set))


def build_from_config(config, workdir: str, teacher, source, *, split: str,
                      view_set: str = "train", overwrite: bool = False,
                      process_index: int | None = None, process_count: int | None = None,
                      forward: build.TeacherForward | None = None) -> build.BuildReport:
  """Builds (or resumes) this process's share of the cache this config trains with
  (`forward`: a `build.TeacherForward` of `teacher` that several builds share, so that
  its program compiles once)."""
  return build.build_cache(
      teacher, source, cache_path(config, workdir, split, view_set),
      view_spec=teacher_views(config, teacher),
      views=cached_views(view_set, config.cache.num_views), seed=config.seed,
      batch_size=config.cache.batch_size,
      dataset=dataset_identity(config.data, split, source), dtype=config.cache.dtype,
      overwrite=overwrite, process_index=process_index, process_count=process_count,
      num_workers=config.data.num_workers, forward=forward)

"""What the stages share: the config, the workdir, the mesh, and parts built on first use.

Everything here is a pure function of the config (a teacher, a source, an operator, a
key), or a resource the run owns (view-cutting workers, the metric writer), closed by
`close()`. Stages hand each other nothing through it: what one stage produces, the
next loads from the workdir (`rrjax.stages.artifacts`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import zlib

import jax
import ml_collections
import numpy as np

from rrjax import cache as cache_lib
from rrjax import evaluate, objectives, operators
from rrjax import writers as writers_lib
from rrjax.cache import from_config as cache_config
from rrjax.data import pipeline, sources
from rrjax.data.views import ViewSpec
from rrjax.data.workers import ViewCutter


@dataclasses.dataclass(eq=False)  # Hashed by identity: its cached methods key on it.
class Context:
  config: ml_collections.ConfigDict
  workdir: str
  mesh: object

  @functools.cached_property
  def teacher(self):
    from rrjax import teachers
    # data.image_size is the student's input size; the teacher sees the same views at its
    # own size (cut at that size for the cache, resized on device elsewhere).
    return teachers.build_teacher(self.config.teacher)

  @functools.cached_property
  def view(self) -> ViewSpec:
    return ViewSpec.from_config(self.config.data)

  @functools.cached_property
  def train_source(self):
    return sources.build_source(self.config.data, self.config.data.train_split)

  @functools.cached_property
  def eval_source(self):
    """`data.eval_split`, or with `eval.data_name` another data set (e.g. ImageNet-100C)."""
    return self.eval_source_of(out_of_class=False)

  @functools.cache
  def eval_source_of(self, *, out_of_class: bool):
    """The evaluation source; `out_of_class` relabels the 5 unseen classes (SPEC E5)."""
    data = ml_collections.ConfigDict(self.config.data.to_dict())
    data.out_of_class = out_of_class
    if self.config.eval.data_name:
      data.name = self.config.eval.data_name
    return sources.build_source(data, self.config.data.eval_split)

  @functools.cached_property
  def operator(self):
    """The training operator."""
    return self.operator_for(self.config.operator.to_dict())

  @functools.cache
  def _operator(self, key: str):
    return operators.build(json.loads(key))

  def operator_for(self, spec: dict):
    """One operator object per spec, so compiled evaluation functions are reused."""
    return self._operator(json.dumps(spec, sort_keys=True))

  def test_operators(self) -> list[dict]:
    """The operator specs evaluators test: `eval.operators`, else `eval.levels` of the
    trained operator, else the trained operator itself."""
    if self.config.eval.operators:
      return [dict(spec) for spec in self.config.eval.operators]
    spec = self.config.operator.to_dict()
    return [operators.with_severity(spec, level) for level in self.config.eval.levels] or [spec]

  @functools.cached_property
  def writer(self) -> writers_lib.MetricWriter:
    return writers_lib.MetricWriter(self.workdir)

  def key(self, name: str, impl: str | None = None) -> jax.Array:
    """An independent base key per purpose, from the config's seed."""
    return jax.random.fold_in(jax.random.key(self.config.seed, impl=impl),
                              zlib.crc32(name.encode()))

  def init_key(self, name: str) -> jax.Array:
    """A key for parameter initialisation. "rbg" rather than the default threefry: as good
    for drawing initial weights, and a large model's init compiles several times faster
    (threefry's hash is unrolled per parameter tensor)."""
    return self.key(name, impl="rbg")

  def cutter(self, source) -> ViewCutter:
    """The worker processes cutting `source`'s views: started once per run."""
    if id(source) not in self._cutters:
      self._cutters[id(source)] = ViewCutter(source, self.view, self.config.seed,
                                             self.config.data.num_workers)
    return self._cutters[id(source)]

  @functools.cached_property
  def _cutters(self) -> dict[int, ViewCutter]:
    return {}

  def close(self) -> None:
    for cutter in self._cutters.values():
      cutter.close()
    self._cutters.clear()
    if "writer" in self.__dict__:
      self.writer.close()

  def train_loader(self, source, batch_size: int) -> pipeline.TrainLoader:
    return pipeline.TrainLoader(source, global_batch_size=batch_size, view=self.view,
                                num_views=self.config.cache.num_views, seed=self.config.seed,
                                cutter=self.cutter(source))

  def eval_batches(self, source):
    return pipeline.eval_batches(source, global_batch_size=self.config.eval.batch_size,
                                 view=self.view, seed=self.config.seed,
                                 cutter=self.cutter(source))

  def uses_cache(self) -> bool:
    return self.config.teacher.mode == "cached"

  @functools.cached_property
  def train_cache(self) -> cache_lib.TeacherCache:
    """The training views' cache, read into RAM once when it fits `cache.ram_budget_gb`:
    every training step looks up a batch of random rows."""
    cache = cache_config.open_cache(self.config, self.workdir, self.teacher,
                                    self.train_source, split=self.config.data.train_split,
                                    view_set="train")
    if cache.keep_in_memory(self.config.cache.ram_budget_gb * 2**30):
      logging.info("teacher cache %s: %.2f GB held in memory", cache.path, cache.nbytes / 1e9)
    return cache

  @functools.cached_property
  def eval_cache(self) -> cache_lib.TeacherCache:
    return cache_config.open_cache(self.config, self.workdir, self.teacher, self.eval_source,
                                   split=self.config.data.eval_split, view_set="eval")

  def with_targets(self, batch: dict) -> dict:
    """Adds the cached teacher embedding of each (id, view) of a training batch."""
    return dict(batch, target=self.train_cache.lookup(batch["id"], batch["view"]))

  @functools.cached_property
  def teacher_on_clean_eval(self) -> np.ndarray:
    """R(x) of every evaluation view of the eval split, by id: cached or computed now."""
    if self.uses_cache():
      ids = np.arange(len(self.eval_source))
      return self.eval_cache.lookup(ids, np.zeros_like(ids))
    return evaluate.collect_outputs(
        *objectives.teacher_features(self.teacher), self.eval_batches(self.eval_source),
        mesh=self.mesh, key=self.key("agreement"),
        repeats=1, operator=self.operator_for({"kind": "identity"}))["outputs"][0]

"""Stage "cache": teacher embeddings of the training views (and of the evaluation views of
the eval split when an `agreement` evaluator needs them), computed once by every host and
device (`rrjax.cache`). Artifact: the caches under `cache.path` (default
WORKDIR/teacher_cache), resumable chunk by chunk, and `WORKDIR/cache/done.json`.
"""

from __future__ import annotations

import dataclasses

import jax

from rrjax import config as config_lib
from rrjax import sharding
from rrjax.cache import TeacherForward
from rrjax.cache import from_config as cache_config
from rrjax.stages.context import Context

NAME = "cache"


def run(ctx: Context) -> dict:
  config = ctx.config
  train = ctx.uses_cache() or config.probe.features == "clean_teacher"
  held_out = (ctx.uses_cache() and "eval" in config.stages
              and "agreement" in config_lib.eval_types(config))
  if not (train or held_out):
    return {}
  # One teacher program for both caches: compiled once (their batches have one shape).
  forward = TeacherForward(ctx.teacher, sharding.make_mesh(jax.local_devices()))
  built = {}
  if train:
    built["train"] = cache_config.build_from_config(
        config, ctx.workdir, ctx.teacher, ctx.train_source, split=config.data.train_split,
        view_set="train", forward=forward)
  if held_out:
    built["eval"] = cache_config.build_from_config(
        config, ctx.workdir, ctx.teacher, ctx.eval_source, split=config.data.eval_split,
        view_set="eval", forward=forward)
  return {name: dataclasses.asdict(report) for name, report in built.items()}

"""Stage "cache": teacher embeddings of the training views (and of the evaluation views of
the eval split when an `agreement` evaluator needs them), computed once by every host and
device (`rrjax.cache`). Artifact: the caches under `cache.path` (default
WORKDIR/teacher_cache), resumable chunk by chunk, and `WORKDIR/cache/done.json`.
"""

from __future__ import annotations

import dataclasses

from rrjax import config as config_lib
from rrjax.cache import from_config as cache_config
from rrjax.stages.context import Context

NAME = "cache"


def run(ctx: Context) -> dict:
  config = ctx.config
  built = {}
  if ctx.uses_cache() or config.probe.features == "clean_teacher":
    built["train"] = cache_config.build_from_config(
        config, ctx.workdir, ctx.teacher, ctx.train_source, split=config.data.train_split,
        view_set="train")
  if (ctx.uses_cache() and "eval" in config.stages
      and "agreement" in config_lib.eval_types(config)):
    built["eval"] = cache_config.build_from_config(
        config, ctx.workdir, ctx.teacher, ctx.eval_source, split=config.data.eval_split,
        view_set="eval")
  return {name: dataclasses.asdict(report) for name, report in built.items()}

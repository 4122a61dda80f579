"""The stages a config names, run in order: cache -> student -> probe -> baseline -> eval.

Each stage is a module with `run(ctx) -> summary` and keeps its work under
`WORKDIR/<stage>` (`rrjax.stages.artifacts`): training stages resume from their orbax
checkpoints, the cache resumes chunk by chunk, and a finished stage leaves `done.json`
with its summary and time, so a re-run skips it. A stage that needs an earlier one's
work loads it from the workdir and, when it is missing, says which stage to run; no
stage ever runs another as a side effect. Results land in `WORKDIR/results.json` and
`results.md` (the eval stage, `rrjax.evaluators`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rrjax import sharding
from rrjax.stages import artifacts, baseline, cache, probe, student
from rrjax.stages import eval as eval_stage
from rrjax.stages.context import Context

STAGES = {module.NAME: module.run for module in (cache, student, probe, baseline, eval_stage)}

__all__ = ["Context", "STAGES", "run_stages"]


def run_stages(config, workdir: str, mesh=None) -> dict[str, Any]:
  """Runs `config.stages` in order, skipping those finished before (their done.json)."""
  ctx = Context(config=config, workdir=workdir, mesh=mesh or sharding.make_mesh())
  try:
    summaries = {}
    for stage in config.stages:
      if artifacts.is_done(workdir, stage):
        logging.info("stage %s: finished before, skipped", stage)
        summaries[stage] = artifacts.read_done(workdir, stage)
        continue
      logging.info("stage %s: starting", stage)
      start = time.perf_counter()
      summary = {"summary": STAGES[stage](ctx), "seconds": time.perf_counter() - start}
      ctx.writer.write_scalars(0, {f"time/{stage}_seconds": summary["seconds"]})
      artifacts.write_done(workdir, stage, summary)
      summaries[stage] = summary
    return summaries
  finally:
    ctx.close()

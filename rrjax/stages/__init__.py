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

import time
from typing import Any

from rrjax import console, operators, sharding
from rrjax.stages import artifacts, baseline, cache, probe, student
from rrjax.stages import eval as eval_stage
from rrjax.stages.context import Context

STAGES = {module.NAME: module.run for module in (cache, student, probe, baseline, eval_stage)}


def describe(stage: str, config) -> str:
  """What a stage does, in a line for the terminal."""
  operator = operators.describe(config.operator)
  return {
      "cache": f"the teacher's embeddings of {config.cache.num_views} training views per "
               f"image ({config.teacher.name})",
      "student": f"trains the {config.student.model} student on {operator} "
                 f"({config.num_epochs} epochs, batch {config.batch_size}, "
                 f"{config.loss.kind} loss)",
      "probe": f"fits linear probes ({config.probe.solver}) on {config.probe.features} "
               f"features of {operator}",
      "baseline": f"fine-tunes the {config.baseline.model} baseline on {operator}",
      "eval": f"evaluators {', '.join(config.evals)} ({config.eval.repeats} corruption draws)",
  }[stage]

__all__ = ["Context", "STAGES", "run_stages"]


def run_stages(config, workdir: str, mesh=None) -> dict[str, Any]:
  """Runs `config.stages` in order, skipping those finished before (their done.json)."""
  ctx = Context(config=config, workdir=workdir, mesh=mesh or sharding.make_mesh())
  try:
    summaries = {}
    for i, stage in enumerate(config.stages, 1):
      if artifacts.is_done(workdir, stage):
        console.say(f"[{i}/{len(config.stages)}] {stage}: finished before, skipped")
        summaries[stage] = artifacts.read_done(workdir, stage)
        continue
      console.say(f"[{i}/{len(config.stages)}] {stage}: {describe(stage, config)}")
      start = time.perf_counter()
      summary = {"summary": STAGES[stage](ctx), "seconds": time.perf_counter() - start}
      ctx.writer.write_scalars(0, {f"time/{stage}_seconds": summary["seconds"]})
      artifacts.write_done(workdir, stage, summary)
      summaries[stage] = summary
    return summaries
  finally:
    ctx.close()

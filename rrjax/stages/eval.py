"""Stage "eval": runs the evaluators of `config.evals` in order (`rrjax.evaluators`) and
writes their rows (`rrjax.results`) to `WORKDIR/results.json` and `results.md`. It loads
what the training stages left, each model once for all evaluators
(`rrjax.evaluators.RunModels`); it never trains.
"""

from __future__ import annotations

import json
import os

import jax

from rrjax import evaluators, operators, results
from rrjax.stages.context import Context

NAME = "eval"


def setting(config) -> dict:
  """What the rows were measured on and with (the report's grouping columns)."""
  return {"dataset": f"{config.data.name}:{config.data.eval_split}",
          "teacher": config.teacher.name, "student": config.student.model,
          "loss": config.loss.kind, "train_operator": operators.describe(config.operator),
          "train_spec": config.operator.to_dict(), "probe_features": config.probe.features,
          "probe_solver": config.probe.solver, "repeats": config.eval.repeats}


def run(ctx: Context) -> dict:
  models = evaluators.RunModels(ctx)
  rows = []
  for name, spec in ctx.config.evals.items():
    rows += evaluators.run(ctx, models, name, spec)
  report = {"experiment": ctx.config.experiment, "setting": setting(ctx.config),
            "results": rows}
  write_results(ctx.workdir, report)
  return {"num_results": len(rows), "evaluators": list(ctx.config.evals)}


def write_results(workdir: str, report: dict) -> None:
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(results.results_markdown(report["results"]))

"""Evaluator "agreement": how close S(A(x)) lands to R(x) on held-out evaluation views,
for the trained student and for its initialisation: mean cosine, and retrieval@1 (how
often R(x_i) is the teacher embedding nearest to S(A(x_i)) among all held-out images).
One corruption draw per image and test operator. No options.
"""

from __future__ import annotations

from rrjax import evaluate as evaluate_lib
from rrjax import operators, results
from rrjax.evaluators.common import RunModels
from rrjax.stages.context import Context


def evaluate(ctx: Context, models: RunModels, name: str, options: dict) -> list[dict]:
  embed, trained = models.student(name)
  students = [("agreement", trained), ("agreement_initial", models.initial_student())]
  teacher = ctx.teacher_on_clean_eval
  rows = []
  for spec in ctx.test_operators():
    for method, variables in students:
      student = evaluate_lib.collect_outputs(
          embed, variables, ctx.eval_batches(ctx.eval_source), mesh=ctx.mesh,
          key=ctx.key("agreement"), repeats=1, operator=ctx.operator_for(spec))
      values = evaluate_lib.agreement_metrics(student["outputs"][0], teacher[student["id"]])
      rows.append(results.row(
          evaluator=name, type=options["type"], method=method, spec=spec,
          metrics={k: evaluate_lib.summarize([v]) for k, v in values.items()},
          describe=operators.describe))
  return rows



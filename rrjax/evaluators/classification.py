"""Evaluators "classification" and "out_of_class": the run's trained classifiers (probes,
baseline) under every test corruption, R draws each (SPEC §5 protocol; E1-E4, E6, E9-E12).

"out_of_class" (SPEC E5) tests on the 5 ImageNet classes the student never saw, each
relabelled to the similar ImageNet-100 class (`rrjax.data.sources.OutOfClassSource`).

Options: `methods` ("probe", "baseline"; () = every classifier the config trains) and
`repeats` (0 = eval.repeats).
"""

from __future__ import annotations

from rrjax import operators, results
from rrjax.evaluators import common
from rrjax.evaluators.common import RunModels
from rrjax.stages.context import Context


def evaluate(ctx: Context, models: RunModels, name: str, options: dict, *,
             out_of_class: bool = False) -> list[dict]:
  source = ctx.eval_source_of(out_of_class=out_of_class)
  rows = []
  found = common.classifiers(ctx, models, options["methods"], name)
  for spec in ctx.test_operators():
    for c in found:
      metrics = common.classify(ctx, c.output_fn, c.variables, spec, source,
                                num_repeats=common.repeats(ctx, options))
      rows.append(results.row(evaluator=name, type=options["type"], method=c.method,
                              label_fraction=c.label_fraction, solver=c.solver,
                              selection=c.selection, spec=spec, metrics=metrics,
                              describe=operators.describe))
  return rows


def evaluate_out_of_class(ctx: Context, models: RunModels, name: str,
                          options: dict) -> list[dict]:
  return evaluate(ctx, models, name, options, out_of_class=True)

"""Evaluator "restoration" (SPEC E7, Tables 7-8): restore the image in pixel space first,
then classify it with the run's probes (usually fitted on clean teacher embeddings:
`probe.features="clean_teacher"`, so the classifier is a clean one).

Options: `restore` ("nlm": non-local means, for noise; "deep_decoder": an untrained
generator fitted to each image, inpainting for masks and denoising otherwise), `steps`
(Deep Decoder fitting steps per image), `repeats` (0 = eval.repeats).
"""

from __future__ import annotations

from rrjax import baselines, operators, results
from rrjax.evaluators import common
from rrjax.evaluators.common import RunModels
from rrjax.stages.context import Context


def evaluate(ctx: Context, models: RunModels, name: str, options: dict) -> list[dict]:
  restore = baselines.restoration(options["restore"], ctx.config.operator.to_dict(),
                                  steps=options["steps"])
  after_restoration = lambda features_fn: (
      lambda variables, corrupted, batch: features_fn(variables, restore(corrupted), batch))
  rows = []
  found = common.classifiers(ctx, models, ("probe",), name,
                             transform=after_restoration)
  for spec in ctx.test_operators():
    for c in found:
      metrics = common.classify(ctx, c.output_fn, c.variables, spec, ctx.eval_source,
                                num_repeats=common.repeats(ctx, options))
      rows.append(results.row(evaluator=name, type=options["type"],
                              method=f"{options['restore']}+{c.method}",
                              label_fraction=c.label_fraction, solver=c.solver,
                              selection=c.selection, spec=spec, metrics=metrics,
                              describe=operators.describe))
  return rows

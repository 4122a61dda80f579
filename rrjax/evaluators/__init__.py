"""Evaluators, chosen by name in `config.evals` (big_vision style).

`config.evals` maps a name to `{"type": <type>, **options}`; the eval stage runs each in
order and gathers their result rows (`rrjax.results`, one schema) into results.json and
results.md. Types and their options (defaults in `rrjax.config.EVALUATORS`):

  classification  the run's probes and baseline under the test corruptions (R draws)
  out_of_class    the same on the 5 unseen, relabelled classes (SPEC E5)
  zero_shot       text-tower zero-shot: student, teacher on corrupted and on clean images
  agreement       cosine / retrieval@1 of S(A(x)) against R(x), trained and initial student
  restoration     pixel-space restoration, then the probes (SPEC E7)
  adversarial     clean and APGD robust accuracy of probes and zero-shot, student and
                  teacher (E14)

Every evaluator is one module with one entry point
`evaluate(ctx, models, name, options) -> list[row]`, where `models`
(`rrjax.evaluators.common.RunModels`) hands it the run's loaded models: each is loaded
once per eval stage, whichever evaluators use it. A new evaluator is a module plus a
line here and its default options in `rrjax.config.EVALUATORS`.
"""

from __future__ import annotations

from rrjax import config as config_lib
from rrjax.evaluators import adversarial, agreement, classification, restoration, zero_shot
from rrjax.evaluators.common import RunModels
from rrjax.stages.context import Context

TYPES = {
    "classification": classification.evaluate,
    "out_of_class": classification.evaluate_out_of_class,
    "zero_shot": zero_shot.evaluate,
    "agreement": agreement.evaluate,
    "restoration": restoration.evaluate,
    "adversarial": adversarial.evaluate,
}


__all__ = ["RunModels", "TYPES", "run"]


def run(ctx: Context, models: RunModels, name: str, spec) -> list[dict]:
  """The rows of evaluator `name` (`spec`: its entry in config.evals)."""
  options = config_lib.evaluator_options(name, spec)
  return TYPES[options["type"]](ctx, models, name, options)

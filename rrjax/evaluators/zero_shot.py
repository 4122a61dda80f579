"""Evaluator "zero_shot" (SPEC E13): CLIP-style zero-shot classification with the
teacher's text tower, side by side for
- the student on corrupted images ("zero_shot": what rrjax's robust CLIP does),
- the teacher on corrupted images ("zero_shot_teacher": what plain CLIP does),
- the teacher on clean images ("zero_shot_teacher_clean": the ceiling; one row).

Class names: `class_names_file` (one per line, in label order), else the data set's own
names made human-readable (`rrjax.zero_shot.class_names`: wnids -> CLIP's ImageNet names,
CIFAR/STL label names -> CLIP's). Prompts: `templates` "clip80" (CLIP's 80 ImageNet
templates, ensembled in embedding space) or "single" ("a photo of a {}.").
Options also: `repeats` (0 = eval.repeats).
"""

from __future__ import annotations

from rrjax import losses, objectives, operators, results, zero_shot
from rrjax.evaluators import common
from rrjax.evaluators.common import RunModels
from rrjax.stages import student as student_stage
from rrjax.stages.context import Context


def class_names(ctx: Context, options: dict) -> list[str]:
  path = options["class_names_file"]
  num_classes = ctx.train_source.num_classes
  if not path:
    return zero_shot.class_names(ctx.train_source.class_names, ctx.config.data.name)
  with open(path) as f:
    names = [line.strip() for line in f if line.strip()]
  if len(names) != num_classes:
    raise ValueError(f"evals.zero_shot.class_names_file={path!r} has {len(names)} names for "
                     f"{num_classes} classes.")
  return names


def text_classifier(ctx: Context, models: RunModels, name: str, options: dict):
  """The text tower's classifier `[K, D]` for the class names and `templates` of
  `options` (built once per run and kept in the workdir), or None (logged) when the
  teacher has no text tower."""
  return models.text_classifier(class_names(ctx, options),
                                zero_shot.templates(options["templates"]), name)


def scores(embed):
  """Cosine logits (x100, CLIP's scale) of an image embedder against the text classifier:
  `(variables {"image", "text"}, corrupted, batch) -> [B, K]`."""
  return lambda v, corrupted, batch: 100 * losses.l2_normalize(
      embed(v["image"], corrupted, batch)) @ v["text"].T


def evaluate(ctx: Context, models: RunModels, name: str, options: dict) -> list[dict]:
  text = text_classifier(ctx, models, name, options)
  if text is None:
    return []
  teacher_embed, teacher_variables = objectives.teacher_features(models.teacher)
  # One scoring function per encoder for all test operators: evaluation compiles once per
  # (function, operator program), and a corruption's severities share a program.
  teacher = (scores(teacher_embed), {"image": teacher_variables, "text": text})
  encoders = [("zero_shot_teacher", *teacher)]
  if student_stage.exists(ctx.config):
    embed, variables = models.student(name)
    encoders.insert(0, ("zero_shot", scores(embed), {"image": variables, "text": text}))
  num_repeats = common.repeats(ctx, options)

  def row(method, output, variables, spec, draws):
    metrics = common.classify(ctx, output, variables, spec, ctx.eval_source,
                              num_repeats=draws)
    return results.row(evaluator=name, type=options["type"], method=method, spec=spec,
                       metrics=metrics, describe=operators.describe)

  rows = [row(method, output, variables, spec, num_repeats)
          for spec in ctx.test_operators() for method, output, variables in encoders]
  rows.append(row("zero_shot_teacher_clean", *teacher, {"kind": "identity"}, 1))
  return rows

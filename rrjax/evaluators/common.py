"""What several evaluators share: the run's models, loaded once (`RunModels`), R-draw
classification on an evaluation source, and the trained classifiers of a run (probes
per label fraction, the baseline) as output functions."""

from __future__ import annotations

import logging
from typing import Any, Callable, NamedTuple

import numpy as np

from rrjax import evaluate, objectives, zero_shot
from rrjax.stages import artifacts
from rrjax.stages import baseline as baseline_stage
from rrjax.stages import probe as probe_stage
from rrjax.stages import student as student_stage
from rrjax.stages.context import Context


class Classifier(NamedTuple):
  """A trained classifier: `output_fn(variables, corrupted01, batch) -> logits`;
  `selection`: an "lbfgs" probe's chosen l2 and held-out accuracy, else {}."""
  method: str
  label_fraction: float
  solver: str | None
  output_fn: Callable
  variables: Any
  selection: dict


class RunModels:
  """What the evaluators evaluate, each loaded when an evaluator first needs it and then
  kept for the rest of the eval stage: the trained student (restored once), its initial
  variables, the probes' features and heads, the baseline, the teacher (`ctx.teacher`,
  built once per run) and zero-shot text classifiers (built once per class list and
  templates, and kept in `WORKDIR/eval`, so a rerun reuses them too). `needed_by` names
  the evaluator in the message when a stage's work is missing."""

  def __init__(self, ctx: Context):
    self.ctx = ctx
    self._loaded: dict[Any, Any] = {}

  def _once(self, key, load: Callable[[], Any]):
    if key not in self._loaded:
      self._loaded[key] = load()
    return self._loaded[key]

  @property
  def teacher(self):
    return self.ctx.teacher

  def student(self, needed_by: str) -> tuple[objectives.FeatureFn, dict]:
    """(features_fn, variables) of the trained student: its embeddings of A(x)."""
    return self._once("student", lambda: student_stage.features(self.ctx, needed_by))

  def initial_student(self) -> dict:
    """The student's variables before training (its `student.init`)."""
    return self._once("initial_student", lambda: student_stage.initial_variables(self.ctx))

  def probe_features(self, needed_by: str) -> tuple[objectives.FeatureFn, Any]:
    """The features a run's probes are applied to at test time: those they were fitted
    on, except that a probe fitted on clean teacher embeddings is applied unchanged to
    the student (SPEC E8) or, without one, to the teacher (the clean classifier of E7)."""
    kind = self.ctx.config.probe.features
    if kind == "student" or (kind == "clean_teacher"
                             and student_stage.exists(self.ctx.config)):
      return self.student(needed_by)
    if kind == "clean_teacher":
      return objectives.teacher_features(self.teacher)
    return self._once("probe_features", lambda: probe_stage.features(self.ctx))

  def probe_head(self, fraction: float, needed_by: str) -> tuple[dict, dict]:
    """(head params, l2 selection) of the probe of `fraction` (`probe_stage.load_head`)."""
    return self._once(("probe_head", fraction),
                      lambda: probe_stage.load_head(self.ctx, fraction, needed_by))

  def baseline(self, needed_by: str) -> dict:
    return self._once("baseline", lambda: baseline_stage.load(self.ctx, needed_by))

  def text_classifier(self, class_names: list[str], templates: list[str],
                      needed_by: str) -> np.ndarray | None:
    """The teacher's zero-shot classifier `[K, D]` for `class_names` and `templates`, or
    None (logged) when the teacher has no text tower."""
    teacher = self.teacher
    if not hasattr(teacher, "embed_text"):
      logging.warning("evals.%s: teacher %s has no text tower; zero-shot skipped.", needed_by,
                      self.ctx.config.teacher.name)
      return None
    return self._once(("text", tuple(class_names), tuple(templates)),
                      lambda: zero_shot.stored_classifier(
                          artifacts.stage_dir(self.ctx.workdir, "eval"), teacher.fingerprint,
                          teacher.embed_text, class_names, templates))


def repeats(ctx: Context, options: dict) -> int:
  return int(options.get("repeats") or ctx.config.eval.repeats)


def classify(ctx: Context, classifier_output: Callable, variables, spec: dict, source, *,
             num_repeats: int, key_name: str = "eval") -> dict[str, dict]:
  """top-1 (top-5, AUC) over `num_repeats` corruption draws of every example of `source`."""
  collected = evaluate.collect_outputs(
      classifier_output, variables, ctx.eval_batches(source), mesh=ctx.mesh,
      key=ctx.key(key_name), repeats=num_repeats, operator=ctx.operator_for(spec))
  return evaluate.classification_metrics(collected["outputs"], collected["label"])


def probe_output(features_fn: objectives.FeatureFn, num_classes: int) -> Callable:
  return lambda v, corrupted, batch: objectives.probe_logits(
      v[1], features_fn(v[0], corrupted, batch), num_classes)


def classifiers(ctx: Context, models: RunModels, methods, needed_by: str,
                transform: Callable | None = None) -> list[Classifier]:
  """The run's trained classifiers among `methods` ("probe": one per label fraction,
  "baseline"); () = every classifier the config trains. `transform(features_fn)` wraps the
  probes' feature extractor (pixel-space restoration first, SPEC E7)."""
  config = ctx.config
  methods = tuple(methods) or tuple(m for m in ("probe", "baseline") if m in config.stages)
  unknown = sorted(set(methods) - {"probe", "baseline"})
  if unknown:
    raise ValueError(f"evals.{needed_by}.methods has {unknown}; allowed: probe, baseline.")
  num_classes = ctx.train_source.num_classes
  found = []
  if "probe" in methods:
    features_fn, frozen = models.probe_features(needed_by)
    if transform is not None:
      features_fn = transform(features_fn)
    output = probe_output(features_fn, num_classes)
    for fraction in probe_stage.fractions(config):
      head, selection = models.probe_head(fraction, needed_by)
      found.append(Classifier(probe_stage.method(config), fraction, config.probe.solver,
                              output, (frozen, head), selection))
  if "baseline" in methods:
    # The classifier's outputs are its class logits.
    found.append(Classifier("baseline", 1.0, None,
                            objectives.student_features(baseline_stage.model(ctx)),
                            models.baseline(needed_by), {}))
  return found

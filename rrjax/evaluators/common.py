"""What several evaluators share: R-draw classification on an evaluation source, and the
trained classifiers of a run (probes per label fraction, the baseline) as output functions."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from rrjax import evaluate, objectives
from rrjax.stages import baseline as baseline_stage
from rrjax.stages import probe as probe_stage
from rrjax.stages import student as student_stage
from rrjax.stages.context import Context


class Classifier(NamedTuple):
  """A trained classifier: `output_fn(variables, corrupted01, batch) -> logits`."""
  method: str
  label_fraction: float
  solver: str | None
  output_fn: Callable
  variables: Any


def repeats(ctx: Context, options: dict) -> int:
  return int(options.get("repeats") or ctx.config.eval.repeats)


def classify(ctx: Context, classifier_output: Callable, variables, spec: dict, source, *,
             num_repeats: int, key_name: str = "eval") -> dict[str, dict]:
  """top-1 (top-5, AUC) over `num_repeats` corruption draws of every example of `source`."""
  collected = evaluate.collect_outputs(
      classifier_output, variables, ctx.eval_batches(source), mesh=ctx.mesh,
      key=ctx.key(key_name), repeats=num_repeats, operator=ctx.operator_for(spec))
  return evaluate.classification_metrics(collected["outputs"], collected["label"])


def probe_eval_features(ctx: Context, needed_by: str) -> tuple[objectives.FeatureFn, Any]:
  """The features a run's probes are applied to at test time: those they were fitted on,
  except that a probe fitted on clean teacher embeddings is applied unchanged to the
  student (SPEC E8) or, without one, to the teacher (the clean classifier of SPEC E7)."""
  if ctx.config.probe.features != "clean_teacher":
    return probe_stage.features(ctx)
  if student_stage.exists(ctx.config):
    return student_stage.features(ctx, needed_by)
  return objectives.teacher_features(ctx.teacher)


def probe_output(features_fn: objectives.FeatureFn, num_classes: int) -> Callable:
  return lambda v, corrupted, batch: objectives.probe_logits(
      v[1], features_fn(v[0], corrupted, batch), num_classes)


def classifiers(ctx: Context, methods, needed_by: str,
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
    features_fn, frozen = probe_eval_features(ctx, needed_by)
    if transform is not None:
      features_fn = transform(features_fn)
    output = probe_output(features_fn, num_classes)
    for fraction in probe_stage.fractions(config):
      head = probe_stage.load_head(ctx, fraction, needed_by)
      found.append(Classifier(probe_stage.method(config), fraction, config.probe.solver,
                              output, (frozen, head)))
  if "baseline" in methods:
    # The classifier's outputs are its class logits.
    found.append(Classifier("baseline", 1.0, None,
                            objectives.student_features(baseline_stage.model(ctx)),
                            baseline_stage.load(ctx, needed_by)))
  return found

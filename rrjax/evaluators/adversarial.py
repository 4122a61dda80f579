"""Evaluator "adversarial" (E14): accuracy under white-box attacks, as RobustBench and
FARE (Schlarmann et al. 2024) report it, next to clean accuracy, for
- the run's trained classifiers on the student (probes per label fraction: "student_probe";
  the supervised "baseline"),
- zero-shot classification with the teacher's text tower of the student ("zero_shot")
  and of the teacher itself ("zero_shot_teacher"; its clean row is
  "zero_shot_teacher_clean").

Each model is attacked end to end on its own logits (the image tower in inference mode,
then the probe head or the text classifier) by APGD (`rrjax.adversarial.apgd`, Croce &
Hein 2020: one random start, `steps` iterations) with each loss of `losses`, "ce"
(cross-entropy) and "dlr" (needs 3+ classes; skipped, with a warning, below that). An
image counts as robust at a budget when its prediction stays correct on the clean image
and on every point every attack visited: robust accuracy is that of the worst case over
the losses run, never above clean accuracy. Attacks see float pixels (not rounded to 8
bits, which would leave no gradient); the teacher gets them through `teacher.apply` as
values in [0, 255], which CLIP teachers take as they are.

Rows: per model, one clean row (operator "identity") and one per budget (spec
`{"kind": "pgd", "eps", "norm", "steps"}`, e.g. "pgd linf eps=4/255 steps=100"), metric
"top1" over one draw. Options (`rrjax.config.EVALUATORS`): `eps` (budgets in [0, 1]
pixel units), `norm` ("linf" | "l2"), `steps`, `losses`, `num_images` (about that many
evaluation images, the same share of every class, drawn with the config's seed, so an
image folder sorted by class is not cut down to its first classes), `methods` ("probe",
"baseline", "zero_shot", "zero_shot_teacher"; () = every model the run has) and the
zero-shot evaluator's `templates` and `class_names_file`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rrjax import adversarial, objectives, operators, results, sharding
from rrjax import evaluate as evaluate_lib
from rrjax.data import subsets
from rrjax.evaluators import common
from rrjax.evaluators.common import RunModels
from rrjax.evaluators import zero_shot as zero_shot_evaluator
from rrjax.stages import student as student_stage
from rrjax.stages.context import Context


class Model(NamedTuple):
  """A classifier to attack: `logits_fn(variables, images01, batch) -> [B, K]`."""
  method: str
  label_fraction: float
  solver: str | None
  logits_fn: Callable
  variables: Any
  clean_method: str  # The method key of its clean row.
  # An lbfgs probe's l2 selection (`common.Classifier.selection`); None: not such a probe.
  selection: dict | None = None


@functools.lru_cache(maxsize=16)
def _compiled_attack(logits_fn: Callable, steps: int, attacks: tuple[str, ...], norm: str,
                     replicated):
  """The jitted attack of one model: clean correctness `[B]` and robustness `[E, B]` at
  each of the E budgets (traced: one compilation for any budgets of that count)."""

  def run(variables, batch, key, index, budgets):
    key = jax.random.fold_in(key, index)
    images = objectives.to_unit_range(batch["image"])
    labels = batch["label"]

    def logits(x):
      return logits_fn(variables, x, batch).astype(jnp.float32)

    clean = jnp.argmax(logits(images), -1) == labels

    def robust_at(eps):
      robust = clean
      for i, loss in enumerate(attacks):
        _, survived = adversarial.apgd(logits, images, labels, jax.random.fold_in(key, i),
                                       eps=eps, steps=steps, loss=loss, norm=norm)
        robust &= survived
      return robust

    return {"clean": clean, "robust": jax.lax.map(robust_at, budgets),
            "valid": batch["valid"]}

  return jax.jit(run, out_shardings=replicated)


def robust_accuracy(logits_fn: Callable, variables, batches, *, mesh, key: jax.Array,
                    eps, steps: int, losses, norm: str) -> dict[str, Any]:
  """Clean and robust top-1 (%) of a classifier over `batches` (padded global batches
  with a "valid" mask, `rrjax.data.pipeline.eval_batches`): {"clean": float,
  "robust": [float per eps], "num_images": int}. Batch b's random starts use
  `fold_in(key, b)`."""
  run = _compiled_attack(logits_fn, int(steps), tuple(losses), norm,
                         sharding.replicated(mesh))
  variables, key, budgets = sharding.replicate(
      (variables, key, jnp.asarray(eps, jnp.float32)), mesh)
  clean, robust = [], []
  for b, batch in enumerate(batches):
    out = jax.device_get(run(variables, sharding.shard_batch(batch, mesh), key, np.int32(b),
                             budgets))
    valid = np.asarray(out["valid"], bool)
    clean.append(out["clean"][valid])
    robust.append(out["robust"][:, valid])
  clean, robust = np.concatenate(clean), np.concatenate(robust, axis=1)
  return {"clean": 100 * float(np.mean(clean)),
          "robust": [100 * float(v) for v in np.mean(robust, axis=1)],
          "num_images": int(len(clean))}


def rows_of(name: str, type: str, model: Model, accuracy: dict, *, eps, steps: int,
            norm: str) -> list[dict]:
  """The result rows of one attacked model (`robust_accuracy`'s output)."""

  def row(method, spec, top1):
    return results.row(evaluator=name, type=type, method=method, spec=spec,
                       metrics={"top1": evaluate_lib.summarize([top1])},
                       describe=operators.describe, label_fraction=model.label_fraction,
                       solver=model.solver, selection=model.selection)

  rows = [row(model.clean_method, {"kind": "identity"}, accuracy["clean"])]
  rows += [row(model.method, {"kind": "pgd", "eps": float(e), "norm": norm, "steps": steps},
               top1) for e, top1 in zip(eps, accuracy["robust"])]
  return rows


def _attackable_probes(ctx: Context, name: str) -> bool:
  """Probes on the teacher's features reach it as 8-bit images or through a host
  callback: no gradient, so an attack would report the clean accuracy as robust."""
  features = ctx.config.probe.features
  if features == "teacher" or (features == "clean_teacher"
                               and not student_stage.exists(ctx.config)):
    logging.warning("evals.%s: probes on the teacher's features (probe.features=%s) have "
                    "no input gradient; not attacked.", name, features)
    return False
  return True


def models(ctx: Context, loaded: RunModels, name: str, options: dict) -> list[Model]:
  """The models `options["methods"]` names (() = every one the run has)."""
  config = ctx.config
  methods = tuple(options["methods"]) or (
      *(m for m in ("probe", "baseline") if m in config.stages),
      *(("zero_shot",) if student_stage.exists(config) else ()), "zero_shot_teacher")
  found = []
  trained = tuple(m for m in methods if m in ("probe", "baseline"))
  if "probe" in trained and not _attackable_probes(ctx, name):
    trained = tuple(m for m in trained if m != "probe")
  for c in common.classifiers(ctx, loaded, trained, name) if trained else ():
    found.append(Model(c.method, c.label_fraction, c.solver, c.output_fn, c.variables,
                       c.method, c.selection))
  text = None
  if "zero_shot" in methods or "zero_shot_teacher" in methods:
    text = zero_shot_evaluator.text_classifier(ctx, loaded, name, options)
  if text is not None and "zero_shot" in methods:
    embed, variables = loaded.student(name)
    found.append(Model("zero_shot", 0.0, None, zero_shot_evaluator.scores(embed),
                       {"image": variables, "text": text}, "zero_shot"))
  if text is not None and "zero_shot_teacher" in methods:
    teacher = loaded.teacher
    if hasattr(teacher, "params") and callable(getattr(teacher, "apply", None)):
      embed = lambda params, images01, batch: teacher.apply(
          params, objectives.at_size(images01, teacher.image_size) * 255.0)
      found.append(Model("zero_shot_teacher", 0.0, None, zero_shot_evaluator.scores(embed),
                         {"image": teacher.params, "text": text}, "zero_shot_teacher_clean"))
    else:
      logging.warning("evals.%s: teacher %s has no jittable apply to differentiate; its "
                      "zero-shot is not attacked.", name, config.teacher.name)
  return found


def _losses(name: str, options: dict, num_classes: int) -> tuple[str, ...]:
  attacks = tuple(options["losses"])
  if num_classes < 3 and "dlr" in attacks:
    logging.warning("evals.%s: %d classes; the DLR loss needs 3 or more, skipped.", name,
                    num_classes)
    attacks = tuple(a for a in attacks if a != "dlr")
  if not attacks:
    raise ValueError(f"evals.{name}.losses={tuple(options['losses'])}: with {num_classes} "
                     "classes only 'ce' can run; add it.")
  return attacks


def evaluate(ctx: Context, loaded: RunModels, name: str, options: dict) -> list[dict]:
  source = ctx.eval_source
  n = len(source)
  if options["num_images"] < n:
    source = subsets.Subset(source, subsets.class_balanced_indices(
        source.labels, options["num_images"] / n, ctx.config.seed))
  attacks = _losses(name, options, source.num_classes)
  rows = []
  for model in models(ctx, loaded, name, options):
    accuracy = robust_accuracy(
        model.logits_fn, model.variables, ctx.eval_batches(source), mesh=ctx.mesh,
        key=ctx.key(f"adversarial/{model.method}"), eps=tuple(options["eps"]),
        steps=options["steps"], losses=attacks, norm=options["norm"])
    logging.info("evals.%s: %s on %d images: clean %.2f%%, robust %s", name, model.method,
                 accuracy["num_images"], accuracy["clean"], accuracy["robust"])
    rows += rows_of(name, options["type"], model, accuracy, eps=tuple(options["eps"]),
                    steps=options["steps"], norm=options["norm"])
  return rows


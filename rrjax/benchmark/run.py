"""The benchmark's work: every (model, dataset, condition) record not yet in --out.

Conditions: "clean"; any operator spec (`rrjax.operators.build`: one draw per image, keyed
by its id, `rrjax.evaluate.collect_outputs`); and APGD at each eps, on the zero-shot
logits (the model's logit scale times the cosine to the text classifier), linf in [0, 1]
pixels before the model's normalisation: APGD-CE (`rrjax.adversarial.apgd`) and APGD-T
(`rrjax.adversarial.apgd_targeted`, the 9 highest non-true classes), each with one random
start, from the clean images. An image counts as robust only when it is classified
correctly clean and both attacks fail (APGD-CE alone below 4 classes, e.g. PatchCamelyon:
the targeted DLR loss needs 4 logits; the record's spec says so). Clean and corrupted conditions use the whole test
split, attacks its first `num_images`. Images are sharded over the data mesh
(`rrjax.sharding`); every process reads its share of each batch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rrjax import adversarial, console, evaluate, losses, objectives, operators, sharding
from rrjax import writers, zero_shot
from rrjax.benchmark import datasets as datasets_lib, models as models_lib, records

CLEAN = "clean"
APGD_TARGETS = 9  # AutoAttack's APGD-T: the 9 highest non-true classes.
# The targeted DLR loss divides by the gap to the 4th-highest logit.
APGD_T_MIN_CLASSES = 4


@dataclasses.dataclass(frozen=True, eq=False)
class Condition:
  """What images are evaluated under: `operator` for clean and corrupted images, `eps`
  (in [0, 1]) for an attack."""
  label: str
  spec: dict
  operator: Callable | None = None
  eps: float | None = None

  @property
  def is_attack(self) -> bool:
    return self.eps is not None


def conditions(corruptions: Sequence[dict], eps: Sequence[float], steps: int) -> list[Condition]:
  """Clean, then each attack budget (eps in [0, 1]), then each corruption, in the table's
  order; specs are checked here (`operators.build` names a bad field)."""
  found = [Condition(CLEAN, {"kind": "identity"}, operators.build({"kind": "identity"}))]
  for e in eps:
    spec = {"kind": "apgd", "attacks": ["apgd-ce", "apgd-t"], "norm": "linf", "eps": e,
            "steps": steps}
    # --eps is in 1/255 (FARE's "eps 2/255"); 6 digits undo the division's rounding.
    found.append(Condition(f"apgd-ce+apgd-t linf eps={e * 255:.6g}/255 steps={steps}", spec,
                           eps=e))
  for spec in corruptions:
    found.append(Condition(operators.describe(spec), dict(spec), operators.build(spec)))
  return found


def logits_fn(image_fn: Callable) -> Callable:
  """`(variables {"image", "text", "scale"}, images01) -> [B, K]` zero-shot logits: the
  logit scale times the cosine between the image embedding and each class's text
  embedding (the classifier's unit rows). Closes over the embedder only, so the compiled
  functions cached on it do not keep a model's weights alive."""
  return lambda v, images01: v["scale"] * losses.l2_normalize(
      image_fn(v["image"], images01)) @ v["text"].T


@functools.lru_cache(maxsize=8)
def _compiled_attack(logits: Callable, steps: int, num_targets: int, replicated):
  """Per image: robust (correct clean and under both attacks) `[B]`; APGD-CE alone for
  `num_targets=0`."""

  def run(variables, batch, key, index, eps):
    key = jax.random.fold_in(key, index)
    images, labels = objectives.to_unit_range(batch["image"]), batch["label"]
    fn = lambda x: logits(variables, x).astype(jnp.float32)
    _, robust = adversarial.apgd(fn, images, labels, jax.random.fold_in(key, 0), eps=eps,
                                 steps=steps, loss="ce", norm="linf")
    if num_targets:  # As AutoAttack: APGD-T only on what APGD-CE left robust.
      robust = adversarial.apgd_targeted(fn, images, labels, jax.random.fold_in(key, 1),
                                         eps=eps, steps=steps, num_targets=num_targets,
                                         norm="linf", robust=robust)[1]
    return {"robust": robust, "label": labels, "valid": batch["valid"]}

  return jax.jit(run, out_shardings=replicated)


class _Loaded(NamedTuple):
  """A loaded model and the functions of its architecture (`_functions`)."""
  model: models_lib.Model
  logits: Callable
  output_fn: Callable

  @classmethod
  def of(cls, model: models_lib.Model) -> "_Loaded":
    return cls(model, *_functions(model.image_fn))


@functools.cache
def _functions(image_fn: Callable) -> tuple[Callable, Callable]:
  """(logits, output_fn for `evaluate.collect_outputs`): the same function objects for
  every model of an architecture, dataset and condition, so each (operator or attack,
  shape) compiles once."""
  logits = logits_fn(image_fn)
  return logits, lambda variables, images01, batch: logits(variables, images01)


@dataclasses.dataclass
class Benchmark:
  out: str
  model_names: Sequence[str]
  dataset_names: Sequence[str]
  conditions: Sequence[Condition]
  num_images: int
  steps: int
  batch_size: int
  data_dir: str | None = None
  seed: int = 0

  def __post_init__(self):
    self.mesh = sharding.make_mesh()

  def run(self) -> list[dict]:
    """Makes every missing record, then writes the table and the plot; returns the
    records of this run's models, datasets and conditions."""
    refs = [models_lib.describe(name) for name in self.model_names]
    sets = {name: datasets_lib.open_dataset(name, self.data_dir) for name in self.dataset_names}
    done = {records.key(r["model"], r["dataset"], r["condition"], r["num_images"]): r
            for r in records.read(self.out)}
    for ref in refs:
      loaded = None
      for name, data in sets.items():
        todo = [c for c in self.conditions
                if records.key(ref.name, name, c.label, self._count(c, data)) not in done]
        if not todo:
          continue
        loaded = loaded or _Loaded.of(models_lib.load(ref))
        model = loaded.model
        variables = {"image": model.image_variables, "text": self._classifier(model, data),
                     "scale": jnp.float32(model.logit_scale)}
        for condition in todo:
          rec = self._evaluate(loaded, data, condition, variables)
          done[records.key(ref.name, name, condition.label, rec["num_images"])] = rec
          if jax.process_index() == 0:
            records.append(self.out, rec)
          console.say(f"{ref.name} | {name} | {condition.label}: top-1 "
                      f"{100 * rec['metrics']['acc1']:.2f}% on {rec['num_images']} images")
    wanted = {records.key(ref.name, name, c.label, self._count(c, sets[name]))
              for ref in refs for name in sets for c in self.conditions}
    finished = [r for k, r in done.items() if k in wanted]
    if jax.process_index() == 0:
      self._write_summaries(finished, [ref.name for ref in refs])
    return finished

  def _count(self, condition: Condition, data: datasets_lib.Dataset) -> int:
    return min(self.num_images, len(data)) if condition.is_attack else len(data)

  def _classifier(self, model: models_lib.Model, data: datasets_lib.Dataset) -> np.ndarray:
    """The text classifier [K, D] of (model, dataset), computed once and kept in
    OUT/classifiers, keyed by the text tower's identity, the names and the templates (a
    student shares its teacher's)."""
    return zero_shot.stored_classifier(
        os.path.join(self.out, "classifiers"), model.ref.text_identity, model.embed_text,
        data.class_names, data.templates)

  def _batches(self, model, data, count: int, progress: str) -> Iterator[dict]:
    bar = writers.Progress(progress, datasets_lib.num_batches(count, self.batch_size))
    try:
      for b, batch in enumerate(datasets_lib.batches(
          data.source, count, global_batch_size=self.batch_size, size=model.ref.image_size,
          interpolation=model.ref.interpolation, resize_mode=model.ref.resize_mode)):
        yield batch
        bar.update(b + 1)
    finally:
      bar.close()

  def _evaluate(self, loaded: "_Loaded", data, condition: Condition,
                variables) -> dict[str, Any]:
    model, count = loaded.model, self._count(condition, data)
    progress = f"{data.name} {condition.label}"
    key = jax.random.fold_in(jax.random.key(self.seed), 0)
    spec = condition.spec
    if condition.is_attack:
      labels, correct = self._attack(loaded.logits, variables, self._batches(
          model, data, count, progress), key, condition)
      metrics = records.classification_metrics(correct, labels, None)
      if not _num_targets(len(data.class_names)):
        logging.warning("%s has %d classes: APGD-T needs %d, so only APGD-CE ran.", data.name,
                        len(data.class_names), APGD_T_MIN_CLASSES)
        spec = dict(spec, attacks=["apgd-ce"])
    else:
      out = evaluate.collect_outputs(
          loaded.output_fn, variables, self._batches(model, data, count, progress),
          mesh=self.mesh, key=key, repeats=1, operator=condition.operator)
      labels = out["label"]
      metrics = records.logits_metrics(out["outputs"][0], labels)
    logging.info("benchmark %s / %s / %s: %s", model.ref.name, data.name, condition.label,
                 metrics)
    return records.record(model=model.ref.name, dataset=data.name, condition=condition.label,
                          spec=spec, metrics=metrics, num_images=len(labels))

  def _attack(self, logits, variables, batches, key, condition) -> tuple[np.ndarray, np.ndarray]:
    num_targets = _num_targets(variables["text"].shape[0])
    run = _compiled_attack(logits, self.steps, num_targets,
                           sharding.replicated(self.mesh))
    variables, key, eps = sharding.replicate(
        (variables, key, jnp.float32(condition.eps)), self.mesh)
    labels, robust = [], []
    for b, batch in enumerate(batches):
      out = jax.device_get(run(variables, sharding.shard_batch(batch, self.mesh), key,
                               np.int32(b), eps))
      valid = np.asarray(out["valid"], bool)
      labels.append(out["label"][valid])
      robust.append(out["robust"][valid])
    return np.concatenate(labels), np.concatenate(robust)

  def _write_summaries(self, finished: list[dict], model_names: list[str]) -> None:
    labels = [c.label for c in self.conditions]
    with open(os.path.join(self.out, records.TABLE), "w") as f:
      f.write(records.table(finished, model_names, list(self.dataset_names), labels))
    attacks = {c.label: c.eps for c in self.conditions if c.is_attack}
    if attacks:
      records.plot(os.path.join(self.out, records.PLOT), records.average_curves(
          finished, model_names, list(self.dataset_names), CLEAN, attacks))


def _num_targets(num_classes: int) -> int:
  """APGD-T's target classes; 0 (APGD-CE alone) below APGD_T_MIN_CLASSES classes."""
  return min(APGD_TARGETS, num_classes - 1) if num_classes >= APGD_T_MIN_CLASSES else 0

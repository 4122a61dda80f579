"""The authors' reference numbers (SPEC §7) as data, for reports to show alongside ours.

They come from a CLIP RN101 teacher and student (rrjax's default teacher differs), so they
are landmarks for the shape of the results, not numbers to hit. Each entry names its
setting with the same fields a row of `results.json` has, so a report can match them:

  method, label_fraction, loss   as in the results rows and `setting`
  train_operator, operator       `rrjax.operators.describe` labels of the training and
                                 test operators
  dataset                        a family name (see `dataset_family`)
  top1 (%), auc                  the reported metrics
"""

from __future__ import annotations

from typing import Any

from rrjax import operators

PAPER_TEACHER = "CLIP RN101 (paper)"

# Table 1 columns: the paper's 8 fixed distortions, in the paper's order.
TABLE1_OPERATORS: tuple[str, ...] = tuple(operators.describe(s) for s in operators.PAPER_SETTINGS)

# ImageNet-100 val top-1 (%), student + linear probe, same distortion at train and test,
# in the order of `operators.PAPER_SETTINGS`: mask .5/.75/.9, noise .1/.3/.5, blur 21/5, 37/9.
_TABLE1_TOP1 = {
    1.0: (85.9, 84.0, 83.0, 84.5, 81.3, 76.2, 83.2, 77.8),
    0.1: (82.2, 80.4, 79.9, 81.0, 78.2, 73.1, 80.9, 74.8),
}

MASK_RANGE = operators.describe({"kind": "mask", "p": (0.5, 0.95)})
MASK_90 = operators.describe({"kind": "mask", "p": 0.9})

# Loss ablation (Figure 6): trained on mask p ~ U(.5, .95), tested at p = .9.
LOSS_ABLATION_TOP1 = {"student_teacher": 81.9, "student_student": 81.9, "student_both": 82.5,
                      "mse": 77.4}


def _entry(**fields) -> dict[str, Any]:
  return {"method": "student_probe", "label_fraction": 1.0, "loss": "student_teacher",
          "dataset": "imagenet100", **fields}


REFERENCE: tuple[dict[str, Any], ...] = (
    *(_entry(label_fraction=fraction, train_operator=op, operator=op, top1=top1)
      for fraction, row in _TABLE1_TOP1.items() for op, top1 in zip(TABLE1_OPERATORS, row)),
    *(_entry(loss=loss, train_operator=MASK_RANGE, operator=MASK_90, top1=top1)
      for loss, top1 in LOSS_ABLATION_TOP1.items()),
    # The COVID numbers are for the mask-range model, evaluated under its own operator.
    _entry(dataset="covid", train_operator=MASK_RANGE, operator=MASK_RANGE, top1=84.0,
           auc=0.918),
    _entry(method="zero_shot", label_fraction=0.0, train_operator=MASK_90, operator=MASK_90,
           top1=62.3),
)

# Transfer data sets (SPEC E4) by the words their names contain; anything else is taken to
# be ImageNet-100 or a stand-in for it (smoke runs).
_FAMILIES = (("covid", ("covid",)), ("cifar100", ("cifar100", "cifar-100")),
             ("cifar10", ("cifar10", "cifar-10")), ("stl10", ("stl10", "stl-10")),
             ("imagenet100b", ("imagenet100b", "imagenet-100b")))


def dataset_family(dataset: str) -> str:
  """"covid_xray:test" -> "covid", "cifar100:test" -> "cifar100", others -> "imagenet100"."""
  name = dataset.lower()
  for family, words in _FAMILIES:
    if any(word in name for word in words):
      return family
  return "imagenet100"


def lookup(*, method: str, label_fraction: float, loss: str, train_operator: str,
           operator: str, dataset: str) -> dict[str, Any] | None:
  """The authors' entry for exactly this setting, or None."""
  family = dataset_family(dataset)
  for entry in REFERENCE:
    if (entry["method"] == method and entry["label_fraction"] == label_fraction
        and entry["loss"] == loss and entry["train_operator"] == train_operator
        and entry["operator"] == operator and entry["dataset"] == family):
      return entry
  return None

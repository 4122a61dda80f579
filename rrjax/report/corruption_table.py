"""The ImageNet-C table of reports (rrjax.report): per-corruption top-1 over severities,
their mean and, given AlexNet's errors, mCE."""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Sequence
from typing import Any


from rrjax import imagenet_c
from rrjax.report.tables import percent, table_of
from rrjax.results import MISSING, markdown, method_name

def load_alexnet_errors(path: str) -> dict[str, tuple[float, ...]]:
  """AlexNet's top-1 errors on the ImageNet-C corruptions, mCE's denominators.

  The file is a JSON object {corruption: [e1, e2, e3, e4, e5]}: error rates as FRACTIONS
  in [0, 1] (0.886 for 88.6% error) at severities 1..5, corruptions named as in
  `rrjax.imagenet_c.NAMES`. A single number instead of a list is the mean over the five
  severities (as Hendrycks & Dietterich tabulate them; CE only needs their sum). They must
  come from the same test set: ImageNet-100's are not published, so measure an AlexNet
  trained on ImageNet-100 under the same corruptions.
  """
  with open(path) as f:
    try:
      table = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); --alexnet_errors takes "
                       "{corruption: [e1, ..., e5]}.") from None
  if not isinstance(table, dict):
    raise ValueError(f"{path}: --alexnet_errors must hold a JSON object {{corruption: "
                     f"[e1, ..., e5]}}; got {type(table).__name__}.")
  errors = {}
  for name, value in table.items():
    values = [value] * len(imagenet_c.SEVERITIES) if isinstance(value, (int, float)) else value
    if name not in imagenet_c.NAMES:
      raise ValueError(f"{path}: {name!r} is not an ImageNet-C corruption; names: "
                       f"{', '.join(imagenet_c.NAMES)}.")
    if (not isinstance(values, list) or len(values) != len(imagenet_c.SEVERITIES)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
      raise ValueError(f"{path}: {name} must be a list of 5 error rates (severities 1..5) or "
                       f"one number (their mean); got {value!r}.")
    if not all(0 <= v <= 1 for v in values) or not sum(values):
      raise ValueError(f"{path}: {name}'s errors {values} must be fractions in [0, 1], not all "
                       "0 (divide percentages by 100).")
    errors[name] = tuple(float(v) for v in values)
  return errors

_LOG = logging.getLogger(__name__)


def imagenet_c_table(rows: Sequence[dict[str, Any]],
                     alexnet_errors: dict[str, Sequence[float]] | None = None) -> str:
  """ImageNet-C: for each (workdir, method, labels), top-1 per corruption averaged over the
  severities it was tested at, their mean over corruptions and, given AlexNet's errors
  (`load_alexnet_errors`), mCE: the mean over the row's common corruptions (Hendrycks &
  Dietterich's 15; the 4 extra ones are for validation) tested at all 5 severities of
  CE_c = sum_s (100 - top1_s) / sum_s (100 * alexnet_s) x 100."""
  mine = [row for row in rows if table_of(row) == "imagenet_c" and row["top1_mean"] is not None]
  if not mine:
    return ""
  # {row key: {corruption: {severity: (top-1, workdir)}}}
  found = collections.defaultdict(lambda: collections.defaultdict(dict))
  for row in mine:
    spec = json.loads(row["spec"])
    key = (row["workdir"], row["train_operator"], method_name(row["method"]),
           percent(row["label_fraction"]))
    severities = found[key][spec["corruption"]]
    if spec["severity"] in severities:
      _LOG.warning("report: %s at %s severity %s appears twice; the table shows the latter.",
                   key, spec["corruption"], spec["severity"])
    severities[spec["severity"]] = row["top1_mean"]
  names = [name for name in imagenet_c.NAMES if any(name in v for v in found.values())]
  complete = set(imagenet_c.SEVERITIES)
  body, partial = [], False
  for key, by_name in found.items():
    cells, means, errors = [], [], []
    for name in names:
      top1 = by_name.get(name, {})
      if not top1:
        cells.append(MISSING)
        continue
      means.append(sum(top1.values()) / len(top1))
      partial |= set(top1) != complete
      cells.append(f"{means[-1]:.2f}" + ("" if set(top1) == complete else "*"))
      if (alexnet_errors and name in alexnet_errors and name in imagenet_c.COMMON
          and set(top1) == complete):
        errors.append(100 * sum(100 - top1[s] for s in imagenet_c.SEVERITIES)
                      / sum(100 * e for e in alexnet_errors[name]))
    extra = [f"{sum(means) / len(means):.2f} (n={len(means)})"]
    if alexnet_errors:
      extra.append(f"{sum(errors) / len(errors):.1f} (n={len(errors)})" if errors else MISSING)
    body.append([*key, *cells, *extra])
  notes = ["Top-1 (%) per corruption averaged over its severities; mean: over the row's n "
           "corruptions. Per-severity numbers: results.csv."]
  if partial:
    notes.append("*: tested at only some of severities 1-5; the average is over those, and "
                 "the corruption gets no corruption error (CE) and stays out of mCE.")
  if alexnet_errors:
    notes.append("mCE (%): the mean, over the row's n common corruptions (Hendrycks & "
                 "Dietterich's 15; the 4 extra ones stay out, as in their mCE) tested at all 5 "
                 "severities and in the AlexNet file, of CE_c = sum over severities of the "
                 "error / the same sum of AlexNet's errors x 100. AlexNet's errors come from "
                 "--alexnet_errors: ImageNet-100's are not published, so whoever supplied "
                 "them measured them.")
  else:
    notes.append("mCE needs AlexNet's errors on the same corruptions: `python -m rrjax.report "
                 "... --alexnet_errors FILE.json` ({corruption: [e1, ..., e5]}, fractions). "
                 "ImageNet-100's are not published: measure them with an AlexNet trained on "
                 "ImageNet-100.")
  header = ["workdir", "train operator", "method", "labels", *names, "mean"]
  return ("### ImageNet-C: top-1 (%) per corruption\n\n"
          + markdown(header + (["mCE (%)"] if alexnet_errors else []), body) + "\n"
          + "\n\n".join(notes) + "\n")

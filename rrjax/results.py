"""The rows every evaluator returns, the names they show under, and one Markdown writer.

`WORKDIR/results.json` is {"experiment", "setting", "results": [row, ...]}. A row:

  evaluator       its name in `config.evals` (e.g. "classification", "zero_shot")
  type            the evaluator type (`rrjax.evaluators.TYPES`)
  method          what was evaluated, a key of METHODS; restoration rows are
                  "<restoration>+<method>" (E7: "nlm+clean_teacher_probe")
  label_fraction  share of the training labels its classifier saw (0 where none)
  solver          the probe's solver ("adam" | "lbfgs") for probe rows, else None
  l2, holdout_top1
                  an "lbfgs" probe's chosen L2 strength and its top-1 (%) on the held-out
                  training images it was chosen on; None for every other row
  operator        `operators.describe(spec)` of the test corruption, and `spec` itself
  <metric>        for each metric of METRICS it measured: {"mean", "std", "sem"} over the
                  R corruption draws (agreement: one draw, std = sem = 0)

Light on purpose (no JAX): `rrjax.report` reads results through this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

METRICS = ("top1", "top5", "auc", "cosine", "retrieval_at_1")
METRIC_NAMES = {"top1": "top-1 (%)", "top5": "top-5 (%)", "auc": "AUC", "cosine": "cosine",
                "retrieval_at_1": "retrieval@1"}
# Method key -> the name tables show.
METHODS = {
    "student_probe": "ours",
    "teacher_probe": "teacher probe",
    "clean_teacher_probe": "clean-teacher probe",
    "imagenet_probe": "ImageNet probe",
    "baseline": "baseline",
    "zero_shot": "zero-shot (student)",
    "zero_shot_teacher": "zero-shot (teacher, corrupted)",
    "zero_shot_teacher_clean": "zero-shot (teacher, clean: the ceiling)",
    "agreement": "student vs teacher",
    "agreement_initial": "initial student vs teacher",
}
MISSING = "–"


def method_name(method: str) -> str:
  """The shown name of a method key ("nlm+clean_teacher_probe" -> "nlm + clean-teacher
  probe"); unknown keys as they are."""
  restoration, sep, method = method.rpartition("+")
  name = METHODS.get(method, method)
  return f"{restoration} + {name}" if sep else name


def row(*, evaluator: str, type: str, method: str, spec: dict[str, Any], metrics: dict,
        describe, label_fraction: float = 0.0, solver: str | None = None,
        selection: dict | None = None) -> dict[str, Any]:
  """A result row (module doc); `describe` is `operators.describe`; `selection` is an
  "lbfgs" probe's {"l2", "holdout_accuracy" (a fraction)}."""
  unknown = sorted(set(metrics) - set(METRICS))
  if unknown:
    raise ValueError(f"metrics {unknown} are not among {METRICS}.")
  selection = selection or {}
  holdout = selection.get("holdout_accuracy")
  return {"evaluator": evaluator, "type": type, "method": method,
          "label_fraction": float(label_fraction), "solver": solver,
          "l2": selection.get("l2"), "holdout_top1": None if holdout is None else 100 * holdout,
          "operator": describe(spec), "spec": dict(spec), **metrics}


def format_summary(summary: dict[str, float] | None, metric: str) -> str:
  """"83.02 ± 0.21" (percentages), "0.918 ± 0.004" (AUC, cosine, retrieval), or "–"."""
  if not summary or summary.get("mean") is None:
    return MISSING
  digits = 2 if metric in ("top1", "top5") else 3
  return f"{summary['mean']:.{digits}f} ± {summary.get('sem') or 0:.{digits}f}"


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(cells) + " |" for cells in body]
  return "\n".join(lines) + "\n"


def results_markdown(rows: Sequence[dict[str, Any]]) -> str:
  """`results.md`: one table per evaluator, with the metrics its rows have, and the
  chosen l2 and held-out top-1 when a row has them (lbfgs probes)."""
  sections = []
  for evaluator in dict.fromkeys(r["evaluator"] for r in rows):
    mine = [r for r in rows if r["evaluator"] == evaluator]
    metrics = [m for m in METRICS if any(r.get(m) for r in mine)]
    selected = any(r.get("l2") is not None for r in mine)
    body = [[method_name(r["method"]), f"{r['label_fraction']:g}", r.get("solver") or MISSING,
             r["operator"], *(format_summary(r.get(m), m) for m in metrics),
             *(_selection_cells(r) if selected else ())] for r in mine]
    sections.append(f"### {evaluator} ({mine[0]['type']})\n\n" + markdown(
        ["method", "labels", "solver", "operator", *(METRIC_NAMES[m] for m in metrics),
         *(("l2", "held-out top-1 (%)") if selected else ())], body))
  return "\n".join(sections)


def _selection_cells(row: dict[str, Any]) -> tuple[str, str]:
  if row.get("l2") is None:
    return MISSING, MISSING
  return f"{row['l2']:.3g}", f"{row['holdout_top1']:.2f}"

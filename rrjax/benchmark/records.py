"""What a benchmark leaves in its --out directory, and how a rerun resumes from it.

- `results.jsonl`: one JSON record per (model, dataset, condition), appended as each is
  finished, in CLIP_benchmark's fields (`dataset`, `model`, `task`
  "zeroshot_classification", `metrics` {`acc1`, `acc5`, `mean_per_class_recall`} as
  fractions; `acc5` is null below 5 classes and under attack, where only the top-1
  prediction is attacked) plus `condition` (its label: "clean", an operator's
  `rrjax.operators.describe`, "apgd-ce+apgd-t linf eps=2/255 steps=100"), `spec` and
  `num_images`. A record whose (model, dataset, condition, num_images) a rerun would
  produce again is kept and skipped.
- `table.md` in FARE's layout: one block per condition (clean, then each attack budget,
  then each corruption), rows models, columns datasets and their average, top-1 in %.
- `robust_accuracy.png`: average top-1 over the datasets against eps (0 = clean), one
  line per model, when the run has attacks.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

RESULTS = "results.jsonl"
TABLE = "table.md"
PLOT = "robust_accuracy.png"
TASK = "zeroshot_classification"


def classification_metrics(correct_top1: np.ndarray, labels: np.ndarray,
                           correct_top5: np.ndarray | None) -> dict[str, float | None]:
  """CLIP_benchmark's metrics from per-image correctness: acc1, acc5 (None without it)
  and mean_per_class_recall (scikit-learn's balanced accuracy: the mean over the classes
  present of the fraction of their images counted correct)."""
  correct_top1, labels = np.asarray(correct_top1, bool), np.asarray(labels)
  recalls = [np.mean(correct_top1[labels == c]) for c in np.unique(labels)]
  return {"acc1": float(np.mean(correct_top1)),
          "acc5": None if correct_top5 is None else float(np.mean(correct_top5)),
          "mean_per_class_recall": float(np.mean(recalls))}


def logits_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
  """`classification_metrics` of class scores [N, K] (top-5 with K >= 5)."""
  ranks = np.argsort(-logits, axis=-1, kind="stable")
  top5 = np.any(ranks[:, :5] == labels[:, None], axis=1) if logits.shape[1] >= 5 else None
  return classification_metrics(ranks[:, 0] == labels, labels, top5)


def record(*, model: str, dataset: str, condition: str, spec: dict, metrics: dict,
           num_images: int) -> dict[str, Any]:
  return {"dataset": dataset, "model": model, "task": TASK, "metrics": metrics,
          "condition": condition, "spec": spec, "num_images": int(num_images)}


def key(model: str, dataset: str, condition: str, num_images: int) -> tuple:
  return (model, dataset, condition, int(num_images))


def read(out: str) -> list[dict]:
  """The records of `out` (none when it has none yet). A line cut short by an interrupted
  run is dropped: that record is simply made again."""
  path = os.path.join(out, RESULTS)
  if not os.path.isfile(path):
    return []
  found = []
  with open(path) as f:
    for line in f:
      try:
        found.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return found


def append(out: str, rec: dict) -> None:
  """Adds one finished record; a line is written whole, then flushed to disk."""
  path = os.path.join(out, RESULTS)
  # A line cut by an interrupted run ends without a newline: start on a fresh one.
  fresh = os.path.isfile(path) and os.path.getsize(path) and not _ends_with_newline(path)
  with open(path, "a") as f:
    f.write(("\n" if fresh else "") + json.dumps(rec) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _ends_with_newline(path: str) -> bool:
  with open(path, "rb") as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"


def _percent(value: float | None) -> str:
  return "–" if value is None else f"{100 * value:.1f}"


def table(records: Sequence[dict], models: Sequence[str], datasets: Sequence[str],
          conditions: Sequence[str]) -> str:
  """FARE's layout: per condition a block, rows `models`, columns `datasets` + average
  (of the datasets a model has all of, else "–"), zero-shot top-1 in %."""
  acc1 = {(r["model"], r["dataset"], r["condition"]): r["metrics"]["acc1"] for r in records}
  blocks = []
  for condition in conditions:
    header = ["model", *datasets, "average"]
    lines = [f"### {condition}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for model in models:
      values = [acc1.get((model, d, condition)) for d in datasets]
      average = None if None in values else float(np.mean(values))
      lines.append("| " + " | ".join([model, *map(_percent, values), _percent(average)]) + " |")
    blocks.append("\n".join(lines))
  return ("Zero-shot top-1 accuracy (%) per condition; attacks on the first --num_images "
          "test images (`num_images` in results.jsonl).\n\n" + "\n\n".join(blocks) + "\n")


def average_curves(records: Iterable[dict], models: Sequence[str], datasets: Sequence[str],
                   clean: str, attacks: dict[str, float]) -> dict[str, list[tuple[float, float]]]:
  """model -> [(eps x 255, average top-1 % over `datasets`)], clean at eps 0; only the
  points where the model has every dataset."""
  acc1 = {(r["model"], r["dataset"], r["condition"]): r["metrics"]["acc1"] for r in records}
  curves = {}
  for model in models:
    points = []
    for condition, eps in [(clean, 0.0), *attacks.items()]:
      values = [acc1.get((model, d, condition)) for d in datasets]
      if None not in values:
        points.append((255 * eps, 100 * float(np.mean(values))))
    curves[model] = points
  return curves


def plot(path: str, curves: dict[str, list[tuple[float, float]]]) -> str:
  """Average robust accuracy against eps, one line per model (matplotlib, Agg)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(6, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for model, points in curves.items():
    if points:
      xs, ys = zip(*points)
      ax.plot(xs, ys, marker="o", label=model)
  ax.set_xlabel("eps (x 1/255, linf)")
  ax.set_ylabel("average zero-shot top-1 (%)")
  ax.set_title("Robust accuracy (APGD-CE + APGD-T)", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path)
  return path

"""The report's plots (rrjax.report): accuracy against severity, label fraction and loss,
like the paper's figures, as 600x400 PNGs."""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any


from rrjax import operators, paper_numbers
from rrjax.report.tables import is_transfer, percent, short_teacher
from rrjax.results import method_name

FIGURE_SIZE = (6.0, 4.0)  # inches; at FIGURE_DPI a PNG is exactly 600 x 400 pixels
FIGURE_DPI = 100
_LOG = logging.getLogger(__name__)


def _train_settings(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
  """workdir -> how its student was trained, for grouping points into lines: its training
  operator, or "same as test" for a run evaluated only at its training operator (so runs
  at different fixed levels join into one curve, as in the paper's Table 1 rows)."""
  tested = collections.defaultdict(set)
  trained = {}
  for row in rows:
    tested[row["workdir"]].add(row["operator"])
    trained[row["workdir"]] = row["train_operator"]
  return {w: "same as test" if tested[w] == {trained[w]} else f"trained {trained[w]}"
          for w in tested}


def _describe_key_part(field: str, value) -> str:
  if field == "method":
    return method_name(value)
  if field == "label_fraction":
    return f"{percent(value)} labels"
  if field == "teacher":
    return short_teacher(value)
  return str(value)


def _legend_labels(keys: Sequence[tuple], fields: Sequence[str]) -> list[str]:
  """Labels naming only the fields that differ between lines (all, when just one line
  and it would otherwise be empty: its method)."""
  varying = [i for i in range(len(fields)) if len({k[i] for k in keys}) > 1]
  if not varying:
    varying = [fields.index("method") if "method" in fields else 0]
  return [", ".join(_describe_key_part(fields[i], k[i]) for i in varying) for k in keys]


def _lines(rows: Sequence[dict[str, Any]], fields: Sequence[str], x_of: Callable
           ) -> dict[tuple, list[tuple[float, float, float]]]:
  """{line key: sorted [(x, mean top-1, sem)]} (the last row wins at a repeated x)."""
  settings = _train_settings(rows)
  points = collections.defaultdict(dict)
  for row in rows:
    x = x_of(row)
    if x is None or row["top1_mean"] is None:
      continue
    key = tuple(settings[row["workdir"]] if f == "train" else row[f] for f in fields)
    points[key][x] = (row["top1_mean"], row["top1_sem"] or 0.0)
  return {k: sorted((x, m, s) for x, (m, s) in v.items()) for k, v in points.items()}


def _save_plot(path: str, lines: dict[tuple, list], fields: Sequence[str], *, xlabel: str,
               title: str, log_x: bool = False,
               extra_points: Sequence[tuple[float, float, str]] = ()) -> str:
  """Writes a FIGURE_SIZE plot at FIGURE_DPI (pyplot-free, so no global backend state)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  keys = list(lines)
  for key, label in zip(keys, _legend_labels(keys, fields)):
    xs, means, sems = zip(*lines[key])
    ax.errorbar(xs, means, yerr=sems, marker="o", markersize=4, capsize=3, label=label)
  for x, y, label in extra_points:
    ax.plot([x], [y], marker="x", markersize=8, linestyle="none", label=label)
  if log_x:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=FIGURE_DPI)
  return path


def plot_severity(rows: Sequence[dict[str, Any]], out_dir: str) -> list[str]:
  """severity_{kind}.png (Figures 4, 5): top-1 vs the test operator's level, one line per
  method and training setting; for each kind with a line of 2+ levels."""
  fields = ("experiment", "dataset", "teacher", "loss", "train", "method", "label_fraction")
  written = []
  for kind, field in operators.SEVERITY_FIELDS.items():
    if kind == "imagenet_c":
      continue  # 19 corruptions share each severity: the ImageNet-C table shows them.
    lines = _lines([r for r in rows if r["kind"] == kind], fields, lambda r: r["level"])
    if any(len(points) > 1 for points in lines.values()):
      written.append(_save_plot(os.path.join(out_dir, f"severity_{kind}.png"), lines, fields,
                                xlabel=f"{kind} {field}", title=f"Accuracy vs {kind} severity"))
  return written


def plot_label_efficiency(rows: Sequence[dict[str, Any]], out_dir: str) -> list[str]:
  """label_efficiency.png (Figure 3): top-1 vs % of labels (log scale), one line per
  probe and setting; written when a probe was fitted on 2+ label fractions."""
  fields = ("experiment", "dataset", "teacher", "loss", "train", "method", "operator")
  probes = [r for r in rows if r["method"].endswith("_probe") and r["label_fraction"] > 0]
  lines = _lines(probes, fields, lambda r: 100 * r["label_fraction"])
  if not any(len(points) > 1 for points in lines.values()):
    return []
  return [_save_plot(os.path.join(out_dir, "label_efficiency.png"), lines, fields,
                     xlabel="labels used (%)", title="Accuracy vs label fraction",
                     log_x=True)]


def plot_loss_ablation(rows: Sequence[dict[str, Any]], out_dir: str) -> list[str]:
  """loss_ablation.png (Figure 6): ours, top-1 vs mask p, one line per loss, with the
  authors' points at p = 0.9; written when 2+ losses were run."""
  fields = ("loss", "experiment", "dataset", "teacher", "train", "label_fraction")
  ours = [r for r in rows if r["method"] == "student_probe" and r["kind"] == "mask"
          and not is_transfer(r)]
  lines = _lines(ours, fields, lambda r: r["level"])
  losses = list(dict.fromkeys(key[0] for key in lines))
  if len(losses) < 2:
    return []
  paper = [(0.9, paper_numbers.LOSS_ABLATION_TOP1[loss], f"paper: {loss}") for loss in losses
           if loss in paper_numbers.LOSS_ABLATION_TOP1]
  return [_save_plot(os.path.join(out_dir, "loss_ablation.png"), lines, fields,
                     xlabel="mask p", title="Loss ablation", extra_points=paper)]

"""The report's tables (rrjax.report): Table 1, Table 2, Table 13, other rows and
agreement, as Markdown."""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any


from rrjax import paper_numbers
from rrjax.results import MISSING, markdown, method_name

AGREEMENT_METHODS = ("agreement", "agreement_initial")
CLASSIFICATION_METRICS = ("top1", "top5", "auc")
# Table 1 rows: (method, label fraction) -> name.
TABLE1_ROWS = {("student_probe", 1.0): "ours 100%", ("student_probe", 0.1): "ours 10%",
               ("baseline", 1.0): "baseline"}
NO_CONTRASTIVE_METHODS = ("teacher_probe", "imagenet_probe")

_LOG = logging.getLogger(__name__)


def is_transfer(row: dict[str, Any]) -> bool:
  """Rows of transfer runs (SPEC E4: frozen students, probes on other data sets)."""
  return "E4" in row["experiment"].replace(" ", "").split(",")


def table_of(row: dict[str, Any]) -> str:
  """Which table shows a row: "table1", "table2", "table13", "imagenet_c", "agreement" or
  "other"."""
  if row["method"] in AGREEMENT_METHODS:
    return "agreement"
  if is_transfer(row):
    return "table2"
  if row["kind"] == "imagenet_c":
    return "imagenet_c"
  matched = row["operator"] == row["train_operator"]
  if matched and row["method"] in NO_CONTRASTIVE_METHODS:
    return "table13"
  if (matched and row["operator"] in paper_numbers.TABLE1_OPERATORS
      and (row["method"], row["label_fraction"]) in TABLE1_ROWS
      and (row["method"] == "baseline" or row["loss"] == "student_teacher")):
    return "table1"
  return "other"


def percent(value: float) -> str:
  return f"{100 * value:.3g}%"


def format_metric(row: dict[str, Any], metric: str) -> str:
  """A flat row's metric as `rrjax.results.format_summary` shows it ("83.02 ± 0.21")."""
  from rrjax.results import format_summary
  return format_summary({"mean": row.get(f"{metric}_mean"), "sem": row.get(f"{metric}_sem")},
                        metric)


def short_teacher(teacher: str) -> str:
  """Hub ids as they are ("openai/clip-vit-base-patch32"), local directories by name."""
  return os.path.basename(teacher.rstrip("/")) if teacher.startswith(("/", ".", "~")) else teacher


def _ordered_operators(rows: Iterable[dict[str, Any]]) -> list[str]:
  """Operators present, the paper's 8 first in the paper's order, then as they appear."""
  present = list(dict.fromkeys(row["operator"] for row in rows))
  paper = [op for op in paper_numbers.TABLE1_OPERATORS if op in present]
  return paper + [op for op in present if op not in paper]


def _pivot(rows: Iterable[dict[str, Any]], row_key: Callable, metric: str = "top1"
           ) -> dict[tuple, dict[str, str]]:
  """{row key: {operator: formatted cell}}, keys in order of appearance. A cell given by
  several rows (the same setting in several workdirs) keeps the last, with a warning."""
  cells: dict[tuple, dict[str, tuple[str, str]]] = collections.defaultdict(dict)
  for row in rows:
    key = row_key(row)
    if row["operator"] in cells[key]:
      _LOG.warning("report: %s at %s appears in %s and %s; the table shows the latter.",
                      key, row["operator"], cells[key][row["operator"]][1], row["workdir"])
    cells[key][row["operator"]] = (format_metric(row, metric), row["workdir"])
  return {k: {op: cell for op, (cell, _) in v.items()} for k, v in cells.items()}


def table1(rows: Sequence[dict[str, Any]]) -> str:
  """Table 1: ours (100%, 10% labels) and the baseline, top-1 under the paper's 8
  distortions (same at train and test), with the authors' numbers below ours."""
  mine = [row for row in rows if table_of(row) == "table1"]
  if not mine:
    return ""
  order = list(TABLE1_ROWS)
  mine.sort(key=lambda r: order.index((r["method"], r["label_fraction"])))
  cells = _pivot(mine, lambda r: (TABLE1_ROWS[r["method"], r["label_fraction"]], r["dataset"],
                                  short_teacher(r["teacher"])))
  ops = paper_numbers.TABLE1_OPERATORS
  body = [[*key, *(cells[key].get(op, MISSING) for op in ops)] for key in cells]
  for fraction in (1.0, 0.1):
    paper = {e["operator"]: e["top1"] for e in paper_numbers.REFERENCE
             if e["method"] == "student_probe" and e["label_fraction"] == fraction
             and e["train_operator"] == e["operator"] and e["dataset"] == "imagenet100"}
    body.append([f"paper: {TABLE1_ROWS['student_probe', fraction]}", "ImageNet-100",
                 paper_numbers.PAPER_TEACHER, *(f"{paper[op]:.1f}" for op in ops)])
  return ("### Table 1: top-1 (%), same distortion at train and test\n\n"
          + markdown(["method", "dataset", "teacher", *ops], body))


def table2(rows: Sequence[dict[str, Any]]) -> str:
  """Table 2: transfer. One row per (data set, method, labels, metric), columns the test
  distortions; the authors' numbers where a data set and distortion match theirs."""
  mine = [row for row in rows if table_of(row) == "table2"]
  if not mine:
    return ""
  ops = _ordered_operators(mine)
  body = []
  for metric, name in (("top1", "top-1 (%)"), ("auc", "AUC")):
    with_metric = [row for row in mine if row[f"{metric}_mean"] is not None]
    cells = _pivot(with_metric, lambda r: (r["dataset"], method_name(r["method"]),
                                           percent(r["label_fraction"]), name), metric)
    body += [[*key, *(cells[key].get(op, MISSING) for op in ops)] for key in cells]
  families = {paper_numbers.dataset_family(row["dataset"]) for row in mine}
  for entry in paper_numbers.REFERENCE:
    if entry["dataset"] in families - {"imagenet100"} and entry["operator"] in ops:
      for metric, name, fmt in (("top1", "top-1 (%)", ".1f"), ("auc", "AUC", ".3f")):
        if metric in entry:
          body.append([f"paper: {entry['dataset']}", "ours", percent(entry["label_fraction"]),
                       name, *(format(entry[metric], fmt) if op == entry["operator"] else MISSING
                               for op in ops)])
  return ("### Table 2: transfer, same distortion at train and test\n\n"
          + markdown(["dataset", "method", "labels", "metric", *ops], body))


def table13(rows: Sequence[dict[str, Any]]) -> str:
  """Table 13: no contrastive step. Probes on the teacher's (or an ImageNet network's)
  embeddings of distorted images next to ours in the same setting."""
  baselines = [row for row in rows if table_of(row) == "table13"]
  if not baselines:
    return ""
  ops = _ordered_operators(baselines)
  settings = {(row["dataset"], row["label_fraction"]) for row in baselines}
  ours = [row for row in rows if row["method"] == "student_probe" and not is_transfer(row)
          and row["loss"] == "student_teacher" and row["operator"] == row["train_operator"]
          and row["operator"] in ops and (row["dataset"], row["label_fraction"]) in settings]
  cells = _pivot(baselines + ours, lambda r: (method_name(r["method"]),
                                              percent(r["label_fraction"]), r["dataset"],
                                              short_teacher(r["teacher"])))
  body = [[*key, *(cells[key].get(op, MISSING) for op in ops)] for key in cells]
  return ("### Table 13: no contrastive step, top-1 (%)\n\n"
          + markdown(["method", "labels", "dataset", "teacher", *ops], body))


def other_table(rows: Sequence[dict[str, Any]]) -> str:
  """Every row no paper-shaped table shows, with the authors' top-1 where it matches."""
  mine = [row for row in rows if table_of(row) == "other"]
  if not mine:
    return ""
  body = []
  for row in mine:
    paper = paper_numbers.lookup(**{k: row[k] for k in ("method", "label_fraction", "loss",
                                                        "train_operator", "operator",
                                                        "dataset")})
    body.append([row["workdir"], row["experiment"], row["dataset"],
                 short_teacher(row["teacher"]), row["loss"],
                 row["train_operator"], method_name(row["method"]),
                 percent(row["label_fraction"]), row["operator"],
                 *(format_metric(row, m) for m in CLASSIFICATION_METRICS),
                 f"{paper['top1']:.1f}" if paper else MISSING])
  return ("### Other results\n\n" + markdown(
      ["workdir", "experiment", "dataset", "teacher", "loss", "train operator", "method",
       "labels", "test operator", "top-1 (%)", "top-5 (%)", "AUC", "paper top-1 (%)"], body))


def agreement_table(rows: Sequence[dict[str, Any]]) -> str:
  """Student-teacher agreement on held-out views: trained student vs its initialisation."""
  cells = collections.defaultdict(dict)
  for row in rows:
    if table_of(row) == "agreement":
      key = (row["workdir"], row["train_operator"], row["loss"], row["operator"])
      cells[key][row["method"]] = row
  body = [[*key, *(f"{found[m][f'{metric}_mean']:.3f}" if m in found else MISSING
                   for m in AGREEMENT_METHODS for metric in ("cosine", "retrieval_at_1"))]
          for key, found in cells.items()]
  if not body:
    return ""
  return ("### Student-teacher agreement\n\n" + markdown(
      ["workdir", "train operator", "loss", "test operator", "cosine (trained)",
       "retrieval@1 (trained)", "cosine (initial)", "retrieval@1 (initial)"], body))

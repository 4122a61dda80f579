"""Reports over many runs: the paper's tables and figures from workdirs' results.json.

  python -m rrjax.report WORKDIR [WORKDIR ...] [--out DIR] [--alexnet_errors FILE.json]

Reads `WORKDIR/results.json` (written by the eval stage; rows in `rrjax.results`' schema)
of every workdir and writes into DIR (default: the current directory):

  results.csv   one row per (workdir, result row): setting, evaluator, method, labels,
                solver, test operator, and each metric's mean, std and sem
  report.md     the non-empty tables among
                  Table 1   ours (100%, 10% labels) and the baseline under the paper's 8
                            distortions, same distortion at train and test
                  Table 2   transfer (experiment E4): one row per data set and metric
                  Table 13  no contrastive step: probes on the teacher's (or an ImageNet
                            network's) embeddings of distorted images next to ours
                  ImageNet-C  rows whose test operator is an `imagenet_c` corruption (E12,
                            E12b): per method and workdir, top-1 per corruption averaged
                            over its severities, the mean over corruptions and, given
                            AlexNet's errors (--alexnet_errors), mCE (`imagenet_c_table`);
                            per-severity numbers are in results.csv
                  Other     every row no table above holds
                  Agreement student-teacher cosine and retrieval@1 (agreement rows)
                with the authors' numbers (SPEC §7, `rrjax.paper_numbers`) where the
                setting matches
  *.png         600x400 plots like the paper's figures, written only when they have data:
                severity_{mask,noise,blur}.png (Figures 4, 5: accuracy vs the operator's
                level), label_efficiency.png (Figure 3), loss_ablation.png (Figure 6)
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rrjax import imagenet_c, operators, paper_numbers
from rrjax.results import METRICS, MISSING, markdown, method_name

SETTING_FIELDS = ("experiment", "dataset", "teacher", "student", "loss", "train_operator",
                  "probe_features", "repeats")
CSV_FIELDS = ("workdir", *SETTING_FIELDS, "evaluator", "method", "label_fraction", "solver",
              "operator", "kind", "level",
              *(f"{m}_{s}" for m in METRICS for s in ("mean", "std", "sem")), "spec")
_NUMERIC_FIELDS = {"repeats", "label_fraction", "level",
                   *(f"{m}_{s}" for m in METRICS for s in ("mean", "std", "sem"))}
AGREEMENT_METHODS = ("agreement", "agreement_initial")
CLASSIFICATION_METRICS = ("top1", "top5", "auc")
# Table 1 rows: (method, label fraction) -> name.
TABLE1_ROWS = {("student_probe", 1.0): "ours 100%", ("student_probe", 0.1): "ours 10%",
               ("baseline", 1.0): "baseline"}
NO_CONTRASTIVE_METHODS = ("teacher_probe", "imagenet_probe")
FIGURE_SIZE = (6.0, 4.0)  # inches; at FIGURE_DPI a PNG is exactly 600 x 400 pixels
FIGURE_DPI = 100
_LOG = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- reading


def load_results(workdir: str) -> dict[str, Any]:
  """`WORKDIR/results.json`, checked for the keys reports read."""
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{path} does not exist: workdir {workdir!r} has no evaluation results. Run its eval "
        f"stage first (python -m rrjax.main --config=... --workdir={workdir}, with 'eval' in "
        "config.stages).")
  with open(path) as f:
    report = json.load(f)
  missing = [k for k in ("experiment", "setting", "results") if k not in report]
  missing += [f"setting.{k}" for k in SETTING_FIELDS[1:] if k not in report.get("setting", {})]
  for i, row in enumerate(report.get("results", [])):
    missing += [f"results[{i}].{k}" for k in ("evaluator", "method", "label_fraction",
                                               "operator", "spec") if k not in row]
    if not any(m in row for m in METRICS):
      missing.append(f"results[{i}]: any of {', '.join(METRICS)}")
  if missing:
    raise ValueError(f"{path} lacks {', '.join(missing)}; it was not written by rrjax's eval "
                     "stage (or by an older version): re-run the eval stage.")
  return report


def flatten(workdir: str, report: dict[str, Any]) -> list[dict[str, Any]]:
  """One flat row (the CSV columns) per result row of a results.json."""
  setting = {"experiment": report["experiment"],
             **{k: report["setting"][k] for k in SETTING_FIELDS[1:]}}
  rows = []
  for result in report["results"]:
    row = {"workdir": workdir, **setting, "evaluator": result["evaluator"],
           "method": result["method"], "label_fraction": float(result["label_fraction"]),
           "solver": result.get("solver") or "", "operator": result["operator"],
           "kind": result["spec"]["kind"], "level": operators.severity(result["spec"])}
    for metric in METRICS:
      summary = result.get(metric) or {}
      for stat in ("mean", "std", "sem"):
        row[f"{metric}_{stat}"] = summary.get(stat)
    row["spec"] = json.dumps(result["spec"], sort_keys=True)
    rows.append(row)
  return rows


def collect(workdirs: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, dict]]:
  """All workdirs' rows, and their results.json by workdir. Every workdir is checked
  before any is read further, so a missing one fails fast."""
  if not workdirs:
    raise ValueError("no workdirs given: pass one or more run directories with results.json.")
  reports = {workdir: load_results(workdir) for workdir in workdirs}
  rows = [row for workdir, report in reports.items() for row in flatten(workdir, report)]
  return rows, reports


# ---------------------------------------------------------------------------- CSV


def write_csv(rows: Iterable[dict[str, Any]], path: str) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_FIELDS})


def read_csv(path: str) -> list[dict[str, Any]]:
  """A results.csv back as rows: numbers as float (repeats as int), empty cells as None."""
  def parse(field: str, text: str):
    if text == "" and field in _NUMERIC_FIELDS:
      return None
    if field == "repeats":
      return int(text)
    return float(text) if field in _NUMERIC_FIELDS else text

  with open(path, newline="") as f:
    return [{k: parse(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


# ---------------------------------------------------------------------------- tables


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


def _percent(value: float) -> str:
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
                                           _percent(r["label_fraction"]), name), metric)
    body += [[*key, *(cells[key].get(op, MISSING) for op in ops)] for key in cells]
  families = {paper_numbers.dataset_family(row["dataset"]) for row in mine}
  for entry in paper_numbers.REFERENCE:
    if entry["dataset"] in families - {"imagenet100"} and entry["operator"] in ops:
      for metric, name, fmt in (("top1", "top-1 (%)", ".1f"), ("auc", "AUC", ".3f")):
        if metric in entry:
          body.append([f"paper: {entry['dataset']}", "ours", _percent(entry["label_fraction"]),
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
                                              _percent(r["label_fraction"]), r["dataset"],
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
                 _percent(row["label_fraction"]), row["operator"],
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
           _percent(row["label_fraction"]))
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


# ---------------------------------------------------------------------------- plots


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
    return f"{_percent(value)} labels"
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


# ---------------------------------------------------------------------------- main


def write_report(workdirs: Sequence[str], out_dir: str = ".",
                 alexnet_errors: str | None = None) -> list[str]:
  """Writes results.csv, report.md and the plots that have data; returns their paths.
  `alexnet_errors`: a JSON file of AlexNet's ImageNet-C errors (`load_alexnet_errors`),
  for mCE."""
  errors = load_alexnet_errors(alexnet_errors) if alexnet_errors else None
  rows, _ = collect(workdirs)
  os.makedirs(out_dir, exist_ok=True)
  csv_path = os.path.join(out_dir, "results.csv")
  write_csv(rows, csv_path)
  tables = [t for t in (table1(rows), table2(rows), table13(rows),
                        imagenet_c_table(rows, errors), other_table(rows),
                        agreement_table(rows)) if t]
  md_path = os.path.join(out_dir, "report.md")
  with open(md_path, "w") as f:
    f.write(f"# rrjax report\n\nRuns: {', '.join(workdirs)}\n\n" + "\n".join(tables))
  plots = (plot_severity(rows, out_dir) + plot_label_efficiency(rows, out_dir)
           + plot_loss_ablation(rows, out_dir))
  return [csv_path, md_path, *plots]


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m rrjax.report", description=__doc__.split(
      "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                      help="run directories holding results.json")
  parser.add_argument("--out", default=".", help="output directory (default: current)")
  parser.add_argument("--alexnet_errors", metavar="FILE.json",
                      help="AlexNet's top-1 errors per ImageNet-C corruption, for mCE: "
                           "{corruption: [e1, ..., e5]} as fractions in [0, 1] (not "
                           "published for ImageNet-100: measure them)")
  args = parser.parse_args(argv)
  try:
    written = write_report(args.workdirs, args.out, args.alexnet_errors)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  print("\n".join(written))


if __name__ == "__main__":
  main()

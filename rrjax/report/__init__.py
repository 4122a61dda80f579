"""Reports over many runs: the paper's tables and figures from workdirs' results.json.

  python -m rrjax.report WORKDIR [WORKDIR ...] [--out DIR] [--alexnet_errors FILE.json]

Reads `WORKDIR/results.json` (written by the eval stage; rows in `rrjax.results`' schema)
of every workdir and writes into DIR (default: the current directory):

  results.csv   one row per (workdir, result row): setting, evaluator, method, labels,
                solver (and an "lbfgs" probe's chosen l2 and held-out top-1), test
                operator, and each metric's mean, std and sem
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

Here: reading results.json, the CSV, `write_report` and the command line; the tables are in
`tables`, the ImageNet-C table in `corruption_table`, the figures in `plots`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any


from rrjax import operators
from rrjax.report.corruption_table import imagenet_c_table, load_alexnet_errors
from rrjax.report.plots import plot_label_efficiency, plot_loss_ablation, plot_severity
# format_metric and short_teacher: re-exported for users of rrjax.report.
from rrjax.report.tables import (agreement_table, format_metric, other_table, short_teacher,
                                 table1, table2, table13)
from rrjax.results import METRICS

SETTING_FIELDS = ("experiment", "dataset", "teacher", "student", "loss", "train_operator",
                  "probe_features", "repeats")
CSV_FIELDS = ("workdir", *SETTING_FIELDS, "evaluator", "method", "label_fraction", "solver",
              "l2", "holdout_top1", "operator", "kind", "level",
              *(f"{m}_{s}" for m in METRICS for s in ("mean", "std", "sem")), "spec")
_NUMERIC_FIELDS = {"repeats", "label_fraction", "level", "l2", "holdout_top1",
                   *(f"{m}_{s}" for m in METRICS for s in ("mean", "std", "sem"))}


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
           "solver": result.get("solver") or "", "l2": result.get("l2"),
           "holdout_top1": result.get("holdout_top1"), "operator": result["operator"],
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

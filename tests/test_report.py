"""Reports: tables, CSV, plots and errors on hand-written and real (smoke) results files."""

import csv
import json
import os
import re
import shutil

import pytest
from PIL import Image

from rrjax import operators
from rrjax import paper_numbers
from rrjax import report, results

DATA = os.path.join(os.path.dirname(__file__), "data")
# Real results.json files of smoke runs (configs/mask.py:smoke): p=0.9; p=0.9 tested at
# levels (0.5, 0.9) with probes on 100% and 25% of labels; p=0.9 with the mse loss.
SMOKE_FILES = ("results_smoke.json", "results_smoke_levels.json", "results_smoke_mse.json")
PAPER_LABELS = ("mask p=0.5", "mask p=0.75", "mask p=0.9", "noise sigma=0.1",
                "noise sigma=0.3", "noise sigma=0.5", "blur k=21 sigma=5", "blur k=37 sigma=9")
MASK_RANGE = {"kind": "mask", "p": [0.5, 0.95]}  # as JSON stores a range


def _smoke(name="results_smoke.json") -> dict:
  with open(os.path.join(DATA, name)) as f:
    return json.load(f)


def _row(method, fraction, spec, top1, sem=0.5, evaluator="classification", **metrics) -> dict:
  """A results row in the eval stage's schema (`rrjax.results.row`)."""
  summaries = {name: {"mean": mean, "std": 0.0, "sem": 0.0} for name, mean in metrics.items()}
  if top1 is not None:
    summaries["top1"] = {"mean": top1, "std": 2 * sem, "sem": sem}
  return results.row(evaluator=evaluator, type=evaluator, method=method, spec=spec,
                     metrics=summaries, describe=operators.describe, label_fraction=fraction,
                     solver="adam" if method.endswith("_probe") else None)


def _workdir(root, name, rows, *, train_spec, experiment="E1,E2,E3", **setting) -> str:
  """A workdir holding a results.json shaped like the smoke run's, with these rows."""
  smoke = _smoke()
  smoke["experiment"] = experiment
  smoke["setting"].update(train_operator=operators.describe(train_spec),
                          train_spec=train_spec, **setting)
  smoke["results"] = rows
  path = os.path.join(root, name)
  os.makedirs(path)
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump(smoke, f)
  return path


def _table(markdown: str, title: str) -> list[dict[str, str]]:
  """The rows of the Markdown table under a "### {title}..." heading, as dicts."""
  section = markdown.split(f"### {title}", 1)[1].split("###", 1)[0]
  lines = [line for line in section.splitlines() if line.startswith("|")]
  split = lambda line: [cell.strip() for cell in line.strip("|").split("|")]
  header = split(lines[0])
  return [dict(zip(header, split(line))) for line in lines[2:]]


def _find(rows, **cells) -> dict[str, str]:
  matches = [r for r in rows if all(r[k] == v for k, v in cells.items())]
  assert len(matches) == 1, (cells, rows)
  return matches[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Hand-written workdirs covering every table and plot."""
  root = str(tmp_path_factory.mktemp("runs"))
  mask90, noise3 = {"kind": "mask", "p": 0.9}, {"kind": "noise", "sigma": 0.3}
  blur = {"kind": "blur", "kernel_size": 21, "sigma": 5.0}
  return {
      "mask90": _workdir(root, "mask90", [
          _row("student_probe", 1.0, mask90, 81.25, 0.25),
          _row("student_probe", 0.1, mask90, 77.5, 0.125),
          _row("student_probe", 0.01, mask90, 60.0),
          _row("baseline", 1.0, mask90, 70.0, 1.0, top5=90.0),
          _row("zero_shot", 0.0, mask90, 50.0, evaluator="zero_shot"),
          _row("agreement", 0.0, mask90, None, evaluator="agreement", cosine=0.8,
               retrieval_at_1=0.5),
          _row("agreement_initial", 0.0, mask90, None, evaluator="agreement", cosine=0.1,
               retrieval_at_1=0.0)], train_spec=mask90),
      "mask50": _workdir(root, "mask50", [
          _row("student_probe", 1.0, {"kind": "mask", "p": 0.5}, 84.0)],
          train_spec={"kind": "mask", "p": 0.5}),
      "noise": _workdir(root, "noise", [_row("student_probe", 1.0, noise3, 79.0)],
                        train_spec=noise3),
      "blur_mse": _workdir(root, "blur_mse", [_row("student_probe", 1.0, blur, 75.0)],
                           train_spec=blur, loss="mse"),
      "teacher_noise": _workdir(root, "teacher_noise", [_row("teacher_probe", 1.0, noise3, 65.0)],
                                train_spec=noise3, experiment="E11", probe_features="teacher"),
      "range_both": _workdir(root, "range_both", [
          _row("student_probe", 1.0, {"kind": "mask", "p": p}, top1)
          for p, top1 in ((0.9, 82.0), (0.95, 78.0), (0.99, 60.0))],
          train_spec=MASK_RANGE, experiment="E6", loss="student_both"),
      "range_mse": _workdir(root, "range_mse", [
          _row("student_probe", 1.0, {"kind": "mask", "p": p}, top1)
          for p, top1 in ((0.9, 76.0), (0.99, 50.0))],
          train_spec=MASK_RANGE, experiment="E6", loss="mse"),
      "covid": _workdir(root, "covid", [
          _row("student_probe", 1.0, MASK_RANGE, 83.5, 0.5, auc=0.9134)],
          train_spec=MASK_RANGE, experiment="E4", dataset="covid_xray:test"),
      "cifar": _workdir(root, "cifar", [_row("student_probe", 1.0, mask90, 88.0)],
                        train_spec=mask90, experiment="E4", dataset="cifar10:test"),
  }


@pytest.fixture(scope="module")
def written(runs, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("report"))
  paths = report.write_report(list(runs.values()), out)
  with open(os.path.join(out, "report.md")) as f:
    return {"out": out, "paths": paths, "markdown": f.read()}


def test_paper_numbers_match_spec():
  assert paper_numbers.TABLE1_OPERATORS == PAPER_LABELS
  spec_rows = {1.0: "85.9 84.0 83.0 84.5 81.3 76.2 83.2 77.8",
               0.1: "82.2 80.4 79.9 81.0 78.2 73.1 80.9 74.8"}
  for fraction, numbers in spec_rows.items():
    for label, top1 in zip(PAPER_LABELS, numbers.split()):
      entry = paper_numbers.lookup(method="student_probe", label_fraction=fraction,
                                   loss="student_teacher", train_operator=label,
                                   operator=label, dataset="imagenet2012:validation")
      assert entry["top1"] == float(top1)
  ablation = {"student_teacher": 81.9, "student_student": 81.9, "student_both": 82.5, "mse": 77.4}
  for loss, top1 in ablation.items():
    assert paper_numbers.lookup(method="student_probe", label_fraction=1.0, loss=loss,
                                train_operator="mask p~U(0.5,0.95)", operator="mask p=0.9",
                                dataset="smoke:val")["top1"] == top1
  covid = paper_numbers.lookup(method="student_probe", label_fraction=1.0,
                               loss="student_teacher", train_operator="mask p~U(0.5,0.95)",
                               operator="mask p~U(0.5,0.95)", dataset="covid_xray:test")
  assert (covid["top1"], covid["auc"]) == (84.0, 0.918)
  assert paper_numbers.lookup(method="zero_shot", label_fraction=0.0, loss="student_teacher",
                              train_operator="mask p=0.9", operator="mask p=0.9",
                              dataset="x")["top1"] == 62.3
  # Another loss, data set or training operator is another setting.
  assert paper_numbers.lookup(method="student_probe", label_fraction=1.0, loss="mse",
                              train_operator="mask p=0.9", operator="mask p=0.9",
                              dataset="x") is None
  assert paper_numbers.lookup(method="student_probe", label_fraction=1.0,
                              loss="student_teacher", train_operator="mask p=0.9",
                              operator="mask p=0.9", dataset="cifar10:test") is None


@pytest.mark.parametrize("dataset,family", [
    ("covid_xray:test", "covid"), ("cifar100:test", "cifar100"), ("CIFAR-10", "cifar10"),
    ("stl10:test", "stl10"), ("imagenet100b:val", "imagenet100b"),
    ("imagenet2012:validation", "imagenet100"), ("smoke:val", "imagenet100")])
def test_dataset_family(dataset, family):
  assert paper_numbers.dataset_family(dataset) == family


def test_short_teacher_and_format_metric():
  assert report.short_teacher("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
  assert report.short_teacher("/root/.cache/rrjax/smoke/tiny_clip/") == "tiny_clip"
  assert report.format_metric({"auc_mean": 0.91834, "auc_sem": 0.0021}, "auc") == (
      "0.918 ± 0.002")
  assert report.format_metric({"top5_mean": None, "top5_sem": None}, "top5") == "–"


def test_flatten():
  smoke = _smoke()
  rows = report.flatten("w", smoke)
  assert len(rows) == len(smoke["results"])
  for row, result in zip(rows, smoke["results"]):
    assert row["evaluator"] == result["evaluator"] and row["method"] == result["method"]
    for metric in results.METRICS:
      assert row[f"{metric}_mean"] == (result.get(metric) or {}).get("mean")
    assert row["top5_mean"] is None and row["auc_mean"] is None  # 4 smoke classes
    assert row["level"] == operators.severity(result["spec"])
    assert row["train_operator"] == smoke["setting"]["train_operator"]
    assert json.loads(row["spec"]) == result["spec"]


def test_table1(written):
  rows = _table(written["markdown"], "Table 1")
  assert list(rows[0])[3:] == list(PAPER_LABELS)
  ours = _find(rows, method="ours 100%")
  assert ours["mask p=0.9"] == "81.25 ± 0.25"
  assert ours["mask p=0.5"] == "84.00 ± 0.50"
  assert ours["noise sigma=0.3"] == "79.00 ± 0.50"
  assert ours["mask p=0.75"] == "–"
  assert ours["blur k=21 sigma=5"] == "–"  # trained with mse: not the paper's method
  assert ours["dataset"] == "smoke:val" and ours["teacher"] == "tiny_clip"
  ours10 = _find(rows, method="ours 10%")
  assert ours10["mask p=0.9"] == "77.50 ± 0.12"
  assert [ours10[label] for label in PAPER_LABELS].count("–") == 7
  assert _find(rows, method="baseline")["mask p=0.9"] == "70.00 ± 1.00"
  paper100, paper10 = _find(rows, method="paper: ours 100%"), _find(rows, method="paper: ours 10%")
  assert " ".join(paper100[label] for label in PAPER_LABELS) == (
      "85.9 84.0 83.0 84.5 81.3 76.2 83.2 77.8")
  assert " ".join(paper10[label] for label in PAPER_LABELS) == (
      "82.2 80.4 79.9 81.0 78.2 73.1 80.9 74.8")
  assert len(rows) == 5  # transfer, teacher-probe and other rows are elsewhere


def test_table2(written):
  rows = _table(written["markdown"], "Table 2")
  assert list(rows[0])[4:] == ["mask p=0.9", "mask p~U(0.5,0.95)"]
  covid_top1 = _find(rows, dataset="covid_xray:test", metric="top-1 (%)")
  assert covid_top1["mask p~U(0.5,0.95)"] == "83.50 ± 0.50"
  assert covid_top1["mask p=0.9"] == "–"
  assert _find(rows, dataset="covid_xray:test", metric="AUC")["mask p~U(0.5,0.95)"] == (
      "0.913 ± 0.000")
  assert _find(rows, dataset="cifar10:test")["mask p=0.9"] == "88.00 ± 0.50"
  assert _find(rows, dataset="paper: covid", metric="top-1 (%)")["mask p~U(0.5,0.95)"] == "84.0"
  assert _find(rows, dataset="paper: covid", metric="AUC")["mask p~U(0.5,0.95)"] == "0.918"
  assert len(rows) == 5


def test_table13(written):
  rows = _table(written["markdown"], "Table 13")
  assert list(rows[0])[4:] == ["noise sigma=0.3"]
  assert _find(rows, method="teacher probe")["noise sigma=0.3"] == "65.00 ± 0.50"
  assert _find(rows, method="ours")["noise sigma=0.3"] == "79.00 ± 0.50"
  assert len(rows) == 2


def test_other_table(written):
  rows = _table(written["markdown"], "Other results")
  zero_shot = _find(rows, method="zero-shot (student)")
  assert (zero_shot["top-1 (%)"], zero_shot["paper top-1 (%)"]) == ("50.00 ± 0.50", "62.3")
  both90 = _find(rows, loss="student_both", **{"test operator": "mask p=0.9"})
  assert (both90["top-1 (%)"], both90["paper top-1 (%)"]) == ("82.00 ± 0.50", "82.5")
  assert _find(rows, loss="mse", **{"test operator": "mask p=0.9"})["paper top-1 (%)"] == "77.4"
  assert _find(rows, loss="student_both", **{"test operator": "mask p=0.99"})[
      "paper top-1 (%)"] == "–"
  assert _find(rows, method="ours", labels="1%")["top-1 (%)"] == "60.00 ± 0.50"
  assert _find(rows, loss="mse", **{"test operator": "blur k=21 sigma=5"})["labels"] == "100%"
  assert _find(rows, method="ours", labels="1%")["top-5 (%)"] == "–"
  assert len(rows) == 8


def test_agreement_table(written):
  rows = _table(written["markdown"], "Student-teacher agreement")
  assert len(rows) == 1
  assert (rows[0]["cosine (trained)"], rows[0]["retrieval@1 (initial)"]) == ("0.800", "0.000")


def test_csv_round_trip(runs, written):
  rows, _ = report.collect(list(runs.values()))
  back = report.read_csv(os.path.join(written["out"], "results.csv"))
  assert back == rows
  with open(os.path.join(written["out"], "results.csv"), newline="") as f:
    header = next(csv.reader(f))
  assert {"experiment", "dataset", "teacher", "loss", "train_operator", "method",
          "label_fraction", "operator", "top1_mean", "top1_sem", "top5_mean",
          "auc_mean"} <= set(header)
  baseline = _find(back, method="baseline")
  assert (baseline["top1_mean"], baseline["top5_mean"], baseline["auc_mean"]) == (70.0, 90.0, None)


def test_csv_carries_the_lbfgs_probes_selection(tmp_path):
  mask = {"kind": "mask", "p": 0.9}
  lbfgs = results.row(evaluator="classification", type="classification", method="student_probe",
                      spec=mask, metrics={"top1": {"mean": 55.0, "std": 1.0, "sem": 0.5}},
                      describe=operators.describe, label_fraction=1.0, solver="lbfgs",
                      selection={"l2": 3.2e-4, "holdout_accuracy": 0.625})
  workdir = _workdir(str(tmp_path), "lbfgs", [lbfgs, _row("student_probe", 1.0, mask, 50.0)],
                     train_spec=mask)
  rows, _ = report.collect([workdir])
  report.write_csv(rows, str(tmp_path / "results.csv"))
  back = report.read_csv(str(tmp_path / "results.csv"))
  assert [(r["solver"], r["l2"], r["holdout_top1"]) for r in back] == [
      ("lbfgs", 3.2e-4, 62.5), ("adam", None, None)]


def test_plots_are_pngs_of_the_fixed_size(written):
  names = sorted(os.path.basename(p) for p in written["paths"] if p.endswith(".png"))
  # mask: several levels (range runs, Table 1 runs); noise and blur have one level each.
  assert names == ["label_efficiency.png", "loss_ablation.png", "severity_mask.png"]
  for name in names:
    with Image.open(os.path.join(written["out"], name)) as image:
      assert image.format == "PNG"
      assert image.size == (600, 400)
  assert sorted(os.listdir(written["out"])) == sorted(names + ["report.md", "results.csv"])


def test_lines_and_legend_labels(runs):
  rows, _ = report.collect([runs["mask90"], runs["mask50"], runs["range_both"]])
  fields = ("loss", "train", "method", "label_fraction")
  ours = [r for r in rows if r["method"] == "student_probe" and r["label_fraction"] == 1.0]
  lines = report.plots._lines(ours, fields, lambda r: r["level"])
  # The fixed-level runs join into one curve; the range run is its own.
  assert lines == {
      ("student_teacher", "same as test", "student_probe", 1.0): [(0.5, 84.0, 0.5),
                                                                  (0.9, 81.25, 0.25)],
      ("student_both", "trained mask p~U(0.5,0.95)", "student_probe", 1.0): [
          (0.9, 82.0, 0.5), (0.95, 78.0, 0.5), (0.99, 60.0, 0.5)]}
  assert report.plots._legend_labels(list(lines), fields) == [
      "student_teacher, same as test", "student_both, trained mask p~U(0.5,0.95)"]
  assert report.plots._legend_labels([("a", "student_probe", 0.1)],
                               ("loss", "method", "label_fraction")) == ["ours"]


def test_no_plots_without_curves(tmp_path):
  workdir = _workdir(str(tmp_path), "one", _smoke()["results"],
                     train_spec={"kind": "mask", "p": 0.9})
  paths = report.write_report([workdir], str(tmp_path / "out"))
  assert [os.path.basename(p) for p in paths] == ["results.csv", "report.md"]


def test_missing_results_file(tmp_path, runs, capsys):
  empty = str(tmp_path / "not_evaluated")
  os.makedirs(empty)
  with pytest.raises(FileNotFoundError, match="not_evaluated/results.json.*eval stage"):
    report.collect([runs["mask90"], empty])
  out = str(tmp_path / "out")
  with pytest.raises(SystemExit, match="not_evaluated.*eval stage"):
    report.main([runs["mask90"], empty, "--out", out])
  assert not os.path.exists(out)  # checked before anything is written


def test_malformed_results_file(tmp_path):
  results = _smoke()
  del results["setting"]["loss"]
  del results["results"][0]["spec"]
  os.makedirs(tmp_path / "bad")
  with open(tmp_path / "bad" / "results.json", "w") as f:
    json.dump(results, f)
  with pytest.raises(ValueError, match=r"setting.loss, results\[0\].spec"):
    report.load_results(str(tmp_path / "bad"))


def test_real_smoke_results(tmp_path, capsys, caplog):
  """The CLI on results.json files written by real smoke runs of configs/mask.py."""
  workdirs = []
  for name in SMOKE_FILES:
    workdirs.append(str(tmp_path / name.removesuffix(".json")))
    os.makedirs(workdirs[-1])
    shutil.copy(os.path.join(DATA, name), os.path.join(workdirs[-1], "results.json"))
  out = str(tmp_path / "out")
  report.main([*workdirs, "--out", out])
  assert capsys.readouterr().out.split() == [
      os.path.join(out, name) for name in ("results.csv", "report.md", "severity_mask.png",
                                           "label_efficiency.png", "loss_ablation.png")]
  # Both p=0.9 runs give "ours 100%" at p=0.9 (same as trained); the later one is shown.
  ours = next(r for r in _smoke("results_smoke_levels.json")["results"]
              if (r["method"], r["label_fraction"], r["operator"]) == (
                  "student_probe", 1.0, "mask p=0.9"))
  with open(os.path.join(out, "report.md")) as f:
    markdown = f.read()
  table1 = _table(markdown, "Table 1")
  assert _find(table1, method="ours 100%", teacher="tiny_clip")["mask p=0.9"].startswith(
      f"{ours['top1']['mean']:.2f} ± ")
  assert _find(table1, method="paper: ours 100%")["mask p=0.9"] == "83.0"
  assert "the table shows the latter" in caplog.text
  csv_rows = report.read_csv(os.path.join(out, "results.csv"))
  assert len(csv_rows) == sum(len(_smoke(name)["results"]) for name in SMOKE_FILES)
  for name in ("severity_mask.png", "label_efficiency.png", "loss_ablation.png"):
    with Image.open(os.path.join(out, name)) as image:
      assert (image.format, image.size) == ("PNG", (600, 400))


def test_results_rows_and_their_markdown():
  mask = {"kind": "mask", "p": 0.9}
  rows = [_row("student_probe", 1.0, mask, 80.0, top5=95.0),
          _row("nlm+clean_teacher_probe", 1.0, mask, 40.0, evaluator="restoration"),
          _row("agreement", 0.0, mask, None, evaluator="agreement", cosine=0.75)]
  assert rows[0]["solver"] == "adam" and rows[2]["solver"] is None
  text = results.results_markdown(rows)
  assert text.count("### ") == 3
  assert "| ours | 1 | adam | mask p=0.9 | 80.00 ± 0.50 | 95.00 ± 0.00 |" in text
  assert "| nlm + clean-teacher probe | 1 | adam | mask p=0.9 | 40.00 ± 0.50 |" in text
  assert "| student vs teacher | 0 | – | mask p=0.9 | 0.750 ± 0.000 |" in text
  with pytest.raises(ValueError, match="accuracy"):
    results.row(evaluator="x", type="x", method="m", spec=mask, describe=operators.describe,
                metrics={"accuracy": {"mean": 1.0}})


def _corrupted(corruption, severity) -> dict:
  return {"kind": "imagenet_c", "corruption": corruption, "severity": severity}


@pytest.fixture(scope="module")
def imagenet_c_runs(tmp_path_factory):
  """A run tested on gaussian_noise at all 5 severities, fog at 3 of them and saturate (an
  extra corruption) at all 5; and a second run tested on fog alone."""
  root = str(tmp_path_factory.mktemp("imagenet_c"))
  noise = {"kind": "noise", "sigma": [0.1, 0.3]}
  rows = [_row("student_probe", 1.0, _corrupted("gaussian_noise", s), 90.0 - 10 * s)
          for s in range(1, 6)]
  rows += [_row("zero_shot", 0.0, _corrupted("gaussian_noise", s), 50.0, evaluator="zero_shot")
           for s in range(1, 6)]
  rows += [_row("student_probe", 1.0, _corrupted("fog", s), 70.0 + s) for s in (1, 2, 3)]
  rows += [_row("student_probe", 1.0, _corrupted("saturate", s), 80.0) for s in range(1, 6)]
  rows.append(_row("zero_shot_teacher_clean", 0.0, {"kind": "identity"}, 60.0,
                   evaluator="zero_shot"))
  alexnet = os.path.join(root, "alexnet.json")
  with open(alexnet, "w") as f:  # gaussian_noise as a list, fog and saturate as means
    json.dump({"gaussian_noise": [0.5, 0.6, 0.7, 0.8, 0.9], "fog": 0.8, "saturate": 0.5}, f)
  return {"noise": _workdir(root, "noise", rows, train_spec=noise, experiment="E12"),
          "fog": _workdir(root, "fog", [_row("student_probe", 1.0, _corrupted("fog", s), 60.0)
                                        for s in range(1, 6)],
                          train_spec=noise, experiment="E12"),
          "alexnet": alexnet}


def test_imagenet_c_table_and_mce(imagenet_c_runs, tmp_path, capsys):
  out = str(tmp_path / "out")
  report.main([imagenet_c_runs["noise"], imagenet_c_runs["fog"], "--out", out,
               "--alexnet_errors", imagenet_c_runs["alexnet"]])
  # No severity plot: every corruption shares severities 1..5.
  assert capsys.readouterr().out.split() == [os.path.join(out, "results.csv"),
                                             os.path.join(out, "report.md")]
  with open(os.path.join(out, "report.md")) as f:
    markdown = f.read()
  rows = _table(markdown, "ImageNet-C")
  assert list(rows[0])[4:] == ["gaussian_noise", "fog", "saturate", "mean", "mCE (%)"]
  ours = _find(rows, workdir=imagenet_c_runs["noise"], method="ours")
  # Noise errors 20..60 (sum 200) over AlexNet's 50..90 (sum 350); fog lacks severities 4-5
  # and saturate is an extra corruption, so neither enters mCE.
  assert (ours["gaussian_noise"], ours["fog"], ours["saturate"]) == ("60.00", "72.00*", "80.00")
  assert ours["mean"] == "70.67 (n=3)" and ours["mCE (%)"] == "57.1 (n=1)"
  assert ours["train operator"] == "noise sigma~U(0.1,0.3)" and ours["labels"] == "100%"
  zero_shot = _find(rows, method="zero-shot (student)")
  assert (zero_shot["gaussian_noise"], zero_shot["fog"], zero_shot["mCE (%)"]) == (
      "50.00", "–", "71.4 (n=1)")
  fog = _find(rows, workdir=imagenet_c_runs["fog"])
  assert fog["fog"] == "60.00" and fog["mCE (%)"] == f"{100 * 200 / 400:.1f} (n=1)"
  assert len(rows) == 3  # the clean teacher (identity) is not an ImageNet-C row
  assert "*: tested at only some of severities" in markdown
  assert "ImageNet-100's are not published" in markdown
  others = _table(markdown, "Other results")
  assert [r["test operator"] for r in others] == ["identity"]


def test_imagenet_c_table_without_alexnet_errors(imagenet_c_runs):
  rows, _ = report.collect([imagenet_c_runs["fog"]])
  markdown = report.imagenet_c_table(rows)
  assert "mCE (%)" not in _table(markdown, "ImageNet-C")[0]
  assert "--alexnet_errors FILE.json" in markdown and "*:" not in markdown


@pytest.mark.parametrize("content, message", [
    ({"gaussian_noise": [50, 60, 70, 80, 90]}, "fractions in [0, 1]"),
    ({"gaussian_noise": [0.5, 0.6]}, "list of 5 error rates"),
    ({"rain": 0.5}, "'rain' is not an ImageNet-C corruption"),
    ([0.5], "JSON object"),
])
def test_bad_alexnet_errors(tmp_path, content, message):
  path = str(tmp_path / "alexnet.json")
  with open(path, "w") as f:
    json.dump(content, f)
  with pytest.raises(ValueError, match=re.escape(message)):
    report.load_alexnet_errors(path)
  with pytest.raises(SystemExit, match=re.escape(message)):
    report.main([str(tmp_path), "--alexnet_errors", path, "--out", str(tmp_path / "out")])

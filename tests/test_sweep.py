"""`python -m rrjax.launch.sweep`: a family's get_sweep() expanded into commands, printed
or run in turn (skipping finished runs, stopping at the first failure), bad input
refused before anything runs."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from rrjax.launch import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A family whose runs are the smoke pipeline cut down to its cache stage (seconds each).
# `bad` runs fail inside rrjax.main, after the sweep's own checks have passed.
FAMILY = """
from rrjax import config as config_lib

def get_config(arg=None):
  args = config_lib.parse_arg(arg, p=0.9, bad=False)
  c = config_lib.load_config({mask!r} + ":smoke")
  c.unlock()
  c.operator.p = args.p
  c.stages = ("cache",)
  if args.bad:
    c.data.root = "/nonexistent/rrjax/data"
  return c

def get_sweep():
  return {runs!r}
"""


def _family(directory, runs, name="tiny.py"):
  path = directory / name
  path.write_text(FAMILY.format(mask=os.path.join(REPO, "configs", "mask.py"), runs=runs))
  return str(path)


@pytest.fixture(scope="module")
def smoke_env(tmp_path_factory):
  root = tmp_path_factory.mktemp("smoke_assets")
  previous = os.environ.get("RRJAX_SMOKE_DIR")
  os.environ["RRJAX_SMOKE_DIR"] = str(root)  # Configs built here and in subprocesses.
  yield dict(os.environ)
  if previous is None:
    del os.environ["RRJAX_SMOKE_DIR"]
  else:
    os.environ["RRJAX_SMOKE_DIR"] = previous


@pytest.mark.parametrize("arg, expected", [
    ("p=0.5", "p0.5"),
    ("p=0.5-0.95,levels=0.96/0.97/0.98/0.99", "p0.5-0.95_levels0.96_0.97_0.98_0.99"),
    ("p=0.9,fractions=0.1,baseline", "p0.9_fractions0.1_baseline"),
    ("baseline_init=imagenet:/ckpt/in100 resnet", "baseline_initimagenet_ckpt_in100_resnet"),
    ("", "default"),
])
def test_run_dirname(arg, expected):
  assert sweep.run_dirname(arg) == expected


def test_expansion_and_printed_commands(smoke_env, tmp_path, capsys):
  path = _family(tmp_path, ["p=0.5", "p=0.75", "p=0.9,bad"])
  runs = sweep.sweep_runs(path, workdir_root="/runs", overrides=["--config.seed=3"])
  assert [r.arg for r in runs] == ["p=0.5", "p=0.75", "p=0.9,bad"]
  assert [r.workdir for r in runs] == ["/runs/tiny/p0.5", "/runs/tiny/p0.75",
                                       "/runs/tiny/p0.9_bad"]
  assert runs[1].command("python") == [
      "python", "-m", "rrjax.main", f"--config={path}:p=0.75", "--workdir=/runs/tiny/p0.75",
      "--config.seed=3"]
  assert [r.arg for r in sweep.sweep_runs(path, filter_text="0.7")] == ["p=0.75"]

  assert sweep.main([path, "--workdir_root=/runs", "--config.seed=3"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [shlex.split(line) for line in lines] == [r.command("python") for r in runs]

  assert sweep.main([path, "--workdir_root=/runs", "--filter=0.75",
                     "--launcher=sbatch 'launch/slurm.sbatch'", "--config.seed=3"]) == 0
  assert shlex.split(capsys.readouterr().out) == [
      "sbatch", "launch/slurm.sbatch", f"{path}:p=0.75", "/runs/tiny/p0.75", "--config.seed=3"]


def test_mask_family_sweep(smoke_env):
  runs = sweep.sweep_runs(os.path.join(REPO, "configs", "mask.py"))
  assert {r.arg.split(",")[0] for r in runs} >= {"p=0.5", "p=0.75", "p=0.9", "p=0.5-0.95"}
  assert len({r.workdir for r in runs}) == len(runs)


def test_run_skips_finished_and_stops_at_first_failure(smoke_env, tmp_path):
  path = _family(tmp_path, ["p=0.5", "p=0.75", "p=0.9", "p=0.95"])
  runs = sweep.sweep_runs(path, workdir_root=str(tmp_path / "runs"))
  os.makedirs(runs[0].workdir)
  open(os.path.join(runs[0].workdir, "results.json"), "w").close()
  started = []

  def runner(command):
    started.append(command)
    return 3 if "--config=" + runs[2].config in command else 0

  log = tmp_path / "log.txt"
  with open(log, "w") as f, pytest.raises(sweep.RunFailed) as failure:
    sweep.run_sweep(runs, runner=runner, log=f)
  assert started == [runs[1].command(), runs[2].command()]
  assert "[3/4]" in str(failure.value) and "exit code 3" in str(failure.value)
  assert "1 run(s) not started" in str(failure.value)
  assert "finished before" in log.read_text().splitlines()[0]


def test_cli_runs_real_commands(smoke_env, tmp_path):
  """End to end: a finished run skipped, a real run, a failing run stops the sweep."""
  path = _family(tmp_path, ["p=0.5", "p=0.75", "p=0.9,bad", "p=0.95"])
  root = tmp_path / "runs"
  (root / "tiny" / "p0.5").mkdir(parents=True)
  (root / "tiny" / "p0.5" / "results.json").write_text("{}")
  done = subprocess.run(
      [sys.executable, "-m", "rrjax.launch.sweep", path, f"--workdir_root={root}", "--run"],
      env=smoke_env, cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 1, done.stderr[-3000:]
  assert "finished before" in done.stdout
  assert "[3/4]" in done.stderr and "sweep stopped" in done.stderr, done.stderr[-3000:]
  assert "data.root" in done.stderr  # rrjax.main's own error reached the user.
  cache = json.loads((root / "tiny" / "p0.75" / "cache" / "done.json").read_text())
  assert cache["seconds"] > 0
  assert not (root / "tiny" / "p0.5" / "cache").exists()
  assert not (root / "tiny" / "p0.95").exists()


def test_bad_input(smoke_env, tmp_path):
  no_sweep = tmp_path / "plain.py"
  no_sweep.write_text("def get_config(arg=None):\n  return None\n")
  with pytest.raises(ValueError, match="defines no get_sweep"):
    sweep.sweep_runs(str(no_sweep))
  with pytest.raises(FileNotFoundError, match="missing.py"):
    sweep.sweep_runs(str(tmp_path / "missing.py"))
  for runs, message in ([[], "non-empty list"], [["p=0.5", "p=0.5"], "more than once"],
                        [["p=0.5,bad", "p=0.5/bad"], "share the workdir"],
                        [["q=1"], "'q' is not one of"]):
    with pytest.raises(ValueError, match=message):
      sweep.sweep_runs(_family(tmp_path, runs))
  path = _family(tmp_path, ["p=0.5"])
  with pytest.raises(ValueError, match="matches none"):
    sweep.sweep_runs(path, filter_text="0.6")
  with pytest.raises(ValueError, match="no field 'batch_sise'"):
    sweep.sweep_runs(path, overrides=["--config.batch_sise=8"])
  with pytest.raises(ValueError, match="--config.field=value"):
    sweep.sweep_runs(path, overrides=["--batch_size=8"])
  with pytest.raises(SystemExit) as exit_info:
    sweep.main([str(no_sweep)])
  assert exit_info.value.code == 2

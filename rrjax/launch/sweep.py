"""Every run of an experiment family, printed as commands or run one after another.

  python -m rrjax.launch.sweep configs/mask.py                  # print the commands
  python -m rrjax.launch.sweep configs/mask.py --run            # run them in turn
  python -m rrjax.launch.sweep configs/mask.py --filter=p=0.9 --workdir_root=/data/runs \
      --config.data.root=/data/imagenet100   # --config.* overrides go to every run
  python -m rrjax.launch.sweep configs/mask.py --run --launcher="sbatch launch/slurm.sbatch"

A family file lists its runs with `get_sweep() -> list[str]`, each a `get_config`
argument string. Run `ARG` of `configs/FAMILY.py` is

  python -m rrjax.main --config=configs/FAMILY.py:ARG --workdir=ROOT/FAMILY/DIR

with DIR = `run_dirname(ARG)`. Every run's config is built (and every override checked
against it) before anything starts. `--run` skips runs whose workdir holds results.json
(and `rrjax.main` itself skips a run's finished stages and resumes unfinished ones), and
stops at the first run that fails. `--launcher=SCRIPT` starts each run as
`SCRIPT CONFIG WORKDIR [overrides]` instead, with a `launch/` script (with `sbatch`, --run
submits every unfinished run as its own job).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import runpy
import shlex
import subprocess
import sys
from typing import Callable, Sequence, TextIO

from rrjax import config as config_lib

RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: `rrjax.main` with `config_path:arg` in `workdir`."""
  config_path: str
  arg: str
  workdir: str
  overrides: tuple[str, ...] = ()
  launcher: tuple[str, ...] = ()  # e.g. ("sbatch", "launch/slurm.sbatch")

  @property
  def config(self) -> str:
    return f"{self.config_path}:{self.arg}" if self.arg else self.config_path

  def command(self, python: str = sys.executable) -> list[str]:
    if self.launcher:
      return [*self.launcher, self.config, self.workdir, *self.overrides]
    return [python, "-m", "rrjax.main", f"--config={self.config}",
            f"--workdir={self.workdir}", *self.overrides]

  def is_finished(self) -> bool:
    return os.path.exists(os.path.join(self.workdir, RESULTS_FILE))


class RunFailed(RuntimeError):
  """A run of the sweep exited with an error; the runs after it were not started."""


def run_dirname(arg: str) -> str:
  """A file-name-safe directory for a run: "p=0.5,levels=0.96/0.99" -> "p0.5_levels0.96_0.99",
  "" (the family's default run) -> "default"."""
  return re.sub(r"[^A-Za-z0-9.+-]+", "_", arg.replace("=", "")).strip("_") or "default"


def sweep_args(config_path: str) -> list[str]:
  """The `get_config` arguments a family file's `get_sweep()` lists, checked."""
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"config file {config_path!r} does not exist.")
  get_sweep = runpy.run_path(config_path).get("get_sweep")
  if not callable(get_sweep):
    raise ValueError(
        f"{config_path} defines no get_sweep(); add `def get_sweep(): return [...]` listing "
        "its get_config argument strings (e.g. [\"p=0.5\", \"p=0.9\"]), or run a single "
        f"config with python -m rrjax.main --config={config_path}.")
  args = get_sweep()
  if (not isinstance(args, (list, tuple)) or not args
      or not all(isinstance(a, str) for a in args)):
    raise ValueError(f"{config_path}: get_sweep() must return a non-empty list of strings, "
                     f"got {args!r}.")
  duplicates = sorted({a for a in args if args.count(a) > 1})
  if duplicates:
    raise ValueError(f"{config_path}: get_sweep() lists {duplicates} more than once.")
  return list(args)


def _check_overrides(overrides: Sequence[str], config, run_config: str) -> None:
  for override in overrides:
    name, sep, _ = override.partition("=")
    if not name.startswith("--config.") or not sep:
      raise ValueError(f"override {override!r} must look like --config.field=value.")
    try:
      config_lib.get_field(config, name[len("--config."):])
    except (KeyError, AttributeError, TypeError):
      raise ValueError(f"override {override!r}: {run_config} has no field "
                       f"{name[len('--config.'):]!r}.") from None


def sweep_runs(config_path: str, *, workdir_root: str = "workdirs", filter_text: str = "",
               overrides: Sequence[str] = (), launcher: Sequence[str] = ()) -> list[Run]:
  """The runs of the family at `config_path` whose argument contains `filter_text`.

  Raises ValueError for a family without a usable `get_sweep`, runs that would share a
  workdir, a filter that keeps nothing, a config that does not build, or an override
  naming a field the config lacks; FileNotFoundError for a missing file.
  """
  args = sweep_args(config_path)
  family = os.path.splitext(os.path.basename(config_path))[0]
  by_dir: dict[str, str] = {}
  for arg in args:
    other = by_dir.setdefault(run_dirname(arg), arg)
    if other != arg:
      raise ValueError(f"{config_path}: runs {other!r} and {arg!r} would share the workdir "
                       f"{run_dirname(arg)!r}; make their arguments differ in more than "
                       "punctuation.")
  kept = [a for a in args if filter_text in a]
  if not kept:
    raise ValueError(f"--filter={filter_text!r} matches none of the runs of {config_path}: "
                     f"{args}.")
  runs = [Run(config_path, arg, os.path.join(workdir_root, family, run_dirname(arg)),
              tuple(overrides), tuple(launcher)) for arg in kept]
  for run in runs:  # Fail on a bad run now, not hours into the sweep.
    config = config_lib.load_config(run.config)
    _check_overrides(overrides, config, run.config)
  return runs


def _subprocess_runner(command: list[str]) -> int:
  return subprocess.run(command, check=False).returncode


def run_sweep(runs: Sequence[Run], *, runner: Callable[[list[str]], int] = _subprocess_runner,
              log: TextIO = sys.stdout) -> None:
  """Runs `runs` one after another, skipping finished ones; raises RunFailed on the first
  that fails. `runner(command) -> exit code` runs one command (a subprocess by default)."""
  for i, run in enumerate(runs, 1):
    prefix = f"[{i}/{len(runs)}] {run.config}"
    if run.is_finished():
      print(f"{prefix}: finished before ({os.path.join(run.workdir, RESULTS_FILE)}), skipped",
            file=log, flush=True)
      continue
    command = run.command()
    print(f"{prefix}: {shlex.join(command)}", file=log, flush=True)
    code = runner(command)
    if code != 0:
      raise RunFailed(
          f"{prefix} failed with exit code {code}; the sweep stopped there "
          f"({len(runs) - i} run(s) not started). Fix it and run the sweep again: "
          "finished runs are skipped and this one resumes.")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m rrjax.launch.sweep", description=__doc__.split("\n\n")[0],
      epilog="Other arguments of the form --config.field=value are passed to every run.")
  parser.add_argument("config_path", help="experiment family file with get_sweep()")
  parser.add_argument("--workdir_root", default="workdirs",
                      help="runs go to ROOT/<family>/<run> (default: workdirs)")
  parser.add_argument("--filter", default="", dest="filter_text",
                      help="only runs whose get_config argument contains this text")
  parser.add_argument("--run", action="store_true",
                      help="run the commands one after another instead of printing them")
  parser.add_argument("--launcher", default="",
                      help="start runs as LAUNCHER CONFIG WORKDIR [overrides], e.g. "
                      "'sbatch launch/slurm.sbatch' (default: python -m rrjax.main)")
  flags, overrides = parser.parse_known_args(argv)
  try:
    runs = sweep_runs(flags.config_path, workdir_root=flags.workdir_root,
                      filter_text=flags.filter_text, overrides=overrides,
                      launcher=shlex.split(flags.launcher))
  except (ValueError, FileNotFoundError) as error:
    parser.exit(2, f"error: {error}\n")
  if not flags.run:
    for run in runs:
      print(shlex.join(run.command("python")))
    return 0
  try:
    run_sweep(runs)
  except RunFailed as error:
    parser.exit(1, f"sweep stopped: {error}\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())

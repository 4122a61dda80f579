"""Where stages leave their work, and the one error for work that is not there.

A stage's directory is `WORKDIR/<stage>`; a finished stage leaves `done.json` there
(its summary and time), written last, so a stage is finished exactly when its
`done.json` exists. Later stages load what earlier ones wrote and never train.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

DONE = "done.json"


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage)


def is_done(workdir: str, stage: str) -> bool:
  return os.path.isfile(os.path.join(stage_dir(workdir, stage), DONE))


def read_done(workdir: str, stage: str) -> dict[str, Any]:
  with open(os.path.join(stage_dir(workdir, stage), DONE)) as f:
    return json.load(f)


def write_done(workdir: str, stage: str, summary: dict[str, Any]) -> None:
  if jax.process_index() != 0:
    return
  path = os.path.join(stage_dir(workdir, stage), DONE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(summary, f, indent=2, default=str)
  os.replace(path + ".tmp", path)


def require(workdir: str, stage: str, needed_by: str, *, alternative: str = "") -> None:
  """Raises FileNotFoundError saying which stage to run when `stage` has not finished."""
  if is_done(workdir, stage):
    return
  raise FileNotFoundError(
      f"{needed_by} needs the finished '{stage}' stage, but {stage_dir(workdir, stage)} has "
      f"no {DONE}: add '{stage}' to config.stages (it runs before '{needed_by}')"
      + (f", or {alternative}" if alternative else "") + ".")

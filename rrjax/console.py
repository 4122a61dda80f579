"""What a person sees while rrjax runs, and where everything else goes.

The terminal shows one line per stage (what it does and how much work), the progress
bars, warnings, errors as one short message, and the results table with where the
outputs are. Every log record (rrjax's own INFO lines, and orbax, absl, jax,
transformers, Python warnings) goes to `WORKDIR/log.txt`; `--verbosity=1` also shows
the INFO records on the terminal. In a multi-process job only process 0 prints.
"""

from __future__ import annotations

import logging
import os
import sys

import jax

LOG_FILE = "log.txt"
_FORMAT = "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d] %(message)s"
# Records for log.txt only: what the terminal already shows in short.
_FILE_ONLY = logging.getLogger("rrjax.log_file")
_FILE_ONLY.propagate = False


def quiet_terminal(verbosity: int = 0) -> None:
  """Before JAX starts (its backend probing logs INFO lines): the terminal shows
  warnings and errors only, unless `verbosity` >= 1."""
  root = logging.getLogger()
  root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
  for handler in root.handlers:  # absl's handler (stderr) when run through absl.app.
    handler.setLevel(logging.INFO if verbosity >= 1 else logging.WARNING)


def setup(workdir: str, verbosity: int = 0) -> str:
  """Routes logging for a run: everything to WORKDIR/log.txt, the terminal as
  `quiet_terminal` left it (errors only on processes other than 0). Returns the log
  file's path."""
  os.makedirs(workdir, exist_ok=True)
  root = logging.getLogger()
  if jax.process_index() != 0:
    for handler in root.handlers:
      handler.setLevel(logging.ERROR)
  path = os.path.join(workdir, LOG_FILE if jax.process_index() == 0
                      else f"log.{jax.process_index()}.txt")
  to_file = logging.FileHandler(path)
  to_file.setFormatter(logging.Formatter(_FORMAT))
  root.addHandler(to_file)
  _FILE_ONLY.addHandler(to_file)
  # Libraries' Python warnings (e.g. orbax's notes on restoring) are for the log file.
  logging.captureWarnings(True)
  warnings_logger = logging.getLogger("py.warnings")
  warnings_logger.propagate = verbosity >= 1
  warnings_logger.addHandler(to_file)
  return path


def say(text: str) -> None:
  """A line for the person at the terminal (process 0 only), also kept in the log."""
  _FILE_ONLY.info(text)
  if jax.process_index() == 0:
    print(text, flush=True)


def error(text: str) -> None:
  """A user error: one short message on stderr; the traceback goes to the log file."""
  _FILE_ONLY.exception("rrjax stopped")
  print(f"error: {text}", file=sys.stderr, flush=True)


def where_things_are(workdir: str, config) -> str:
  """The closing lines of a run: its outputs and how to look at them."""
  lines = [f"results:     {os.path.join(workdir, 'results.md')} (and results.json)",
           f"TensorBoard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}",
           f"log:         {os.path.join(workdir, LOG_FILE)}"]
  if "student" in config.stages:
    lines.insert(2, f"student:     {os.path.join(workdir, 'student', 'checkpoints')} "
                    f"(export: python -m rrjax.export {workdir} --format ... --out DIR)")
  return "\n".join(lines)

"""Feedback while a run goes: metrics to TensorBoard and a JSON-lines file, and a
progress bar with throughput and ETA. Only the main process (index 0) writes."""

from __future__ import annotations

import json
import os
import time

import jax
import tqdm


class MetricWriter:
  """Scalars to `DIR/metrics.jsonl` and TensorBoard event files in `DIR/tensorboard`."""

  def __init__(self, directory: str | None):
    self._active = directory is not None and jax.process_index() == 0
    if not self._active:
      return
    os.makedirs(directory, exist_ok=True)
    from tensorboardX import SummaryWriter  # Pure Python: no TensorFlow needed.
    self._tensorboard = SummaryWriter(os.path.join(directory, "tensorboard"))
    self._jsonl = open(os.path.join(directory, "metrics.jsonl"), "a")

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    if not self._active:
      return
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self._active:
      self._tensorboard.close()
      self._jsonl.close()


class Progress:
  """A tqdm bar (steps/s and ETA, and the last logging window's metrics) on the main
  process; silent elsewhere."""

  def __init__(self, name: str, total: int, initial: int = 0):
    self._bar = (tqdm.tqdm(total=total, initial=initial, desc=name, unit="step",
                           dynamic_ncols=True, mininterval=2.0)
                 if jax.process_index() == 0 else None)
    self._last = initial

  def update(self, step: int) -> None:
    if self._bar is not None:
      self._bar.update(step - self._last)
      self._last = step

  def set_postfix(self, scalars: dict[str, float]) -> None:
    """Shows `scalars` after the bar until the next call (drawn with the next update)."""
    if self._bar is not None:
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()}, refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()

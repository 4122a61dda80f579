"""Class-balanced label subsets for label-efficiency probes (SPEC §5, E2)."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np


def class_balanced_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of a subset holding `fraction` of every class (rounded to nearest,
  at least one example per class), drawn without replacement from (seed)."""
  if not 0 < fraction <= 1:
    raise ValueError(f"probe.label_fraction={fraction} must be in (0, 1].")
  return stratified_sample(
      labels, lambda n: max(1, min(n, math.floor(fraction * n + 0.5))),
      np.random.default_rng([seed, 0x7375627365]))


def stratified_sample(labels: np.ndarray, count: Callable[[int], int],
                      rng: np.random.Generator) -> np.ndarray:
  """Sorted int64 indices: `count(n)` examples of each class of n, drawn without
  replacement, class by class in label order."""
  labels = np.asarray(labels)
  chosen = [rng.choice(members, size=count(len(members)), replace=False)
            for members in (np.flatnonzero(labels == label) for label in np.unique(labels))]
  return np.sort(np.concatenate(chosen)).astype(np.int64)


class Subset:
  """The examples `indices` of `source`, keeping their example ids (and so their views
  and cached teacher embeddings)."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices)
    self.labels = np.asarray(source.labels)[self.indices]
    self.num_classes, self.class_names = source.num_classes, source.class_names

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self.source[int(self.indices[i])]

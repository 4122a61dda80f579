"""Out-of-class relabelling (rrjax.data.sources, SPEC E5)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rrjax.data.sources.common import load_wnids

# SPEC §6 (E5): five ImageNet classes outside ImageNet-100 -> the similar class inside it.
OUT_OF_CLASS_RELABEL = {
    "n07930864": "n03062245",  # cup -> cocktail shaker
    "n01978287": "n01978455",  # Dungeness crab -> rock crab
    "n03792782": "n03785016",  # mountain bike -> moped
    "n02325366": "n02326432",  # wood rabbit -> hare
    "n02108915": "n02093428",  # French bulldog -> American Staffordshire terrier
}


class OutOfClassSource:
  """The out-of-class set of SPEC §6 (E5): images of the 5 unseen classes, labelled with
  the ImageNet-100 class they resemble (`OUT_OF_CLASS_RELABEL`).

  `inner` is any source whose class names are (some of) the five unseen wnids.
  """

  def __init__(self, inner, target_wnids: Sequence[str] | None = None):
    target_wnids = list(target_wnids or load_wnids("imagenet100"))
    unknown = sorted(set(inner.class_names) - set(OUT_OF_CLASS_RELABEL))
    if unknown:
      raise ValueError(f"out-of-class source has classes {unknown} outside the five unseen "
                       f"wnids {sorted(OUT_OF_CLASS_RELABEL)}; point data.root at a folder "
                       "holding only those classes.")
    self.inner = inner
    self.class_names = target_wnids
    self._label_map = np.array([target_wnids.index(OUT_OF_CLASS_RELABEL[name])
                                for name in inner.class_names], np.int64)
    self.labels = self._label_map[np.asarray(inner.labels)]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return len(self.inner)

  def __getitem__(self, i: int) -> dict[str, Any]:
    example = self.inner[i]
    return dict(example, label=int(self._label_map[example["label"]]))

  def __repr__(self) -> str:
    return f"OutOfClassSource({self.inner!r})"

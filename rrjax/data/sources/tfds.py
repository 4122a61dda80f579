"""tfds datasets as sources (rrjax.data.sources)."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from rrjax.data.build_tfds import build_command
from rrjax.data.sources.common import check_index

class TfdsSource:
  """A prepared tensorflow-datasets dataset read through `tfds.data_source` (no TensorFlow).

  The dataset must be prepared in the array_record format under `data_dir` (nothing is
  downloaded here). With `wnids`, only examples whose class name is in the list are kept
  and labels become positions in the list (ImageNet-100/100B, ImageNet-100C); finding
  them reads every label once, with image decoding skipped.
  """

  def __init__(self, name: str, split: str, data_dir: str | None = None,
               wnids: Sequence[str] | None = None):
    import tensorflow_datasets as tfds  # Heavy import, only for tfds sources.
    builder = tfds.builder(name, data_dir=data_dir)
    self.name, self.split, self._data_dir = name, split, data_dir
    try:
      self._data = self._open()
    except (NotImplementedError, AssertionError) as e:  # What tfds raises for missing data.
      raise FileNotFoundError(
          f"tfds dataset {name!r} is not prepared in the array_record format under "
          f"{builder.data_dir!r}; prepare it (`{build_command(name, data_dir)}`) and set "
          "data.root to its data_dir.") from e
    label_names = list(builder.info.features["label"].names)
    self._index = self._label_map = None
    if wnids is None:
      self.class_names = label_names
      return
    missing = sorted(set(wnids) - set(label_names))
    if missing:
      raise ValueError(f"data.wnids has classes {missing[:10]} that {name!r} lacks.")
    self.class_names = list(wnids)
    self._label_map = np.full(len(label_names), -1, np.int64)
    self._label_map[[label_names.index(w) for w in wnids]] = np.arange(len(wnids))
    restricted = self._label_map[self._scan_labels()]
    self._index = np.flatnonzero(restricted >= 0)
    self.labels = restricted[self._index]

  def _open(self):
    import tensorflow_datasets as tfds
    return tfds.data_source(self.name, split=self.split, data_dir=self._data_dir,
                            download=False)

  def __getstate__(self) -> dict[str, Any]:
    # Sent to data workers: they reopen the dataset rather than pickle open readers.
    return {k: v for k, v in self.__dict__.items() if k != "_data"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._data = self._open()

  def _scan_labels(self) -> np.ndarray:
    """Every example's original label, reading records with image decoding skipped."""
    import tensorflow_datasets as tfds
    raw = tfds.data_source(self.name, split=self.split, data_dir=self._data_dir,
                           download=False, decoders={"image": tfds.decode.SkipDecoding()})
    chunk = 1024
    return np.asarray(
        [ex["label"] for start in range(0, len(raw), chunk)
         for ex in raw.__getitems__(list(range(start, min(start + chunk, len(raw)))))],
        np.int64)

  @functools.cached_property
  def labels(self) -> np.ndarray:
    """Computed on first use for unrestricted datasets (set in __init__ otherwise)."""
    return self._scan_labels()

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return len(self._data) if self._index is None else len(self._index)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = check_index(i, len(self))
    j = i if self._index is None else int(self._index[i])
    try:
      example = self._data[j]
    except Exception as e:
      raise ValueError(f"cannot read example {j} of tfds {self.name!r} split "
                       f"{self.split!r}: {e}") from e
    image = np.asarray(example["image"], np.uint8)
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    label = int(example["label"])
    if self._label_map is not None:
      label = int(self._label_map[label])
    return {"image": image, "label": label, "id": i}

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, {self.split!r}, {len(self)} images)"

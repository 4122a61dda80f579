"""Image folders as sources (rrjax.data.sources): root/<split>/<class>/<file>."""

from __future__ import annotations

import concurrent.futures
import logging
import os
from typing import Any, Sequence

import numpy as np

from rrjax.data.sources.common import check_index, decode_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm")


def class_directories(split_dir: str) -> list[str]:
  return sorted(d for d in os.listdir(split_dir)
                if not d.startswith(".") and os.path.isdir(os.path.join(split_dir, d)))


def _is_decodable(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      decode_image(f.read(), path)
    return True
  except (ValueError, OSError):
    return False


class ImageFolderSource:
  """`root/<split>/<class>/<file>`; classes are the sorted directory names, or `classes`.

  Files are ordered by (class, file name); item i is the i-th readable file. With
  `skip_corrupt=True` every file is decoded once here (in `num_threads` threads) and
  unreadable ones are dropped and counted in `num_skipped`; otherwise an unreadable file
  raises a ValueError naming it when it is read.
  """

  def __init__(self, root: str, split: str, *, classes: Sequence[str] | None = None,
               skip_corrupt: bool = False, num_threads: int = 8):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"image folder root {root!r} does not exist; set data.root "
                              "to a directory holding <split>/<class>/<image> files.")
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
      raise FileNotFoundError(f"split directory {split_dir!r} does not exist (found "
                              f"{found} under data.root={root!r}); check data.root and the "
                              "split names.")
    on_disk = class_directories(split_dir)
    if classes is None:
      classes = on_disk
    missing = sorted(set(classes) - set(on_disk))
    if missing:
      raise FileNotFoundError(f"{len(missing)} of the {len(classes)} class directories asked "
                              f"for are not in {split_dir!r}, first {missing[:5]}; check "
                              "data.root and data.wnids.")
    self.root, self.split = root, split
    self.class_names = list(classes)
    files, labels = [], []
    for label, name in enumerate(self.class_names):
      class_dir = os.path.join(split_dir, name)
      for file_name in sorted(os.listdir(class_dir)):
        if not file_name.startswith(".") and file_name.lower().endswith(IMAGE_EXTENSIONS):
          files.append(os.path.join(class_dir, file_name))
          labels.append(label)
    if not files:
      raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir!r}.")
    self.skipped_files: list[str] = []
    if skip_corrupt:
      with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        ok = list(pool.map(_is_decodable, files))
      self.skipped_files = [f for f, good in zip(files, ok) if not good]
      files = [f for f, good in zip(files, ok) if good]
      labels = [l for l, good in zip(labels, ok) if good]
      if self.skipped_files:
        logging.warning("skipped %d unreadable image files under %s, e.g. %s",
                        len(self.skipped_files), split_dir, self.skipped_files[0])
    self.files = files
    self.labels = np.asarray(labels, np.int64)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_skipped(self) -> int:
    return len(self.skipped_files)

  def __len__(self) -> int:
    return len(self.files)

  def encoded(self, i: int) -> bytes:
    """The file's bytes, as stored (what `rrjax.data.prepare` copies into records)."""
    with open(self.files[i], "rb") as f:
      return f.read()

  def encoded_example(self, i: int) -> dict[str, Any]:
    i = check_index(i, len(self))
    return {"encoded": self.encoded(i), "name": self.files[i], "label": int(self.labels[i]),
            "id": i}

  def __getitem__(self, i: int) -> dict[str, Any]:
    example = self.encoded_example(i)
    return {"image": decode_image(example["encoded"], example["name"]),
            "label": example["label"], "id": example["id"]}

  def __repr__(self) -> str:
    return (f"ImageFolderSource({self.root!r}, {self.split!r}, {len(self)} images, "
            f"{self.num_classes} classes, {self.num_skipped} skipped)")

"""Benchmark test sets: a tfds dataset by name or an image folder, cut for one model.

A `--datasets` entry is either a tfds builder name (`prompts.DATASETS`, read from its
prepared array_record files through `rrjax.data.sources.TfdsSource`, the split of
`TEST_SPLITS`) or a directory `DIR/<class>/<image>` (`ImageFolderSource`: classes are the
sorted folder names). Images are cut as the model's own preprocessing does (open_clip's
and transformers' CLIP transforms): resize (the shorter side to the input size for
"shortest", both sides for "squash") with the checkpoint's interpolation, PIL's
antialiased filters as torchvision uses on PIL images, then a centre crop.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import re
from typing import Iterator

import jax
import numpy as np
from PIL import Image

from rrjax.benchmark import prompts
from rrjax.data import sources, views
from rrjax.data.build_tfds import build_command

# The test split of each dataset, as CLIP_benchmark evaluates it: tfds' test split, its
# validation split where tfds has no test split, and VTAB's last 20% of the training
# split for EuroSAT and RESISC45 (tfds holds only "train" for them).
TEST_SPLITS = {"imagenet2012": "validation", "food101": "validation",
               "eurosat": "train[80%:]", "resisc45": "train[80%:]"}
DEFAULT_SPLIT = "test"
_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
RESIZE_MODES = ("shortest", "squash")


def is_folder(name: str) -> bool:
  """A path (tfds names may hold "/" too: "sun397/standard-part1-120k")."""
  return os.path.isdir(name) or name.startswith((os.sep, ".", "~"))


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A test set with its zero-shot prompts: `class_names[label]` names label's class."""
  name: str
  source: object
  class_names: list[str]
  templates: list[str]

  def __len__(self) -> int:
    return len(self.source)


def open_dataset(name: str, data_dir: str | None = None) -> Dataset:
  """The test set `name` (cheap: opens the files, reads no image); FileNotFoundError or
  ValueError saying what to do when it is not there or its prompts do not fit."""
  if is_folder(name):
    path = os.path.normpath(os.path.expanduser(name))
    if not os.path.isdir(path):
      raise FileNotFoundError(f"--datasets: {name!r} is not a directory; give an image folder "
                              "DIR/<class>/<image> or a tfds name.")
    source = sources.ImageFolderSource(os.path.dirname(path) or ".", os.path.basename(path))
    class_names, templates = prompts.load_folder(source.class_names)
    return Dataset(name, source, class_names, templates)
  base = re.split(r"[:/]", name, maxsplit=1)[0]  # The builder of "name:version/config".
  if base not in prompts.DATASETS:
    raise ValueError(f"--datasets: {name!r} is neither a known dataset "
                     f"({', '.join(prompts.DATASETS)}) nor an image folder (DIR/<class>/<image>).")
  split = TEST_SPLITS.get(base, DEFAULT_SPLIT)
  try:
    source = sources.TfdsSource(name, split, data_dir=data_dir)
  except FileNotFoundError:
    raise FileNotFoundError(
        f"--datasets: tfds {name!r} ({split}) is not prepared as array_record under "
        f"{data_dir or 'the tfds default data_dir'}; run `{build_command(name, data_dir)}` "
        "or point --data_dir at it.") from None
  class_names, templates = prompts.load(name)
  subset = prompts.class_subset(name)
  if subset is not None:  # ImageNet-R/A: 200 classes, labelled by ImageNet-1k index.
    source = SubsetLabels(source, subset)
  if len(class_names) != source.num_classes:
    raise ValueError(f"--datasets: {name} has {source.num_classes} classes in tfds but "
                     f"{len(class_names)} class names in rrjax.benchmark.prompts; is the "
                     "tfds version the one prompts.py names?")
  return Dataset(name, source, class_names, templates)


class SubsetLabels:
  """A source whose labels are indices into `classes` (ImageNet-1k indices of the classes
  kept) relabelled as positions in it: the rows of a classifier of those classes only."""

  def __init__(self, source, classes: list[int]):
    self.source, self.num_classes = source, len(classes)
    self._position = {c: i for i, c in enumerate(classes)}

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    example = self.source[i]
    return {**example, "label": self._position[int(example["label"])]}


def preprocess(image: np.ndarray, size: int, interpolation: str, resize_mode: str) -> np.ndarray:
  """uint8 [H,W,3] -> uint8 [size,size,3] as the checkpoint's transform cuts it."""
  if interpolation not in _FILTERS:
    raise ValueError(f"interpolation {interpolation!r} is not one of {sorted(_FILTERS)}.")
  if resize_mode not in RESIZE_MODES:
    raise ValueError(f"resize_mode {resize_mode!r} is not supported; rrjax's benchmark cuts "
                     f"{' or '.join(RESIZE_MODES)}.")
  height, width = image.shape[:2]
  shape = ((size, size) if resize_mode == "squash"
           else views.shorter_side_shape(height, width, size))
  pil = Image.fromarray(image)
  if shape != (height, width):
    pil = pil.resize((shape[1], shape[0]), _FILTERS[interpolation])
  # torchvision's CenterCrop offsets, as rrjax's evaluation views.
  top, left = int(round((shape[0] - size) / 2)), int(round((shape[1] - size) / 2))
  return np.asarray(pil.crop((left, top, left + size, top + size)))


def num_batches(count: int, global_batch_size: int) -> int:
  return -(-count // global_batch_size)


def batches(source, count: int, *, global_batch_size: int, size: int, interpolation: str,
            resize_mode: str, num_threads: int = 8) -> Iterator[dict[str, np.ndarray]]:
  """The first `count` examples of `source` in id order as this process's share of padded
  global batches ("image" uint8, "label", "id", "valid"), as
  `rrjax.data.pipeline.eval_batches` lays them out; decoded and cut in threads (PIL
  releases the GIL), the next two batches while one is used."""
  processes, index = jax.process_count(), jax.process_index()
  if global_batch_size % processes:
    raise ValueError(f"--batch_size={global_batch_size} must be a multiple of the number of "
                     f"processes ({processes}).")
  local = global_batch_size // processes

  def example(i: int) -> tuple[np.ndarray, int]:
    item = source[int(i)]
    return preprocess(item["image"], size, interpolation, resize_mode), item["label"]

  def assemble(rows: np.ndarray, futures) -> dict[str, np.ndarray]:
    batch = {"image": np.zeros((local, size, size, 3), np.uint8),
             "label": np.zeros(local, np.int32), "id": np.zeros(local, np.int32),
             "valid": np.zeros(local, bool)}
    for j, (row, future) in enumerate(zip(rows, futures)):
      batch["image"][j], batch["label"][j] = future.result()
      batch["id"][j], batch["valid"][j] = row, True
    return batch

  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    in_flight = collections.deque()
    total = num_batches(count, global_batch_size)
    for b in range(total):
      while len(in_flight) < 3 and b + len(in_flight) < total:
        start = (b + len(in_flight)) * global_batch_size + index * local
        rows = np.arange(start, min(start + local, count))
        in_flight.append((rows, [pool.submit(example, i) for i in rows]))
      yield assemble(*in_flight.popleft())

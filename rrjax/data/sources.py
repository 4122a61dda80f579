"""Random-access image sources (SPEC §6): image folders, tfds datasets, prepared records.

Every source has `len(source)`, `source[i] -> {"image": uint8 [H,W,3], "label": int,
"id": int}`, `num_classes`, `class_names` and `labels` (int64 [len], for class-balanced
subsets). Sources of encoded files (folders, records) also have `encoded_example(i) ->
{"encoded": bytes, "name": str, "label": int, "id": int}`, which the loaders decode
straight into views (`ViewSpec.from_encoded`: reduced-size JPEG decoding, no full-size
array copies). The example id of item i is always i: ids are dense, stable positions, so the
views (seeded by id) and anything cached per id line up across runs and hosts. This is
grain's `RandomAccessDataSource` protocol.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.resources
import io
import json
import logging
import os
import re
import struct
from typing import Any, Sequence

import numpy as np
from PIL import Image

from rrjax.data import views

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm")
WNID_LISTS = ("imagenet100", "imagenet100b")
SOURCES = ("folder", "tfds", "records")

# SPEC §6 (E5): five ImageNet classes outside ImageNet-100 -> the similar class inside it.
OUT_OF_CLASS_RELABEL = {
    "n07930864": "n03062245",  # cup -> cocktail shaker
    "n01978287": "n01978455",  # Dungeness crab -> rock crab
    "n03792782": "n03785016",  # mountain bike -> moped
    "n02325366": "n02326432",  # wood rabbit -> hare
    "n02108915": "n02093428",  # French bulldog -> American Staffordshire terrier
}

# An ImageNet class id (WordNet noun synset): what ImageNet folders name their classes.
WNID_PATTERN = re.compile(r"n\d{8}")

RECORD_FORMAT = "rrjax.records/1"
_RECORD_HEADER = struct.Struct("<qq")  # label, id; followed by the encoded image bytes.


def load_wnids(name: str) -> list[str]:
  """A packaged wnid list ("imagenet100" or "imagenet100b"), in its file order."""
  if name not in WNID_LISTS:
    raise ValueError(f"data.wnids={name!r} must be one of {WNID_LISTS}, 'auto' (ImageNet-100 "
                     "for tfds imagenet2012, else the data's own classes) or '' (all classes).")
  text = importlib.resources.files("rrjax.data").joinpath(f"{name}_wnids.txt").read_text()
  return [line.strip() for line in text.splitlines() if line.strip()]


def decode_image(data: bytes, name: str) -> np.ndarray:
  """Encoded image bytes -> uint8 [H,W,3] RGB; a ValueError naming `name` if unreadable."""
  try:
    with Image.open(io.BytesIO(data)) as pil:
      return np.asarray(pil.convert("RGB"))
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ...).
    raise views.decode_error(name, e) from e


def _class_directories(split_dir: str) -> list[str]:
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
    on_disk = _class_directories(split_dir)
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
    i = _check_index(i, len(self))
    return {"encoded": self.encoded(i), "name": self.files[i], "label": int(self.labels[i]),
            "id": i}

  def __getitem__(self, i: int) -> dict[str, Any]:
    example = self.encoded_example(i)
    return {"image": decode_image(example["encoded"], example["name"]),
            "label": example["label"], "id": example["id"]}

  def __repr__(self) -> str:
    return (f"ImageFolderSource({self.root!r}, {self.split!r}, {len(self)} images, "
            f"{self.num_classes} classes, {self.num_skipped} skipped)")


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
          f"{builder.data_dir!r}; prepare it (`tfds build {name} "
          "--file_format=array_record`) and set data.root to its data_dir.") from e
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
    i = _check_index(i, len(self))
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


def encode_record(image_bytes: bytes, label: int, example_id: int) -> bytes:
  return _RECORD_HEADER.pack(label, example_id) + image_bytes


def decode_record(record: bytes) -> tuple[bytes, int, int]:
  label, example_id = _RECORD_HEADER.unpack_from(record)
  return record[_RECORD_HEADER.size:], label, example_id


def records_metadata_path(root: str, split: str) -> str:
  return os.path.join(root, f"{split}.json")


class RecordSource:
  """Images prepared by `python -m rrjax.data.prepare` (array_record shards + metadata)."""

  def __init__(self, root: str, split: str):
    meta_path = records_metadata_path(root, split)
    if not os.path.isfile(meta_path):
      raise FileNotFoundError(f"no prepared records {meta_path!r}; set data.root to the "
                              "--out directory of `python -m rrjax.data.prepare`.")
    with open(meta_path) as f:
      self.metadata = json.load(f)
    if self.metadata.get("format") != RECORD_FORMAT:
      raise ValueError(f"{meta_path!r} has format {self.metadata.get('format')!r}, "
                       f"expected {RECORD_FORMAT!r}; prepare the records again.")
    self.root, self.split = root, split
    # How the images were stored (`prepare --shorter_side`): part of what a view is.
    self.preparation = self.metadata.get("preparation", {"shorter_side": 0, "quality": None})
    self.class_names = list(self.metadata["class_names"])
    self.labels = np.asarray(self.metadata["labels"], np.int64)
    self._data = self._open()
    if len(self._data) != len(self.labels):
      raise ValueError(f"{root!r} holds {len(self._data)} records but {meta_path!r} lists "
                       f"{len(self.labels)}; prepare the records again.")

  def _open(self):
    from array_record.python import array_record_data_source
    return array_record_data_source.ArrayRecordDataSource(
        [os.path.join(self.root, shard) for shard in self.metadata["shards"]])

  def __getstate__(self) -> dict[str, Any]:
    # Sent to data workers: they reopen the files rather than pickle open readers.
    return {k: v for k, v in self.__dict__.items() if k != "_data"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._data = self._open()

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return len(self.labels)

  def encoded(self, i: int) -> bytes:
    return decode_record(self._data[_check_index(i, len(self))])[0]

  def encoded_example(self, i: int) -> dict[str, Any]:
    i = _check_index(i, len(self))
    image_bytes, label, example_id = decode_record(self._data[i])
    return {"encoded": image_bytes, "name": f"record {i} of {self.root}/{self.split}",
            "label": label, "id": example_id}

  def __getitem__(self, i: int) -> dict[str, Any]:
    example = self.encoded_example(i)
    return {"image": decode_image(example["encoded"], example["name"]),
            "label": example["label"], "id": example["id"]}

  def __repr__(self) -> str:
    return f"RecordSource({self.root!r}, {self.split!r}, {len(self)} images)"


def build_source(data_cfg, split: str):
  """The source of `split` described by a `config.data` ConfigDict (`rrjax.config`).

  Fields: source ("folder" | "tfds" | "records"), name (tfds name), root (image folder,
  records directory, or tfds data_dir; "" = tfds default), wnids (`class_list`),
  skip_corrupt, num_workers (threads for the corrupt-file scan), and optionally
  out_of_class (wrap in `OutOfClassSource`).
  """
  out_of_class = bool(data_cfg.get("out_of_class", False))
  wnids = class_list(data_cfg)
  if out_of_class:
    wnids = list(OUT_OF_CLASS_RELABEL)
  if data_cfg.source == "folder":
    if wnids is not None and not out_of_class:
      _check_folder_has_wnids(data_cfg, split)
    source = ImageFolderSource(data_cfg.root, split, classes=wnids,
                               skip_corrupt=data_cfg.skip_corrupt,
                               num_threads=data_cfg.num_workers)
  elif data_cfg.source == "tfds":
    if not data_cfg.name:
      raise ValueError("data.name must name a tfds dataset when data.source='tfds'.")
    source = TfdsSource(data_cfg.name, split, data_dir=data_cfg.root or None, wnids=wnids)
  elif data_cfg.source == "records":
    source = RecordSource(data_cfg.root, split)
    if wnids is not None and source.class_names != wnids:
      raise ValueError(f"records under {data_cfg.root!r} hold classes "
                       f"{source.class_names[:5]}..., not data.wnids={data_cfg.wnids!r} "
                       "in that order; prepare them with the same --wnids.")
  else:
    raise ValueError(f"data.source={data_cfg.source!r} must be one of {SOURCES}.")
  return OutOfClassSource(source) if out_of_class else source


def class_list(data_cfg) -> list[str] | None:
  """The classes `data.wnids` keeps, None for all: "auto" (the default) is ImageNet-100
  for tfds' ImageNet (`imagenet2012`, and its corrupted variants) and the data set's own
  classes for everything else (image folders, records, CIFAR, ...); "imagenet100" or
  "imagenet100b" always pick those wnids; "" keeps all classes."""
  name = data_cfg.wnids
  if name == "auto":
    imagenet = data_cfg.source == "tfds" and str(data_cfg.name).startswith("imagenet2012")
    return load_wnids("imagenet100") if imagenet else None
  return load_wnids(name) if name else None


def _check_folder_has_wnids(data_cfg, split: str) -> None:
  """`data.wnids` (default "imagenet100") picks ImageNet classes by wnid; a folder whose
  classes are not wnids at all (cats/, dogs/) is another data set, not an ImageNet folder
  missing classes, so say that and how to use its own classes."""
  split_dir = os.path.join(data_cfg.root, split)
  if not os.path.isdir(split_dir):
    return  # ImageFolderSource names the missing root or split.
  on_disk = _class_directories(split_dir)
  if on_disk and not any(WNID_PATTERN.fullmatch(d) for d in on_disk):
    raise ValueError(f"data.wnids={data_cfg.wnids!r} selects ImageNet classes by wnid "
                     f"(n01440764, ...), but the class directories of {split_dir!r} "
                     f"({', '.join(on_disk[:3])}{', ...' if len(on_disk) > 3 else ''}) are "
                     "not wnids. To use the folder's own classes, set "
                     "--config.data.wnids=''.")


def _check_index(i, n: int) -> int:
  i = int(i)
  if not 0 <= i < n:
    raise IndexError(f"index {i} out of range for a source of {n} examples.")
  return i

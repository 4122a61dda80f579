"""Prepared records as sources (rrjax.data.sources; written by python -m rrjax.data.prepare)."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from rrjax.data.sources.common import check_index, decode_image

RECORD_FORMAT = "rrjax.records/1"
_RECORD_HEADER = struct.Struct("<qq")  # label, id; followed by the encoded image bytes.


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
    return decode_record(self._data[check_index(i, len(self))])[0]

  def encoded_example(self, i: int) -> dict[str, Any]:
    i = check_index(i, len(self))
    image_bytes, label, example_id = decode_record(self._data[i])
    return {"encoded": image_bytes, "name": f"record {i} of {self.root}/{self.split}",
            "label": label, "id": example_id}

  def __getitem__(self, i: int) -> dict[str, Any]:
    example = self.encoded_example(i)
    return {"image": decode_image(example["encoded"], example["name"]),
            "label": example["label"], "id": example["id"]}

  def __repr__(self) -> str:
    return f"RecordSource({self.root!r}, {self.split!r}, {len(self)} images)"

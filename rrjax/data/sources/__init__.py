"""Random-access image sources (SPEC §6): image folders, tfds datasets, prepared records.

Every source has `len(source)`, `source[i] -> {"image": uint8 [H,W,3], "label": int,
"id": int}`, `num_classes`, `class_names` and `labels` (int64 [len], for class-balanced
subsets). Sources of encoded files (folders, records) also have `encoded_example(i) ->
{"encoded": bytes, "name": str, "label": int, "id": int}`, which the loaders decode
straight into views (`ViewSpec.from_encoded`: reduced-size JPEG decoding, no full-size
array copies). The example id of item i is always i: ids are dense, stable positions, so the
views (seeded by id) and anything cached per id line up across runs and hosts. This is
grain's `RandomAccessDataSource` protocol.

One module per source kind: `folder`, `tfds`, `records`, and `out_of_class` (a wrapper);
`common` holds what they share. Here: `build_source` from a config, and every public name.
"""

from __future__ import annotations

import os


from rrjax.data import workers
from rrjax.data.sources.common import WNID_LISTS, WNID_PATTERN, decode_image, load_wnids
from rrjax.data.sources.folder import IMAGE_EXTENSIONS, ImageFolderSource, class_directories
from rrjax.data.sources.out_of_class import OUT_OF_CLASS_RELABEL, OutOfClassSource
from rrjax.data.sources.records import (RECORD_FORMAT, RecordSource, decode_record,
                                        encode_record, records_metadata_path)
from rrjax.data.sources.tfds import TfdsSource

__all__ = ["IMAGE_EXTENSIONS", "OUT_OF_CLASS_RELABEL", "RECORD_FORMAT", "SOURCES", "WNID_LISTS",
           "WNID_PATTERN", "ImageFolderSource", "OutOfClassSource", "RecordSource",
           "TfdsSource", "build_source", "class_list", "decode_image", "decode_record",
           "encode_record", "load_wnids", "records_metadata_path"]

SOURCES = ("folder", "tfds", "records")


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
                               # At least one thread, also where views are cut in-process.
                               num_threads=max(workers.resolve_num_workers(
                                   data_cfg.num_workers), 1))
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
  on_disk = class_directories(split_dir)
  if on_disk and not any(WNID_PATTERN.fullmatch(d) for d in on_disk):
    raise ValueError(f"data.wnids={data_cfg.wnids!r} selects ImageNet classes by wnid "
                     f"(n01440764, ...), but the class directories of {split_dir!r} "
                     f"({', '.join(on_disk[:3])}{', ...' if len(on_disk) > 3 else ''}) are "
                     "not wnids. To use the folder's own classes, set "
                     "--config.data.wnids=''.")

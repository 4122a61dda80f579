"""Prepares a source into rrjax's record format (array_record shards + JSON metadata).

  python -m rrjax.data.prepare --source folder --root DIR --split train --out OUT
  python -m rrjax.data.prepare --source folder --root IMAGENET --wnids imagenet100 \\
      --split train --out OUT --num_shards 64
  python -m rrjax.data.prepare --source tfds --name cifar10 --split test --out OUT

writes OUT/<split>-SSSSS-of-NNNNN.array_record and OUT/<split>.json, which
`RecordSource(OUT, split)` (`data.source="records"`, `data.root=OUT`) reads. Reading a
few large files replaces opening one small file per image. Image files are copied
byte for byte (decoded images are the same as from the folder); images that a source
only has decoded (tfds) are stored as lossless PNG. Record i is example i (same label,
same id), so views and cached embeddings of the records match those of the source.

`--shorter_side N` stores every image whose shorter side exceeds N resized to N (PIL
bilinear, antialiased: the first step of the evaluation protocol, with the same output
shape) and re-encoded (JPEGs as JPEG at `--quality`, others as PNG). Decoding and
resizing a 500x375 ImageNet photo then costs about half as much, which is what lets one
host core cut more training views per second. Training views are cut from the smaller
image (small crops are upscaled more); with N = data.resize_size (256) evaluation views
differ from the paper's protocol only by the JPEG re-encoding. The setting is stored in
the metadata and enters every teacher-cache fingerprint of views read from the records.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
from typing import Sequence

import ml_collections
import numpy as np
from PIL import Image

from rrjax.data import sources, views


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _encoded(source, i: int, shorter_side: int = 0, quality: int = 95) -> bytes:
  """The stored bytes of example i: the original file where the source has one, unless
  `shorter_side` asks for a smaller image (see module doc)."""
  if not hasattr(source, "encoded"):
    image = source[i]["image"]
    return _png(image if not shorter_side else _shrunk(Image.fromarray(image), shorter_side))
  data = source.encoded(i)
  if not shorter_side:
    return data
  with Image.open(io.BytesIO(data)) as pil:
    if min(pil.size) <= shorter_side:
      return data
    small = _shrunk(pil.convert("RGB"), shorter_side)
    if pil.format != "JPEG":
      return _png(small)
  buffer = io.BytesIO()
  Image.fromarray(small).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def _shrunk(pil: Image.Image, shorter_side: int) -> np.ndarray:
  """The evaluation protocol's resize (`views.shorter_side_shape`, PIL bilinear)."""
  height, width = views.shorter_side_shape(pil.height, pil.width, shorter_side)
  return np.asarray(pil.resize((width, height), Image.BILINEAR))


def shard_ranges(num_examples: int, num_shards: int) -> list[tuple[int, int]]:
  bounds = [num_examples * k // num_shards for k in range(num_shards + 1)]
  return list(zip(bounds[:-1], bounds[1:]))


def write_records(source, out: str, split: str, *, num_shards: int = 1,
                  num_workers: int = 8, chunk: int = 256, shorter_side: int = 0,
                  quality: int = 95) -> str:
  """Writes `source` as records under `out`; returns the metadata path.

  Shards are written under temporary names and renamed, and the metadata is written
  last, so an interrupted run never leaves something `RecordSource` would read.
  `shorter_side` > 0 bounds the stored images' shorter side (module doc).
  """
  from array_record.python import array_record_module
  if not 1 <= num_shards <= max(len(source), 1):
    raise ValueError(f"--num_shards={num_shards} must be between 1 and the number of "
                     f"examples ({len(source)}).")
  if shorter_side < 0 or not 1 <= quality <= 100:
    raise ValueError(f"--shorter_side={shorter_side} must be >= 0 (0 keeps the images) and "
                     f"--quality={quality} in 1..100.")
  os.makedirs(out, exist_ok=True)
  labels = np.asarray(source.labels, np.int64)
  shards = []
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    for k, (start, stop) in enumerate(shard_ranges(len(source), num_shards)):
      name = f"{split}-{k:05d}-of-{num_shards:05d}.array_record"
      tmp_path = os.path.join(out, name + ".tmp")
      writer = array_record_module.ArrayRecordWriter(tmp_path, "group_size:1")
      for chunk_start in range(start, stop, chunk):
        ids = range(chunk_start, min(chunk_start + chunk, stop))
        stored = pool.map(lambda i: _encoded(source, i, shorter_side, quality), ids)
        for i, data in zip(ids, stored):
          writer.write(sources.encode_record(data, int(labels[i]), i))
      writer.close()
      os.replace(tmp_path, os.path.join(out, name))
      shards.append(name)
  metadata = {"format": sources.RECORD_FORMAT, "split": split, "num_examples": len(source),
              "class_names": list(source.class_names), "labels": labels.tolist(),
              "shards": shards, "origin": repr(source),
              "num_skipped": getattr(source, "num_skipped", 0),
              "preparation": {"shorter_side": shorter_side,
                              "quality": quality if shorter_side else None}}
  meta_path = sources.records_metadata_path(out, split)
  with open(meta_path + ".tmp", "w") as f:
    json.dump(metadata, f)
  os.replace(meta_path + ".tmp", meta_path)
  return meta_path


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", choices=["folder", "tfds"], required=True)
  parser.add_argument("--root", default="", help="image folder root, or tfds data_dir")
  parser.add_argument("--name", default="", help="tfds dataset name")
  parser.add_argument("--split", required=True)
  parser.add_argument("--wnids", default="", choices=["", *sources.WNID_LISTS])
  parser.add_argument("--out_of_class", action="store_true",
                      help="relabel the five unseen classes (SPEC §6, E5)")
  parser.add_argument("--skip_corrupt", action="store_true")
  parser.add_argument("--out", required=True)
  parser.add_argument("--num_shards", type=int, default=1)
  parser.add_argument("--num_workers", type=int, default=8)
  parser.add_argument("--shorter_side", type=int, default=0,
                      help="store images resized to this shorter side (0: as they are)")
  parser.add_argument("--quality", type=int, default=95,
                      help="JPEG quality of images --shorter_side re-encodes")
  args = parser.parse_args(argv)
  data_cfg = ml_collections.ConfigDict(dict(
      source=args.source, name=args.name, root=args.root, wnids=args.wnids,
      out_of_class=args.out_of_class, skip_corrupt=args.skip_corrupt,
      num_workers=args.num_workers))
  source = sources.build_source(data_cfg, args.split)
  meta_path = write_records(source, args.out, args.split, num_shards=args.num_shards,
                            num_workers=args.num_workers, shorter_side=args.shorter_side,
                            quality=args.quality)
  print(f"wrote {len(source)} examples ({getattr(source, 'num_skipped', 0)} skipped) of "
        f"{source!r} to {meta_path}")
  return meta_path


if __name__ == "__main__":
  main()

"""Input pipeline speed: decode + crop + batch at 224x224, from an image folder and records.

  python benchmarks/input_pipeline.py --num_images 512 --image_size 384 --num_workers 2

Generates a JPEG image folder (sides drawn around --image_size, like ImageNet's ~400x350
photos), prepares it into the record format, and times `TrainLoader` (training views:
random-resized-crop + flip) and `eval_batches` (resize 256, centre crop 224) on both.
Prints images/s of wall time and images per CPU-second (user + system time of this
process, i.e. per fully used core), the number that says how many cores a host needs
to feed its accelerators.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from rrjax.data import pipeline, prepare, sources, synthetic, views


def _measure(batches, num_batches: int) -> tuple[float, float, int]:
  """(wall seconds, CPU seconds, images) for `num_batches` batches after one warm-up."""
  next(batches)
  wall, cpu = time.perf_counter(), time.process_time()
  images = sum(next(batches)["image"].shape[0] for _ in range(num_batches))
  return time.perf_counter() - wall, time.process_time() - cpu, images


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_images", type=int, default=512)
  parser.add_argument("--image_size", type=int, default=384)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--num_batches", type=int, default=6)
  parser.add_argument("--num_workers", type=int, default=os.cpu_count())
  parser.add_argument("--workdir", default="")
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="rrjax_input_bench_")
  folder = os.path.join(workdir, "folder")
  num_classes = 8
  if not os.path.isdir(folder):
    synthetic.make_image_folder(folder, num_classes=num_classes,
                                per_class=args.num_images // num_classes,
                                splits=("train",), size=args.image_size, seed=0)
  records_dir = os.path.join(workdir, "records")
  folder_source = sources.ImageFolderSource(folder, "train")
  if not os.path.isfile(sources.records_metadata_path(records_dir, "train")):
    prepare.write_records(folder_source, records_dir, "train", num_shards=4,
                          num_workers=args.num_workers)
  spec = views.ViewSpec(size=224, resize_size=256)
  print(f"{len(folder_source)} JPEGs of ~{args.image_size}px in {workdir}; batch "
        f"{args.batch_size}, {args.num_workers} worker threads, {os.cpu_count()} CPUs")
  print(f"{'source':8s} {'views':6s} {'images/s':>9s} {'images/CPU-s':>13s}")
  for name, source in [("folder", folder_source),
                       ("records", sources.RecordSource(records_dir, "train"))]:
    train = pipeline.TrainLoader(source, global_batch_size=args.batch_size, view=spec,
                                 num_views=10, seed=0, process_index=0, process_count=1,
                                 num_workers=args.num_workers)
    evaluation = pipeline.eval_batches(source, global_batch_size=args.batch_size, view=spec,
                                       process_index=0, process_count=1,
                                       num_workers=args.num_workers)
    num_eval = min(args.num_batches, pipeline.num_eval_batches(len(source),
                                                               args.batch_size) - 1)
    for kind, batches, num_batches in [("train", train, args.num_batches),
                                       ("eval", evaluation, num_eval)]:
      wall, cpu, images = _measure(batches, num_batches)
      print(f"{name:8s} {kind:6s} {images / wall:9.1f} {images / cpu:13.1f}")
    train.close()


if __name__ == "__main__":
  main()

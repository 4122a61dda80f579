"""Input pipeline speed: decode + crop + batch at 224x224, from an image folder and records.

  python benchmarks/input_pipeline.py --photos ../shared/photos --num_images 512 --num_workers 1 2

With `--photos DIR`, the folder is cut from the photos in DIR: random crops of
--photo_size (500x375 by default, ImageNet's most common size) of randomly rescaled,
randomly mirrored photos, saved as JPEG quality 90, so decoding costs what it costs on
ImageNet. --decode picks `ViewSpec.decode` ("draft": reduced-size JPEG decoding of
training views whose crop box is at least twice the output size). Without it, generated
images (sides drawn around --image_size) are used. The folder is prepared into the record
format, and `TrainLoader` (training views: random-resized-crop + flip) and `eval_batches`
(resize 256, centre crop 224) are timed on both, for each --num_workers.
Prints images/s of wall time and images per CPU-second (user + system time of this
process and of the worker processes cutting views, i.e. per fully used core), the number
that says how many cores a host needs to feed its accelerators.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

from rrjax.data import pipeline, prepare, sources, synthetic, views, workers


def cut_photos(photos_dir: str, root: str, *, num_images: int, num_classes: int,
               width: int, height: int, seed: int = 0) -> None:
  """`root/train/<class>/*.jpg`: random width x height crops of the photos in
  `photos_dir`."""
  paths = sorted(os.path.join(photos_dir, f) for f in os.listdir(photos_dir)
                 if f.lower().endswith(sources.IMAGE_EXTENSIONS))
  if not paths:
    raise FileNotFoundError(f"no images in --photos {photos_dir!r}.")
  photos = [Image.open(p).convert("RGB") for p in paths]
  rng = np.random.default_rng(seed)
  for i in range(num_images):
    photo = photos[i % len(photos)]
    # Rescale so the crop still fits, by up to 1.5x more than needed: crops differ in
    # content and scale, as photos do.
    fit = max(height / photo.height, width / photo.width)
    scale = fit * rng.uniform(1.0, 1.5)
    image = photo.resize((int(np.ceil(photo.width * scale)),
                          int(np.ceil(photo.height * scale))), Image.BILINEAR)
    top = int(rng.integers(0, image.height - height + 1))
    left = int(rng.integers(0, image.width - width + 1))
    image = image.crop((left, top, left + width, top + height))
    if rng.random() < 0.5:
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    class_dir = os.path.join(root, "train", f"class_{i % num_classes:02d}")
    os.makedirs(class_dir, exist_ok=True)
    image.save(os.path.join(class_dir, f"{i:06d}.jpg"), quality=90)


def _measure(batches, cutter: workers.ViewCutter,
             num_batches: int) -> tuple[float, float, int]:
  """(wall seconds, CPU seconds of this process and the workers, images) for
  `num_batches` batches after one warm-up."""
  next(batches)
  cpu = lambda: time.process_time() + cutter.worker_cpu_seconds
  wall, cpu_start = time.perf_counter(), cpu()
  images = sum(next(batches)["image"].shape[0] for _ in range(num_batches))
  return time.perf_counter() - wall, cpu() - cpu_start, images


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--photos", default="", help="cut ImageNet-sized JPEGs from these")
  parser.add_argument("--photo_size", type=int, nargs=2, default=[500, 375],
                      metavar=("WIDTH", "HEIGHT"))
  parser.add_argument("--decode", choices=views.DECODES, default="full")
  parser.add_argument("--num_images", type=int, default=512)
  parser.add_argument("--image_size", type=int, default=384)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--num_batches", type=int, default=6)
  parser.add_argument("--num_workers", type=int, nargs="+", default=[os.cpu_count()])
  parser.add_argument("--shorter_side", type=int, default=256,
                      help="also time records prepared with this --shorter_side (0: skip)")
  parser.add_argument("--workdir", default="")
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="rrjax_input_bench_")
  folder = os.path.join(workdir, "folder")
  num_classes = 8
  if not os.path.isdir(folder):
    if args.photos:
      cut_photos(args.photos, folder, num_images=args.num_images, num_classes=num_classes,
                 width=args.photo_size[0], height=args.photo_size[1])
    else:
      synthetic.make_image_folder(folder, num_classes=num_classes,
                                  per_class=args.num_images // num_classes,
                                  splits=("train",), size=args.image_size, seed=0)
  folder_source = sources.ImageFolderSource(folder, "train")
  timed = [("folder", folder_source)]
  for name, shorter_side in [("records", 0), (f"rec{args.shorter_side}", args.shorter_side)]:
    records_dir = os.path.join(workdir, name)
    if not os.path.isfile(sources.records_metadata_path(records_dir, "train")):
      prepare.write_records(folder_source, records_dir, "train", num_shards=4,
                            num_workers=max(max(args.num_workers), 1),
                            shorter_side=shorter_side)
    timed.append((name, sources.RecordSource(records_dir, "train")))
    if not args.shorter_side:
      break
  spec = views.ViewSpec(size=224, resize_size=256, decode=args.decode)
  images_desc = (f"{args.photo_size[0]}x{args.photo_size[1]} photo crops from {args.photos}"
          if args.photos else f"generated ~{args.image_size}px images")
  print(f"{len(folder_source)} JPEGs ({images_desc}) in {workdir}; batch {args.batch_size}, "
        f"decode={args.decode}, {os.cpu_count()} CPUs")
  print(f"{'source':8s} {'views':6s} {'workers':>7s} {'images/s':>9s} {'images/CPU-s':>13s}")
  for name, source in timed:
    for num_workers in args.num_workers:
      with workers.ViewCutter(source, spec, 0, num_workers) as cutter:
        train = pipeline.TrainLoader(source, global_batch_size=args.batch_size, view=spec,
                                     num_views=10, seed=0, process_index=0,
                                     process_count=1, cutter=cutter)
        evaluation = pipeline.eval_batches(source, global_batch_size=args.batch_size,
                                           view=spec, process_index=0, process_count=1,
                                           cutter=cutter)
        num_eval = min(args.num_batches, pipeline.num_eval_batches(len(source),
                                                                   args.batch_size) - 1)
        for kind, batches, num_batches in [("train", train, args.num_batches),
                                           ("eval", evaluation, num_eval)]:
          wall, cpu, images = _measure(batches, cutter, num_batches)
          print(f"{name:8s} {kind:6s} {num_workers:7d} {images / wall:9.1f} "
                f"{images / cpu:13.1f}")
        train.close()
        evaluation.close()


if __name__ == "__main__":
  main()

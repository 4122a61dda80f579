"""Teacher-cache build speed next to the teacher's own forward speed, on the same devices.

  python benchmarks/teacher_cache.py --teacher rn101 --num_images 256 --batch_size 64
  python benchmarks/teacher_cache.py --teacher timm/resnet101_clip.openai --dtype bfloat16

--teacher: "rn101" (default; the paper's teacher, CLIP RN101) or "vit_b32" (CLIP
ViT-B/32): that image tower with random weights (`common.RandomCLIPTower`), the real
teacher's shape and cost without a download; "tiny" (the test-sized random CLIP, written
to disk and read back as a checkpoint); or a CLIP checkpoint directory / hub id
(open_clip or transformers layout). Generates a JPEG image folder (sides around
--image_px), then prints images/s of
- the teacher's pure forward: the jitted, sharded apply on a batch already on device;
- decode + crop alone on the host threads (what the host can feed);
- the cache build: decode, crop, transfer, forward, float16 storage, chunk writes;
and the ratio build / forward (target: >= 0.8 on accelerators, where the host has
enough cores to keep up; on a small CPU host the forward and the decoding share cores).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np

from common import make_teacher  # benchmarks/common.py
from rrjax import sharding
from rrjax.cache import TeacherForward, build_cache
from rrjax.data import sources, synthetic, views, workers


def forward_images_per_s(forward: TeacherForward, batch_size: int, image_size: int,
                         num_batches: int) -> float:
  """Throughput of the forward alone: one batch already on device, compiled, repeated."""
  images = np.random.default_rng(0).integers(0, 256, (batch_size, image_size, image_size, 3),
                                             dtype=np.uint8)
  on_device = forward.put(images)
  jax.block_until_ready(forward(on_device))  # Compile.
  start = time.perf_counter()
  outputs = [forward(on_device) for _ in range(num_batches)]
  jax.block_until_ready(outputs)
  return num_batches * batch_size / (time.perf_counter() - start)


def host_images_per_s(source, spec: views.ViewSpec, num_workers: int,
                      batch: int = 64) -> float:
  """Decode + crop of view 1 of every example by `num_workers` view-cutting processes
  (`rrjax.data.workers`, as the cache builder runs them), nothing else."""
  with workers.ViewCutter(source, spec, 0, num_workers) as cutter:
    start = time.perf_counter()
    count = 0
    for first in range(0, len(source), batch):
      rows = list(range(first, min(first + batch, len(source))))
      count += len(cutter.collect(cutter.submit(rows, [1] * len(rows)))["image"])
  return count / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--teacher", default="rn101")
  parser.add_argument("--dtype", default="float32", help="teacher compute dtype")
  parser.add_argument("--num_images", type=int, default=256)
  parser.add_argument("--image_px", type=int, default=320, help="source image side")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--num_views", type=int, default=1, help="training views cached")
  parser.add_argument("--forward_batches", type=int, default=4)
  parser.add_argument("--num_workers", type=int, default=os.cpu_count())
  parser.add_argument("--workdir", default="")
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="rrjax_cache_bench_")

  teacher = make_teacher(args.teacher, args.dtype, workdir)
  folder = os.path.join(workdir, f"folder_{args.num_images}_{args.image_px}")
  if not os.path.isdir(folder):
    synthetic.make_image_folder(folder, num_classes=4, per_class=-(-args.num_images // 4),
                                splits=("train",), size=args.image_px, seed=0)
  source = sources.ImageFolderSource(folder, "train")
  spec = views.ViewSpec(size=teacher.image_size,
                        resize_size=teacher.image_size * 256 // 224)
  forward = TeacherForward(teacher, sharding.make_mesh(jax.local_devices()))

  forward_rate = forward_images_per_s(forward, args.batch_size, teacher.image_size,
                                      args.forward_batches)
  host_rate = host_images_per_s(source, spec, args.num_workers)
  report = build_cache(teacher, source, os.path.join(workdir, f"cache_{time.time_ns()}"),
                       view_spec=spec, views=range(1, args.num_views + 1), seed=0,
                       batch_size=args.batch_size, dataset={"name": folder},
                       forward=forward, num_workers=args.num_workers)

  devices = jax.local_devices()
  print(f"teacher {args.teacher} ({args.dtype}, {teacher.image_size}px, dim {teacher.dim}) "
        f"on {len(devices)} x {devices[0].device_kind}; batch {args.batch_size}; "
        f"{len(source)} JPEGs of ~{args.image_px}px x {args.num_views} view(s); "
        f"{args.num_workers} host threads, {os.cpu_count()} CPUs")
  print(f"{'teacher forward (on device)':32s} {forward_rate:10.1f} images/s")
  print(f"{'host decode + crop':32s} {host_rate:10.1f} images/s")
  print(f"{'cache build':32s} {report.images_per_s:10.1f} images/s "
        f"({report.images_computed} images in {report.seconds:.1f} s)")
  print(f"{'build / forward':32s} {report.images_per_s / forward_rate:10.2f}")


if __name__ == "__main__":
  main()

"""bfloat16 and float16 student training against float32, on real photos and a real teacher.

`student.dtype="auto"` trains in bfloat16 on GPUs and TPUs. This checks what that costs
in accuracy: the same student, data, seed and steps in each compute dtype (parameters,
optimiser state, BatchNorm statistics and the loss stay float32 in all of them; float16
adds its dynamic loss scale), each then probed on its frozen features of masked test
images, 3 corruption draws.

  pip install ai-edge-litert  # the LiteRT interpreter, only for the teacher
  python benchmarks/mixed_precision.py --root ../shared/realdata/imagenette10 \
      --tflite ../shared/realdata/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite

The setting is `benchmarks/probe_solvers.py`'s: an image folder `ROOT/{train,val}/<class>/`
and a `.tflite` image encoder as the plug-in teacher, cached once and shared by every
run; a ResNet-18 student from random weights at --image_size px trained on mask p=0.9
views against the teacher's clean embeddings with the paper's loss (`configs/mask.py`).
On a CPU, bfloat16 and float16 are emulated and much slower than float32: the point here
is their accuracy, not their speed. The target is bfloat16 within 1 point of float32.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import ml_collections

import probe_solvers
from rrjax import config as config_lib
from rrjax import stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# float16's initial dynamic loss scale (halved on overflow, doubled after 2000 good steps).
FLOAT16_LOSS_SCALE = 2.0**15


def run_config(dtype: str, args, cache_path: str) -> ml_collections.ConfigDict:
  """configs/mask.py with a ResNet-18 student in `dtype` on the folder and teacher of
  `args`; every run reads the one teacher cache at `cache_path`."""
  config = config_lib.load_config(os.path.join(REPO, f"configs/mask.py:p={args.p}"))
  with config.unlocked():
    probe_solvers.on_real_photos(config, args)
    config.data.update(image_size=args.image_size, resize_size=args.image_size * 256 // 224)
    config.cache.update(path=cache_path, num_views=args.epochs, batch_size=64)
    config.student.update(model="resnet18", init="random", dtype=dtype)
    config.optimizer.loss_scale = FLOAT16_LOSS_SCALE if dtype == "float16" else 0.0
    config.batch_size, config.num_epochs = args.batch_size, args.epochs
    config.probe.solver = args.solver
    config.evals = config_lib.evals("classification")
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  probe_solvers.add_real_photo_arguments(parser)
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
  parser.add_argument("--image_size", type=int, default=64, help="the student's input px")
  parser.add_argument("--epochs", type=int, default=10, help="one cached view per epoch")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--solver", default="lbfgs", choices=config_lib.PROBE_SOLVERS,
                      help="the probe (lbfgs: converged, so the features alone differ)")
  args = parser.parse_args()
  root = args.keep or tempfile.mkdtemp(prefix="mixed_precision_")
  cache_path = os.path.join(root, "teacher_cache")
  lines = ["| student compute dtype | probe test top-1 (%) | final loss | student seconds |",
           "| --- | --- | --- | --- |"]
  for dtype in args.dtypes:
    workdir = os.path.join(root, dtype)
    start = time.perf_counter()
    stages.run_stages(run_config(dtype, args, cache_path), workdir)
    with open(os.path.join(workdir, "results.json")) as f:
      (row,) = json.load(f)["results"]
    with open(os.path.join(workdir, "student", "done.json")) as f:
      summary = json.load(f)["summary"]
    lines.append(f"| {dtype} | {row['top1']['mean']:.1f} ± {row['top1']['sem']:.1f} | "
                 f"{summary['final_metrics']['loss']:.3f} | {summary['train_seconds']:.0f} |")
    print(f"{dtype}: {time.perf_counter() - start:.0f} s", flush=True)
  print(f"ResNet-18 student at {args.image_size} px, {args.epochs} epochs of batch "
        f"{args.batch_size}, teacher {os.path.basename(args.tflite)} on {args.root}, mask "
        f"p={args.p}, {args.solver} probe, {args.repeats} test draws (workdirs in {root}):")
  print("\n".join(lines))


if __name__ == "__main__":
  main()

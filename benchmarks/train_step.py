"""Student training-step speed, per student and batch size, on all local devices.

  python benchmarks/train_step.py                                  # GPU/TPU defaults
  python benchmarks/train_step.py --students clip_rn101 resnet50 --batch_sizes 8 \
      --image_size 64 --skip_online                                # CPU

Students: "clip_rn101", the paper's (CLIP RN101's image tower initialised from the
teacher's weights, as `student.model="clip", student.init="teacher"`, BatchNorm in
train mode), "clip_vit_b32" (the same for CLIP ViT-B/32), and the ResNet students
("resnet50", "resnet101", ..., random init). The CLIP towers are rrjax's own with random
weights (`common.RandomCLIPTower`: the real models' cost without a download) at
--image_size (a multiple of 32; 224 is the published models' size, smaller sizes only
shrink the token grid, for CPU runs).

For each student and global batch size it prints: images/s and step time with cached
teacher targets; the share of the step the corruption operator takes (the operator timed
alone on the same batch); the online-teacher step time (the random --teacher run inside
the step, the paper's RN101 by default) and the cached/online speed-up; model FLOPs
utilisation where the device's peak is known (`rrjax.train.PEAK_FLOPS`, or --peak_tflops
per device).
Then the evaluation protocol for the first student: decoding each image once and drawing
R corruptions on device, against re-reading and re-decoding the data for each of the R
draws.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from common import TOWERS, RandomCLIPTower, seconds_per_call
from rrjax import evaluate, models, objectives, operators, sharding, train
from rrjax.data import pipeline, sources, synthetic, views
from rrjax.models import clip

# CLIP students by name -> the random tower (`common.TOWERS`) they are initialised from.
CLIP_STUDENTS = {f"clip_{tower}": tower for tower in TOWERS}


def make_student(name: str, dim: int, image_size: int, dtype: str, towers):
  """(module, variables). CLIP students start from the teacher tower's float32 weights
  and BatchNorm statistics (`towers(name)` -> `RandomCLIPTower`), as
  `models.init_variables` does for init="teacher"; ResNets are randomly initialised."""
  if name in CLIP_STUDENTS:
    tower = towers(CLIP_STUDENTS[name])
    if dim != tower.dim:
      raise ValueError(f"{name} embeds to {tower.dim}, not {dim}: CLIP students have no head.")
    module = clip.CLIPImageEncoder(tower.spec, models.parse_dtype(dtype, "--dtype"))
    return module, jax.tree.map(jnp.asarray, tower.variables)
  cfg = ml_collections.ConfigDict({"model": name, "init": "random", "dtype": dtype})
  module = models.build_model(cfg, dim)
  return module, models.init_variables(cfg, module, jax.random.key(0), image_size)


def step_seconds(module, variables, operator, batch, mesh, teacher=None) -> tuple[float, float]:
  """(seconds per step, FLOPs per step) of the jitted, sharded student step."""
  tx = train.make_optimizer(learning_rate=3e-4, total_steps=1000, weight_decay=1e-4)
  state = train.create_state(variables["params"],
                             {k: v for k, v in variables.items() if k != "params"}, tx)
  loss_fn = objectives.student_loss(module, operator, kind="student_teacher",
                                    temperature=0.1,
                                    online_teacher=None if teacher is None else teacher.apply)
  frozen = None if teacher is None else sharding.replicate(teacher.params, mesh)
  step = jax.jit(lambda s, b, k, f: train.train_step(s, b, k, f, loss_fn=loss_fn))
  state = sharding.replicate(state, mesh)
  key = jax.random.key(0)
  flops = step.lower(state, batch, key, frozen).compile().cost_analysis().get("flops", 0.0)
  return seconds_per_call(step, state, batch, key, frozen), flops


def eval_protocol(args, mesh, module, variables, operator) -> None:
  """Decode once + R draws on device, against R passes that each re-read the data."""
  with tempfile.TemporaryDirectory() as root:
    synthetic.make_image_folder(root, num_classes=4, per_class=args.eval_images // 4,
                                splits=("val",), size=int(args.image_size * 1.3))
    source = sources.ImageFolderSource(root, "val")
    view = views.ViewSpec(size=args.image_size, resize_size=int(args.image_size * 8 / 7))
    batch_size = args.batch_sizes[0]
    decode = lambda: list(pipeline.eval_batches(source, global_batch_size=batch_size, view=view,
                                                num_workers=args.num_workers))
    start = time.perf_counter()
    batches = decode()
    decode_seconds = time.perf_counter() - start
    embed = objectives.student_features(module)
    device_seconds = {}
    for repeats in (1, args.repeats):
      run = lambda: evaluate.collect_outputs(embed, variables, batches, mesh=mesh,
                                             key=jax.random.key(0), repeats=repeats,
                                             operator=operator)
      run()  # Compile.
      start = time.perf_counter()
      run()
      device_seconds[repeats] = time.perf_counter() - start
  once = decode_seconds + device_seconds[args.repeats]
  reread = args.repeats * (decode_seconds + device_seconds[1])
  print(f"eval protocol, {len(source)} images, R={args.repeats}: decode once + R draws on "
        f"device {once:.2f}s; re-reading for each draw {reread:.2f}s; speed-up "
        f"{reread / once:.2f}x (decode {decode_seconds:.2f}s, 1 draw "
        f"{device_seconds[1]:.2f}s, R draws {device_seconds[args.repeats]:.2f}s)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--students", nargs="+",
                      default=["resnet50", "resnet101", *CLIP_STUDENTS])
  parser.add_argument("--batch_sizes", nargs="+", type=int, default=[128, 256])
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--operator", default='{"kind": "mask", "p": 0.9}')
  parser.add_argument("--peak_tflops", type=float, default=0.0)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--eval_images", type=int, default=64)
  parser.add_argument("--num_workers", type=int, default=8)
  parser.add_argument("--teacher", default="rn101", choices=sorted(TOWERS),
                      help="the random teacher run inside the online step")
  parser.add_argument("--skip_online", action="store_true")
  args = parser.parse_args()
  unknown = [n for n in args.students if n not in (*CLIP_STUDENTS, *models.resnet.PRESETS)]
  if unknown:
    parser.error(f"unknown students {unknown}; choose from "
                 f"{[*CLIP_STUDENTS, *models.resnet.PRESETS]}.")

  mesh = sharding.make_mesh()
  device = jax.devices()[0].device_kind
  # cost_analysis() counts one device's share of the step's FLOPs: compare with one peak.
  peak = args.peak_tflops * 1e12 or train.PEAK_FLOPS.get(device, 0.0)
  operator = operators.build(json.loads(args.operator))
  # One random tower per architecture, shared by the online teacher and the CLIP student
  # initialised from it.
  towers = functools.cache(lambda name: RandomCLIPTower(name, args.dtype, args.image_size))
  teacher = None if args.skip_online else towers(args.teacher)
  print(f"{mesh.devices.size} x {device}, dtype {args.dtype}, {args.image_size}px, operator "
        f"{operators.describe(json.loads(args.operator))}, online teacher "
        f"{'skipped' if teacher is None else 'random ' + args.teacher}")
  first = None
  for name in args.students:
    module, variables = make_student(name, 512, args.image_size, args.dtype, towers)
    first = first or (module, variables)
    for batch_size in args.batch_sizes:
      rng = np.random.default_rng(0)
      host = {"image": rng.integers(0, 256, (batch_size, args.image_size, args.image_size, 3),
                                    dtype=np.uint8),
              "target": rng.normal(size=(batch_size, 512)).astype(np.float32)}
      batch = sharding.shard_batch(host, mesh)
      cached, flops = step_seconds(module, variables, operator, batch, mesh)
      corrupt = jax.jit(lambda k, x: operator(k, x.astype(jnp.float32) / 255))
      op_seconds = seconds_per_call(corrupt, jax.random.key(0), batch["image"])
      line = (f"{name:13s} batch {batch_size:4d}: {batch_size / cached:9.1f} img/s, step "
              f"{cached * 1e3:8.1f} ms, operator {100 * op_seconds / cached:5.1f}% of step")
      if peak:
        line += f", MFU {100 * flops / cached / peak:5.1f}%"
      if teacher is not None:
        online, _ = step_seconds(module, variables, operator, batch, mesh, teacher)
        line += (f", online teacher step {online * 1e3:8.1f} ms (cached {online / cached:.2f}x "
                 "faster)")
      print(line, flush=True)
  eval_protocol(args, mesh, *first, operator)


if __name__ == "__main__":
  main()

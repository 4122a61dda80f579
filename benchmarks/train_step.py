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
per device). With --torch_reference (CLIP ResNet students, float32, a fixed-rate mask;
torch and open_clip from the test extra) also the same step in eager PyTorch on
open_clip's ModifiedResNet with the same weights, timed in alternation with rrjax's
online-teacher step (cached with --skip_online), and rrjax's speed as a ratio of
PyTorch's:

  python benchmarks/train_step.py --students clip_rn101 --batch_sizes 8 --image_size 224 \
      --dtype float32 --torch_reference                            # CPU, against PyTorch

Then the evaluation protocol for the first student: decoding each image once and drawing
R corruptions on device, against re-reading and re-decoding the data for each of the R
draws.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import time
from typing import Callable

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
# Those the PyTorch reference runs: open_clip's ModifiedResNet.
RESNET_CLIP_STUDENTS = [f"clip_{name}" for name, vision in TOWERS.items()
                        if vision(224).kind == "resnet"]
TEST_SUPPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "tests", "support")
# The step's hyper-parameters, shared by rrjax's step and the PyTorch reference.
LEARNING_RATE, TOTAL_STEPS, WEIGHT_DECAY, TEMPERATURE = 3e-4, 1000, 1e-4, 0.1


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


def make_step(module, variables, operator, batch, mesh, teacher=None) -> tuple[Callable, float]:
  """(run, FLOPs per step): `run()` makes one jitted, sharded student step (from the same
  state each time) and waits for it."""
  tx = train.make_optimizer(learning_rate=LEARNING_RATE, total_steps=TOTAL_STEPS,
                            weight_decay=WEIGHT_DECAY)
  state = train.create_state(variables["params"],
                             {k: v for k, v in variables.items() if k != "params"}, tx)
  loss_fn = objectives.student_loss(module, operator, kind="student_teacher",
                                    temperature=TEMPERATURE,
                                    online_teacher=None if teacher is None else teacher.apply)
  frozen = None if teacher is None else sharding.replicate(teacher.params, mesh)
  step = jax.jit(lambda s, b, k, f: train.train_step(s, b, k, f, loss_fn=loss_fn))
  state = sharding.replicate(state, mesh)
  key = jax.random.key(0)
  flops = step.lower(state, batch, key, frozen).compile().cost_analysis().get("flops", 0.0)
  return lambda: jax.block_until_ready(step(state, batch, key, frozen)), flops


def step_seconds(module, variables, operator, batch, mesh, teacher=None) -> tuple[float, float]:
  """(seconds per step, FLOPs per step) of the jitted, sharded student step."""
  run, flops = make_step(module, variables, operator, batch, mesh, teacher)
  return seconds_per_call(run), flops


def check_torch_reference(args, parser) -> None:
  """The PyTorch reference mirrors one configuration: say which before compiling anything."""
  spec = json.loads(args.operator)
  problems = [f"student {n!r} (only CLIP ResNet students: {RESNET_CLIP_STUDENTS})"
              for n in args.students if n not in RESNET_CLIP_STUDENTS]
  if set(spec) != {"kind", "p"} or spec["kind"] != "mask" or not isinstance(spec["p"], float):
    problems.append(f"--operator {args.operator} (only a fixed-rate mask, e.g. "
                    '\'{"kind": "mask", "p": 0.9}\')')
  if args.dtype != "float32":
    problems.append(f"--dtype {args.dtype} (float32 only)")
  if not args.skip_online and f"clip_{args.teacher}" not in RESNET_CLIP_STUDENTS:
    problems.append(f"--teacher {args.teacher} (only CLIP ResNet teachers)")
  if problems:
    parser.error("--torch_reference cannot run " + "; ".join(problems) + ".")


def torch_reference_step(student_tower, teacher_tower, p: float,
                         host: dict) -> tuple[Callable, str]:
  """(`run`, what it is): `run()` makes one eager PyTorch training step of the same computation as `make_step`, on
  open_clip's ModifiedResNet (the authors' model code) with the same weights: mask
  `floor(H*W*p)` uniformly drawn pixels per image, the teacher's embedding of the clean
  image (frozen, eval mode; `teacher_tower` None: the batch's cached targets), the
  student in train mode on the masked image, the student_teacher loss, backward, the
  metrics rrjax's step reports (cosine, gradient and parameter norms), and AdamW with
  the same hyper-parameters, weight decay on matrices only and a per-step cosine
  schedule. Needs the test extra (torch, open_clip)."""
  # Imported here: torch and open_clip come with the test extra, not with rrjax.
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  if TEST_SUPPORT not in sys.path:
    sys.path.insert(0, TEST_SUPPORT)
  from open_clip_ref import import_open_clip  # pylint: disable=import-outside-toplevel
  modified_resnet = import_open_clip().modified_resnet.ModifiedResNet

  def build(tower):
    v = tower.spec.vision
    model = modified_resnet(v.layers, tower.spec.embed_dim, v.heads, v.image_size, v.width)
    state = clip.convert.to_state_dict(tower.variables, clip.convert.open_clip_table(tower.spec))
    model.load_state_dict({k.removeprefix("visual."): torch.tensor(a) for k, a in state.items()})
    return model

  preprocess = student_tower.spec.preprocess
  mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
  std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
  images = torch.from_numpy(host["image"]).permute(0, 3, 1, 2).float() / 255
  batch, _, height, width = images.shape
  count = math.floor(round(height * width * p, 6))  # As rrjax's mask counts.
  student = build(student_tower).eval()
  # The same network and weights: the clean images' embeddings agree with rrjax's.
  with torch.no_grad():
    ours = np.asarray(student_tower.embed(host["image"]))
    error = np.max(np.abs(student((images - mean) / std).numpy() - ours)) / np.max(np.abs(ours))
  student.train()
  teacher = None if teacher_tower is None else build(teacher_tower).eval().requires_grad_(False)
  cached_targets = torch.from_numpy(host["target"])
  params = list(student.parameters())
  optimizer = torch.optim.AdamW(
      [{"params": [q for q in params if q.ndim > 1], "weight_decay": WEIGHT_DECAY},
       {"params": [q for q in params if q.ndim <= 1], "weight_decay": 0.0}], lr=LEARNING_RATE)
  schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, TOTAL_STEPS)

  def run():
    if teacher is None:
      targets = cached_targets
    else:
      with torch.no_grad():
        targets = teacher((images - mean) / std)
    keys = torch.rand(batch, height * width)
    masked = keys <= keys.kthvalue(count, dim=1, keepdim=True).values
    corrupted = images * ~masked.view(batch, 1, height, width)
    s = F.normalize(student((corrupted - mean) / std), dim=-1)
    t = F.normalize(targets, dim=-1)
    loss = F.cross_entropy(s @ t.T / TEMPERATURE, torch.arange(batch))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
      metrics = torch.stack([(s * t).sum(-1).mean(),
                             torch.linalg.vector_norm(torch.stack([
                                 torch.linalg.vector_norm(q.grad) for q in params]))])
    optimizer.step()
    schedule.step()
    with torch.no_grad():
      param_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(q)
                                                         for q in params]))
    return loss.item(), metrics.tolist(), param_norm.item()

  return run, (f"open_clip's ModifiedResNet, eager, {torch.get_num_threads()} threads; "
               f"embeddings as rrjax's to {error:.0e}")


def paired_seconds(first: Callable, second: Callable, repeats: int = 5) -> tuple[float, float]:
  """Median seconds of `first()` and of `second()`, timed in alternation after one
  warm-up call each, so that load from other jobs on a shared machine falls on both."""
  first()
  second()
  times = []
  for _ in range(repeats):
    pair = []
    for fn in (first, second):
      start = time.perf_counter()
      fn()
      pair.append(time.perf_counter() - start)
    times.append(pair)
  return tuple(float(t) for t in np.median(times, axis=0))


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
  parser.add_argument("--torch_reference", action="store_true",
                      help="also time the same step in PyTorch (open_clip's ModifiedResNet; "
                      "float32 CLIP ResNet students, mask operator; needs the test extra)")
  args = parser.parse_args()
  unknown = [n for n in args.students if n not in (*CLIP_STUDENTS, *models.resnet.PRESETS)]
  if unknown:
    parser.error(f"unknown students {unknown}; choose from "
                 f"{[*CLIP_STUDENTS, *models.resnet.PRESETS]}.")
  if args.torch_reference:
    check_torch_reference(args, parser)

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
      cached_run, flops = make_step(module, variables, operator, batch, mesh)
      online_run = None if teacher is None else make_step(module, variables, operator, batch,
                                                          mesh, teacher)[0]
      compared = cached_run if online_run is None else online_run  # What PyTorch mirrors.
      if args.torch_reference:
        reference, agreement = torch_reference_step(towers(CLIP_STUDENTS[name]), teacher,
                                                    json.loads(args.operator)["p"], host)
        compared_seconds, reference_seconds = paired_seconds(compared, reference)
      else:
        compared_seconds = seconds_per_call(compared)
      cached = compared_seconds if compared is cached_run else seconds_per_call(cached_run)
      corrupt = jax.jit(lambda k, x: operator(k, x.astype(jnp.float32) / 255))
      op_seconds = seconds_per_call(corrupt, jax.random.key(0), batch["image"])
      line = (f"{name:13s} batch {batch_size:4d}: {batch_size / cached:9.1f} img/s, step "
              f"{cached * 1e3:8.1f} ms, operator {100 * op_seconds / cached:5.1f}% of step")
      if peak:
        line += f", MFU {100 * flops / cached / peak:5.1f}%"
      if online_run is not None:
        line += (f", online teacher step {compared_seconds * 1e3:8.1f} ms (cached "
                 f"{compared_seconds / cached:.2f}x faster)")
      print(line, flush=True)
      if args.torch_reference:
        print(f"  PyTorch reference ({agreement}), "
              f"{'online' if online_run is not None else 'cached'} teacher: step "
              f"{reference_seconds * 1e3:8.1f} ms against rrjax's {compared_seconds * 1e3:8.1f} "
              f"ms, timed in alternation: rrjax at {reference_seconds / compared_seconds:.2f}x "
              "PyTorch's speed", flush=True)
  eval_protocol(args, mesh, *first, operator)


if __name__ == "__main__":
  main()

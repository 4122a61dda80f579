"""How much of the student stage's wall time is spent outside the compiled step.

Runs the smoke config's cache and student stages end to end on CPU (generated images, the
tiny random CLIP as teacher, the teacher cache read from disk) with a randomly initialised
ResNet student whose step is slower than the loader, then times the loader alone and the
same compiled step alone on one prepared batch.
The training loop's wall time (from its `metrics.jsonl` windows, compilation excluded)
minus the steps' own time is what the loop adds: waiting for the loader, teacher-cache
lookups, transfers and dispatch. Target: under 5%.

  python benchmarks/loop_overhead.py [--student resnet18] [--epochs 20] [--batch_size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax

from rrjax import config as config_lib
from rrjax import objectives, sharding, stages, train
from rrjax.stages import student as student_stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loop_windows(workdir: str) -> tuple[int, float, float]:
  """(steps, seconds, seconds waiting for input) of the student loop's logged windows."""
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  records = [r for r in records if "student/steps_per_sec" in r]
  steps = seconds = waiting = 0.0
  previous = 0
  for r in records:
    window_steps = r["step"] - previous
    window_seconds = window_steps / r["student/steps_per_sec"]
    steps, seconds = steps + window_steps, seconds + window_seconds
    waiting += r["student/input_wait_fraction"] * window_seconds
    previous = r["step"]
  return int(steps), seconds, waiting


def loader_alone(ctx: stages.Context, batches: int) -> tuple[float, dict]:
  """Mean seconds per batch of the training loader read on its own, and its first batch."""
  loader = ctx.train_loader(ctx.train_source, ctx.config.batch_size)
  try:
    first = next(loader)
    start = time.perf_counter()
    for _ in range(batches):
      next(loader)
    return (time.perf_counter() - start) / batches, first
  finally:
    loader.close()


def step_alone(ctx: stages.Context, host_batch: dict, repeats: int) -> float:
  """Mean seconds of the student's compiled step run back to back on one batch, each
  waited for, as the loop does on CPU."""
  config = ctx.config
  batch = sharding.shard_batch(ctx.with_targets(host_batch), ctx.mesh)
  state = sharding.place_state(student_stage.initial_state(ctx, 1000), ctx.mesh)
  loss_fn = objectives.student_loss(student_stage.model(ctx), ctx.operator,
                                    kind=config.loss.kind, temperature=config.loss.temperature)
  key = sharding.replicate(ctx.key("student"), ctx.mesh)
  step = jax.jit(lambda s, b, k: train.train_step(s, b, k, None, loss_fn=loss_fn),
                 donate_argnums=0).lower(state, batch, key).compile()
  state, metrics = step(state, batch, key)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(repeats):
    state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / repeats


def lookup_seconds(cache, batch: dict, repeats: int = 200) -> float:
  start = time.perf_counter()
  for _ in range(repeats):
    cache.lookup(batch["id"], batch["view"])
  return (time.perf_counter() - start) / repeats


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--student", default="resnet18", help="a ResNet preset (random init)")
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--log_every", type=int, default=20)
  parser.add_argument("--workdir", default="")
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="rrjax_loop_overhead_")
  os.environ.setdefault("RRJAX_SMOKE_DIR", os.path.join(workdir, "assets"))
  config = config_lib.load_config(os.path.join(REPO, "configs", "mask.py") + ":smoke")
  config.unlock()
  config.student.model, config.student.width, config.student.init = args.student, 64, "random"
  config.batch_size, config.num_epochs = args.batch_size, args.epochs
  config.log_every_steps = args.log_every
  config.checkpoint_every_steps = 10**9  # Only the final checkpoint: the loop, not orbax.
  config.stages = ("cache", "student")
  stages.run_stages(config, workdir)

  ctx = stages.Context(config=config, workdir=workdir, mesh=sharding.make_mesh())
  steps, loop_seconds, waiting = loop_windows(workdir)
  loader_seconds, batch = loader_alone(ctx, batches=50)
  alone = step_alone(ctx, batch, repeats=min(steps, 100))
  outside = 1 - steps * alone / loop_seconds
  ctx.close()  # The loader's worker processes.
  resident = ctx.train_cache
  stored = type(resident).open(resident.path)
  print(f"student stage, {jax.default_backend()} x {ctx.mesh.devices.size}, batch "
        f"{config.batch_size}, {args.student} student at {config.data.image_size}px, {steps} "
        "timed steps")
  print(f"loader alone:         {1e3 * loader_seconds:7.2f} ms/batch")
  print(f"compiled step alone:  {1e3 * alone:7.2f} ms/step")
  print(f"training loop:        {1e3 * loop_seconds / steps:7.2f} ms/step "
        f"({loop_seconds:.2f} s, compilation excluded)")
  print(f"outside the step:     {100 * outside:6.2f}% of the loop's wall time (target < 5%)")
  print(f"  waiting for input:  {100 * waiting / loop_seconds:6.2f}%")
  print(f"  teacher lookup:     {1e3 * lookup_seconds(resident, batch):7.3f} ms/batch from "
        f"memory, {1e3 * lookup_seconds(stored, batch):.3f} ms/batch from the store "
        "(in the prefetch thread, off the step's path)")


if __name__ == "__main__":
  main()

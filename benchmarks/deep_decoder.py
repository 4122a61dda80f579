"""Deep Decoder fitting speed (SPEC E7): images/s at the paper's step count, batched vs one
image at a time.

  python benchmarks/deep_decoder.py [--image_size 224] [--batch_size 16] [--steps 50]
      [--paper_steps 5000] [--channels 64] [--num_layers 5]

Fits `rrjax.baselines.fit_deep_decoder` for --steps steps on random images with 90% of
their pixels masked, (a) the whole batch in one call and (b) one image per call, each
after one untimed warm-up call (compilation). The time per step is linear in the step
count (a `lax.scan` of identical steps), so images/s at --paper_steps is extrapolated as
images / (seconds * paper_steps / steps). Also prints XLA's memory estimate per call,
to size batches for a device.
"""

from __future__ import annotations

import argparse
import os
import time

import jax

from rrjax import operators
from rrjax.baselines import pixel


def time_fit(fit, rng, images, mask, *, batch: int, repeats: int):
  """Seconds to fit all images in calls of `batch` images, and XLA's memory per call."""
  chunks = [(images[i:i + batch], mask[i:i + batch]) for i in range(0, len(images), batch)]
  compiled = jax.jit(fit).lower(rng, *chunks[0]).compile()
  jax.block_until_ready(compiled(rng, *chunks[0]))  # Warm-up.
  start = time.perf_counter()
  for _ in range(repeats):
    results = [compiled(rng, *chunk) for chunk in chunks]
  jax.block_until_ready(results)
  return (time.perf_counter() - start) / repeats, compiled.memory_analysis()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--paper_steps", type=int, default=5000)
  parser.add_argument("--channels", type=int, default=64)
  parser.add_argument("--num_layers", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  shape = (args.batch_size, args.image_size, args.image_size, 3)
  images = jax.random.uniform(jax.random.key(0), shape)
  masked = operators.build({"kind": "mask", "p": 0.9})(jax.random.key(1), images)
  mask = pixel.observed_mask(masked)
  settings = dict(steps=args.steps, channels=args.channels, num_layers=args.num_layers)

  def fit(rng, images, mask):
    return pixel.fit_deep_decoder(rng, images, mask, **settings).images

  device = jax.devices()[0]
  print(f"jax {jax.__version__} on {device.platform} ({device.device_kind}), "
        f"{os.cpu_count()} CPUs; images {shape[1:]}, channels {args.channels}, "
        f"num_layers {args.num_layers}; {args.steps} steps timed, extrapolated to "
        f"{args.paper_steps}")
  for name, batch in (("batched", args.batch_size), ("one at a time", 1)):
    seconds, memory = time_fit(fit, jax.random.key(2), masked, mask, batch=batch,
                               repeats=args.repeats)
    memory_mib = "n/a" if memory is None else (
        f"{(memory.temp_size_in_bytes + memory.argument_size_in_bytes) / 2**20:.0f}")
    paper_seconds = seconds * args.paper_steps / args.steps
    print(f"{name:14s} (calls of {batch:4d}): {seconds / args.steps * 1e3:9.2f} ms per step "
          f"for {args.batch_size} images; at {args.paper_steps} steps {paper_seconds:9.1f} s"
          f" = {args.batch_size / paper_seconds:.3g} images/s "
          f"({paper_seconds / args.batch_size:.3g} s per image); XLA memory per call "
          f"{memory_mib} MiB")


if __name__ == "__main__":
  main()

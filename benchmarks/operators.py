"""Operator speed: the paper's 8 settings, jitted and batched, vs per image in numpy/scipy;
and a choice mixture against the mean of its entries.

  python benchmarks/operators.py [--batch_size 256] [--image_size 224] [--repeats 5]
      [--choice_batch_size 64] [--skip_paper]

JAX: `jax.jit(operators.build(spec))` on a float32 [batch_size, S, S, 3] batch already on
the default device, a fresh key per call; one warm-up call (compilation) is excluded, then
--repeats calls are timed up to `block_until_ready`.
numpy/scipy: what a CPU data-loader worker would run per image, in one thread: mask by
`rng.choice` of floor(H*W*p) positions without replacement, noise by `rng.standard_normal`
(float32), blur by two `scipy.ndimage.correlate1d` passes with mode "mirror"; timed over
--numpy_images images. Prints images/s of both and their ratio.

choice: the training operator of configs/unknown_corruptions.py (a 35-way mixture: 7
ImageNet-C corruptions x 5 severities as nested choices) on a [choice_batch_size, S, S, 3]
batch, next to each of its 35 entries alone on the same batch, all compiled first, then
timed in interleaved rounds (--repeats, a fresh key each); prints the mixture's seconds per call, the entries' mean, and their ratio (the
mixture costs what it draws when the ratio is near 1; the entries' sum when near 35).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import pathlib
import time

import jax
import numpy as np
from scipy import ndimage

from rrjax import operators


def numpy_operator(spec):
  """A per-image numpy/scipy version of a paper setting: apply(rng, image) -> image."""
  kind = spec["kind"]
  if kind == "mask":

    def apply(rng, image):
      h, w, c = image.shape
      positions = rng.choice(h * w, math.floor(h * w * spec["p"]), replace=False)
      masked = image.copy()
      masked.reshape(h * w, c)[positions] = 0
      return masked

  elif kind == "noise":

    def apply(rng, image):
      return image + spec["sigma"] * rng.standard_normal(image.shape, dtype=np.float32)

  elif kind == "blur":
    u = np.arange(spec["kernel_size"]) - (spec["kernel_size"] - 1) / 2
    kernel = np.exp(-u**2 / (2 * spec["sigma"]**2))
    kernel /= kernel.sum()

    def apply(rng, image):
      del rng  # Deterministic.
      rows = ndimage.correlate1d(image, kernel, axis=0, mode="mirror")
      return ndimage.correlate1d(rows, kernel, axis=1, mode="mirror")

  else:
    raise ValueError(f"no numpy version of operator kind {kind!r}")
  return apply


def jax_seconds_per_call(spec, images, repeats: int) -> float:
  op = jax.jit(operators.build(spec))
  keys = jax.random.split(jax.random.key(1), repeats + 1)
  op(keys[0], images).block_until_ready()  # Compilation.
  start = time.perf_counter()
  for key in keys[1:]:
    corrupted = op(key, images)
  corrupted.block_until_ready()
  return (time.perf_counter() - start) / repeats


def jax_images_per_second(spec, images, repeats: int) -> float:
  return images.shape[0] / jax_seconds_per_call(spec, images, repeats)


def mixture_spec() -> dict:
  """The training operator of configs/unknown_corruptions.py (train=noise/blur)."""
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "unknown_corruptions.py"
  module_spec = importlib.util.spec_from_file_location("unknown_corruptions", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config().operator.to_dict()


def leaf_specs(spec) -> list[dict]:
  """The operators a (nested) choice ends in."""
  if spec["kind"] != "choice":
    return [spec]
  return [leaf for entry in spec["ops"] for leaf in leaf_specs(entry)]


def choice_cost(images, repeats: int) -> None:
  """Times the mixture and each entry in interleaved rounds (all compiled first), so that
  the machine's load drifting over the run weighs on both alike."""
  spec = mixture_spec()
  specs = [spec, *leaf_specs(spec)]
  ops = [jax.jit(operators.build(s)) for s in specs]
  keys = jax.random.split(jax.random.key(1), repeats + 1)
  for op in ops:
    op(keys[0], images).block_until_ready()  # Compilation.
  seconds = np.zeros(len(ops))
  for key in keys[1:]:
    for i, op in enumerate(ops):
      start = time.perf_counter()
      op(key, images).block_until_ready()
      seconds[i] += (time.perf_counter() - start) / repeats
  mixture, entries = seconds[0], seconds[1:]
  print(f"choice of {len(entries)} entries ({operators.describe(spec)[:60]}...), batch "
        f"{images.shape}: mixture {mixture:.3f} s/call, entries' mean {entries.mean():.3f} "
        f"s/call (min {entries.min():.3f}, max {entries.max():.3f}), ratio "
        f"{mixture / entries.mean():.2f}")


def numpy_images_per_second(spec, images: np.ndarray) -> float:
  apply = numpy_operator(spec)
  rng = np.random.default_rng(0)
  start = time.perf_counter()
  for image in images:
    apply(rng, image)
  return len(images) / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--numpy_images", type=int, default=64)
  parser.add_argument("--choice_batch_size", type=int, default=64)
  parser.add_argument("--skip_paper", action="store_true", help="only the choice mixture")
  args = parser.parse_args()
  shape = (args.batch_size, args.image_size, args.image_size, 3)
  images = jax.random.uniform(jax.random.key(0), shape)
  numpy_images = np.random.default_rng(0).random(
      (args.numpy_images,) + shape[1:], dtype=np.float32)
  device = jax.devices()[0]
  print(f"jax {jax.__version__} on {device.platform} ({device.device_kind}), "
        f"{os.cpu_count()} CPUs; batch {shape}, {args.repeats} timed calls; numpy: "
        f"{args.numpy_images} images, one thread")
  if not args.skip_paper:
    print(f"{'operator':20s} {'jax images/s':>13s} {'numpy images/s':>15s} {'ratio':>7s}")
    for spec in operators.PAPER_SETTINGS:
      jax_rate = jax_images_per_second(spec, images, args.repeats)
      numpy_rate = numpy_images_per_second(spec, numpy_images)
      print(f"{operators.describe(spec):20s} {jax_rate:13.1f} {numpy_rate:15.1f} "
            f"{jax_rate / numpy_rate:7.2f}")
  choice_cost(images[:args.choice_batch_size], args.repeats)


if __name__ == "__main__":
  main()

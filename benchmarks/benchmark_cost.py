"""What `python -m rrjax.benchmark` costs for FARE's zero-shot table, sized from measurement.

  python benchmarks/benchmark_cost.py                       # ViT-B/32 measured, L/14 scaled
  python benchmarks/benchmark_cost.py --measure tiny --batch_size 8 --steps 2 6   # seconds

Measures, on this machine's devices, with a random CLIP image tower of the real
architecture (`common.RandomCLIPTower`, no download) and a 1000-class zero-shot head:
- the forward rate (images/s of the jitted zero-shot logits, as the clean and corrupted
  conditions run them);
- the APGD step rate (images x steps per second of `rrjax.adversarial.apgd`, from the time
  difference of two step counts, so compile and set-up cancel out).
Each target model's rates are the measured ones scaled by the ratio of FLOPs that XLA's
cost analysis gives for the lowered programs (the forward, and the forward + backward of
one attack step) of the target and of the measured tower: FLOP-proportional scaling, which
holds for towers of one family on one device, not across families or devices.

The work of FARE's table (Schlarmann et al. 2024): every test image of each dataset clean
(`TEST_IMAGES`, tfds' sizes of rrjax.benchmark's test splits), and at each eps the first
1,000 attacked by APGD-CE (100 steps) and APGD-T (9 targets x 100 steps) on what APGD-CE
left robust. APGD-T skips a target only once every image of a batch is fooled, so its count
(every target run in full) is an upper bound, reached when a batch has a robust image; text
classifiers (a few thousand prompts per model) are left out. Prints the rates, the work
in images x steps, the hours on these devices and the total FLOPs (divide by an
accelerator's sustained FLOP/s for its time).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from common import RandomCLIPTower  # benchmarks/common.py
from rrjax import adversarial, losses
from rrjax.models import clip

# Test images of rrjax.benchmark's test splits (datasets.TEST_SPLITS), as tfds counts them.
TEST_IMAGES = {
    "cifar10": 10000, "cifar100": 10000, "stl10": 8000, "food101": 25250,
    "oxford_iiit_pet": 3669, "oxford_flowers102": 6149, "dtd": 1880, "eurosat": 5400,
    "caltech101": 6084, "sun397": 21750, "cars196": 8041, "patch_camelyon": 32768,
    "svhn_cropped": 26032, "mnist": 10000, "resisc45": 6300, "imagenet2012": 50000,
    "imagenet_v2": 10000, "imagenet_r": 30000, "imagenet_a": 7500, "imagenet_sketch": 50889,
}
ATTACKED_IMAGES, APGD_STEPS, APGD_T_TARGETS, EPS = 1000, 100, 9, (2 / 255, 4 / 255)
NUM_CLASSES = 1000


def _vit(width, layers, heads, patch, mlp, size=224):
  return clip.VisionSpec(kind="vit", image_size=size, width=width, layers=layers, heads=heads,
                         patch_size=patch, mlp_dim=mlp)


# OpenAI's published ViTs (open_clip ViT-B-32 / ViT-L-14; FARE's and TeCoA's are L/14).
TOWERS = {
    "vit_b32": clip.CLIPSpec(512, _vit(768, 12, 12, 32, 3072), None),
    "vit_l14": clip.CLIPSpec(768, _vit(1024, 24, 16, 14, 4096), None),
    "tiny": clip.tiny_spec("vit", 32),
}


def _logits_fn(tower: RandomCLIPTower, text):
  """Zero-shot logits (scale 100 times the cosine) of [0, 1] images."""
  return lambda images01: 100.0 * losses.l2_normalize(
      tower.encoder.apply(tower.params, images01)[0]) @ text.T


def _apgd(logits_fn, steps: int):
  return jax.jit(lambda images, labels, key: adversarial.apgd(
      logits_fn, images, labels, key, eps=EPS[1], steps=steps, loss="ce")[1])


def flops(spec: clip.CLIPSpec, batch: int) -> tuple[float, float]:
  """(forward, forward + backward) FLOPs per image of the zero-shot logits, from XLA's
  cost analysis of the lowered programs (shapes only: no weights, nothing compiled)."""
  encoder = clip.CLIPImageEncoder(spec)
  size = spec.vision.image_size
  variables = jax.eval_shape(lambda: encoder.init(jax.random.key(0),
                                                  jnp.zeros((1, size, size, 3))))
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  text = jax.ShapeDtypeStruct((NUM_CLASSES, spec.embed_dim), jnp.float32)

  def logits(v, x, t):
    return losses.l2_normalize(encoder.apply(v, x)[0]) @ t.T

  forward = jax.jit(logits).lower(variables, images, text).cost_analysis()["flops"]
  step = jax.jit(jax.grad(lambda x, v, t: jnp.sum(logits(v, x, t)))).lower(
      images, variables, text).cost_analysis()["flops"]
  return forward / batch, step / batch


def measure(name: str, batch: int, steps: tuple[int, int], repeats: int) -> dict[str, float]:
  """Forward images/s and APGD images x steps/s of tower `name` on these devices."""
  spec = TOWERS[name]
  tower = RandomCLIPTower(name, image_size=spec.vision.image_size, spec=spec)
  rng = np.random.default_rng(0)
  size = spec.vision.image_size
  images = jnp.asarray(rng.random((batch, size, size, 3), np.float32))
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch))
  text = losses.l2_normalize(jnp.asarray(rng.normal(size=(NUM_CLASSES, spec.embed_dim)),
                                         jnp.float32))
  logits_fn = _logits_fn(tower, text)
  forward = jax.jit(logits_fn)
  jax.block_until_ready(forward(images))  # Compile.
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(forward(images))
  forward_rate = batch * repeats / (time.perf_counter() - start)
  seconds = []
  for n in steps:
    attack = _apgd(logits_fn, n)
    jax.block_until_ready(attack(images, labels, jax.random.key(0)))  # Compile.
    start = time.perf_counter()
    jax.block_until_ready(attack(images, labels, jax.random.key(1)))
    seconds.append(time.perf_counter() - start)
  step_rate = batch * (steps[1] - steps[0]) / max(seconds[1] - seconds[0], 1e-9)
  return {"forward_images_per_s": forward_rate, "apgd_image_steps_per_s": step_rate}


def work() -> dict[str, float]:
  """Images through the forward (clean) and images x steps of attack (all eps)."""
  clean = sum(TEST_IMAGES.values())
  per_eps = sum(min(ATTACKED_IMAGES, n) for n in TEST_IMAGES.values()) * APGD_STEPS * (
      1 + APGD_T_TARGETS)
  return {"clean_images": clean, "attack_image_steps": per_eps * len(EPS)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--measure", default="vit_b32", choices=sorted(TOWERS))
  parser.add_argument("--targets", nargs="+", default=["vit_b32", "vit_l14"],
                      choices=sorted(TOWERS))
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--steps", type=int, nargs=2, default=(2, 6),
                      help="two APGD step counts; the rate is from their time difference")
  parser.add_argument("--repeats", type=int, default=3, help="timed forward calls")
  args = parser.parse_args()
  measured = measure(args.measure, args.batch_size, tuple(args.steps), args.repeats)
  base_forward, base_step = flops(TOWERS[args.measure], args.batch_size)
  total = work()
  report = {"devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "measured": {"tower": args.measure, "batch_size": args.batch_size, **measured},
            "work": total, "targets": {}}
  for name in args.targets:
    forward_flops, step_flops = flops(TOWERS[name], args.batch_size)
    forward_rate = measured["forward_images_per_s"] * base_forward / forward_flops
    step_rate = measured["apgd_image_steps_per_s"] * base_step / step_flops
    clean_hours = total["clean_images"] / forward_rate / 3600
    attack_hours = total["attack_image_steps"] / step_rate / 3600
    report["targets"][name] = {
        "gflops_forward_per_image": forward_flops / 1e9,
        "gflops_attack_step_per_image": step_flops / 1e9,
        "forward_images_per_s": forward_rate, "apgd_image_steps_per_s": step_rate,
        "hours_clean_all_datasets": clean_hours, "hours_attacks_all_datasets": attack_hours,
        "pflops_total": (total["clean_images"] * forward_flops
                         + total["attack_image_steps"] * step_flops) / 1e15}
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()

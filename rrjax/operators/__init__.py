"""Forward operators A (SPEC §3): corruptions of float images in [0, 1], in jax.numpy.

The spec language (parsing, validation, descriptions, severity fields) is in `spec`, the
implementations in `natural`, `mixtures` (compose, choice) and `attack` (pgd).

Everything else builds operators through one entry point:

  op = build({"kind": "mask", "p": 0.9})
  corrupted = op(rng, images)          # images: float [B, H, W, C] in [0, 1]

Operators are pure and jittable, and preserve shape and dtype. Kinds and fields:

  identity                    the images unchanged
  mask(p)                     exactly floor(H*W*p) pixel positions, drawn uniformly without
                              replacement, set to 0 in every channel
  noise(sigma, clip=False)    x + sigma * N(0, 1) per pixel and channel; optionally clipped
                              to [0, 1] (the paper does not clip)
  blur(kernel_size, sigma)    separable normalised Gaussian (odd kernel_size) with reflect
                              padding that does not repeat the edge pixel (numpy "reflect"
                              == scipy "mirror"), for any image size
  block_mask(size)            a zeroed size x size square at a uniformly random position
                              (inpainting)
  downsample(factor)          average over factor x factor blocks, then repeat each block
                              back to H x W (super-resolution observation: the orthogonal
                              projection onto block-constant images, antialiased and
                              idempotent)
  compose(ops)                the listed operator specs applied in order
  choice(ops, weights=None)   ONE of the listed operator specs per image: ops[j] with
                              probability weights[j] / sum(weights) (None: uniform), a
                              mixture whose corruption type the model is not told; nest
                              choices for random levels of kinds without ranges (e.g.
                              imagenet_c severities 1..5). Each entry runs only on the
                              images that drew it (grouped, in chunks of static size,
                              per device when traced under a data mesh: rrjax/operators/
                              mixtures.py), so a choice costs about its entries' mean,
                              not their sum. No attacks (pgd) inside: they need the
                              batch
  imagenet_c(corruption,      an ImageNet-C corruption at severity 1..5, as Hendrycks &
    severity)                 Dietterich's code (imagecorruptions 1.1.2); the 19 names
                              and how each matches it: rrjax/imagenet_c/
  pgd(eps, steps=10,          adversarial: projected gradient ascent (`rrjax.adversarial.
    step_size=2.5*eps/steps,  pgd`, random start, `steps` steps of `step_size`) within
    norm="linf", loss="mse")  ||delta|| <= eps (norm "linf" or "l2") that MAXIMISES the
                              student's per-example loss against its cached teacher
                              target, clipped to [0, 1]; steps=0 is the random start
                              alone. loss "mse": FARE's (Schlarmann et al. 2024) squared
                              distance to the teacher target (of L2-normalised embeddings,
                              like loss.kind="mse"), "train": the run's own loss.kind

Adversarial kinds need the model they attack, so they run only where a loss is being
trained: `op(rng, images, loss_fn)` with `loss_fn(images, loss) -> [B]` float32 losses
per image (`loss` is the spec's field, "mse" or "train"), which
`rrjax.objectives.student_loss` passes (the current student in inference mode, no
gradient through the attack). Called without `loss_fn` (probe and baseline stages,
evaluation test operators) they raise ValueError naming the field; natural kinds ignore
`loss_fn`. In compose, an attack acts on the output of the stages before it
(compose(mask, pgd): mask, then attack the masked image).

A level (`p`, `sigma`, block `size`) is a number, used for every image, or a pair
(low, high) with low <= high: each image then draws its own level uniformly from
[low, high] (integers from low..high inclusive for `size`).

Randomness is independent per image and fully determined by the batch key, laid out as
(tests and reproductions rely on this):

  keys = jax.random.split(rng, B)                     # image i uses keys[i]
  level_key, sample_key = jax.random.split(keys[i])   # its level, then its own draws
  compose: stage j is called with jax.random.split(rng, len(ops))[j]
  choice:  u = jax.random.uniform(level_key) picks ops[j], j = the number of bounds <= u
           among float32(cumsum(w)[:-1] / cumsum(w)[-1]) (w: the weights, or all ones),
           applied to that image alone with its sample key: ops[j](sample_key,
           image[None])[0]
"""

from __future__ import annotations

from typing import Any

from rrjax.operators import attack, mixtures, natural
from rrjax.operators.core import Operator
from rrjax.operators.spec import (ADVERSARIAL_KINDS, ATTACK_LOSSES, SCHEMA, SEVERITY_FIELDS,
                                  Level, adversarial_fields, describe, parse, severity,
                                  with_severity)

__all__ = ["ADVERSARIAL_KINDS", "ATTACK_LOSSES", "PAPER_SETTINGS", "SCHEMA", "SEVERITY_FIELDS",
           "Level", "Operator", "adversarial_fields", "build", "describe", "parse",
           "severity", "with_severity"]

# The 8 fixed settings of the paper (Table 1, SPEC §6 E1). Plain dicts so that configs
# can embed them; copy before editing (`dict(PAPER_SETTINGS[0], p=0.6)`).
PAPER_SETTINGS: tuple[dict[str, Any], ...] = (
    {"kind": "mask", "p": 0.5},
    {"kind": "mask", "p": 0.75},
    {"kind": "mask", "p": 0.9},
    {"kind": "noise", "sigma": 0.1},
    {"kind": "noise", "sigma": 0.3},
    {"kind": "noise", "sigma": 0.5},
    {"kind": "blur", "kernel_size": 21, "sigma": 5.0},
    {"kind": "blur", "kernel_size": 37, "sigma": 9.0},
)


def _stages(parsed: dict[str, Any], where: str) -> list:
  return [_build_parsed(stage, f"{where}.ops[{i}]") for i, stage in enumerate(parsed["ops"])]


def _draw(parsed: dict[str, Any], where: str) -> mixtures.Draw:
  """A choice's draw, nested choices kept as nested draws (flattened when dispatched)."""
  entries = [_draw(stage, f"{where}.ops[{i}]") if stage["kind"] == "choice"
             else _build_parsed(stage, f"{where}.ops[{i}]")
             for i, stage in enumerate(parsed["ops"])]
  return mixtures.Draw.of(entries, parsed["weights"])


def _build_parsed(parsed: dict[str, Any], where: str = "operator") -> Operator:
  kind = parsed["kind"]
  if kind == "identity":
    return natural.identity
  if kind == "mask":
    return natural.mask(parsed["p"])
  if kind == "noise":
    return natural.noise(parsed["sigma"], parsed["clip"])
  if kind == "blur":
    return natural.blur(parsed["kernel_size"], parsed["sigma"])
  if kind == "block_mask":
    return natural.block_mask(parsed["size"])
  if kind == "downsample":
    return natural.downsample(parsed["factor"])
  if kind == "imagenet_c":
    return natural.imagenet_c(parsed["corruption"], parsed["severity"])
  if kind == "pgd":
    return attack.pgd(parsed["eps"], parsed["steps"], parsed["step_size"], parsed["norm"],
                      parsed["loss"], where)
  if kind == "choice":
    return mixtures.choice(_draw(parsed, where))
  return mixtures.compose(_stages(parsed, where))


def build(spec) -> Operator:
  """Returns the operator of a spec (dict or ConfigDict; see module doc): call it as
  `op(rng, images, loss_fn=None) -> images` (only adversarial kinds use `loss_fn`);
  `op.keyed(keys, images)` corrupts each image with its own key (`Operator`).

  Raises ValueError naming the bad field and its allowed values, before any tracing.
  Image-dependent checks (downsample divisibility, block size) and an adversarial kind
  called without `loss_fn` raise ValueError when the operator first sees an image shape.
  """
  return _build_parsed(parse(spec))

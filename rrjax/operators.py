"""Forward operators A (SPEC §3): corruptions of float images in [0, 1], in jax.numpy.

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
                              imagenet_c severities 1..5). Under jit every entry is
                              computed for every image and the drawn one kept
                              (jax.lax.switch under vmap), so it costs the sum of its
                              entries. No attacks (pgd) inside: they need the batch
  imagenet_c(corruption,      an ImageNet-C corruption at severity 1..5, as Hendrycks &
    severity)                 Dietterich's code (imagecorruptions 1.1.2); the 19 names
                              and how each matches it: rrjax/imagenet_c.py
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

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rrjax import adversarial, imagenet_c

# op(rng, images, loss_fn=None) -> images; only adversarial kinds use loss_fn.
Operator = Callable[..., jax.Array]
Level = float | tuple[float, float]

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


# --------------------------------------------------------------------------- spec parsing


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
      value, (bool, np.bool_))


def _is_integer(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_pair(value) -> bool:
  return (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2)


def _level_parser(minimum: float, maximum: float = math.inf, *, integer: bool = False,
                  exclusive_minimum: bool = False):
  """A parser for a level field: a number or a (low, high) pair, within the bounds."""
  kind = "an integer" if integer else "a number"
  lower = f"{minimum} <" if exclusive_minimum else f"{minimum} <="
  upper = "" if maximum == math.inf else f" <= {maximum}"
  allowed = (f"{kind} x with {lower} x{upper}, or a pair (low, high) of such values with "
             "low <= high")

  def ok(x) -> bool:
    if not (_is_integer(x) if integer else _is_number(x)):
      return False
    above = x > minimum if exclusive_minimum else x >= minimum
    return bool(above and x <= maximum)

  def parse(where: str, value) -> Level:
    if _is_pair(value) and all(ok(v) for v in value) and value[0] <= value[1]:
      return tuple(int(v) if integer else float(v) for v in value)
    if ok(value):
      return int(value) if integer else float(value)
    raise ValueError(f"operator field {where!r} must be {allowed}; got {value!r}.")

  return parse


def _parse_odd_size(where: str, value) -> int:
  if _is_integer(value) and value >= 1 and value % 2 == 1:
    return int(value)
  raise ValueError(
      f"operator field {where!r} must be an odd integer >= 1 (1, 3, 5, ...); got {value!r}.")


def _parse_factor(where: str, value) -> int:
  if _is_integer(value) and value >= 1:
    return int(value)
  raise ValueError(
      f"operator field {where!r} must be an integer >= 1 (a fixed factor: the "
      f"low-resolution shape must be static); got {value!r}.")


def _parse_bool(where: str, value) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  raise ValueError(f"operator field {where!r} must be True or False; got {value!r}.")


def _parse_ops(where: str, value) -> tuple[dict[str, Any], ...]:
  if isinstance(value, Sequence) and not isinstance(value, str) and value:
    return tuple(_parse(spec, f"{where}[{i}]") for i, spec in enumerate(value))
  raise ValueError(
      f"operator field {where!r} must be a non-empty list of operator specs; got {value!r}.")


def _parse_weights(where: str, value) -> tuple[float, ...] | None:
  if value is None:
    return None
  if (isinstance(value, Sequence) and not isinstance(value, str) and value
      and all(_is_number(w) and 0 <= w < math.inf for w in value) and sum(value) > 0):
    return tuple(float(w) for w in value)
  raise ValueError(
      f"operator field {where!r} must be None (uniform) or a list of finite numbers >= 0 "
      f"with a positive sum, one per entry of ops; got {value!r}.")


def _parse_positive(where: str, value) -> float:
  if _is_number(value) and value > 0:
    return float(value)
  raise ValueError(f"operator field {where!r} must be a number > 0; got {value!r}.")


def _parse_optional_positive(where: str, value) -> float | None:
  return None if value is None else _parse_positive(where, value)


def _parse_steps(where: str, value) -> int:
  if _is_integer(value) and value >= 0:
    return int(value)
  raise ValueError(f"operator field {where!r} must be an integer >= 0 (the number of attack "
                   f"steps; 0: the random start alone); got {value!r}.")


def _choice_parser(choices: Sequence[str]):
  def parse(where: str, value) -> str:
    if value in choices:
      return value
    raise ValueError(f"operator field {where!r} must be one of {list(choices)}; got {value!r}.")

  return parse


ATTACK_LOSSES = ("mse", "train")
ADVERSARIAL_KINDS = ("pgd",)

_REQUIRED = object()

# kind -> {field: (parser, default)}; _REQUIRED marks fields without a default.
_SCHEMA: dict[str, dict[str, tuple[Callable[[str, Any], Any], Any]]] = {
    "identity": {},
    "mask": {"p": (_level_parser(0.0, 1.0), _REQUIRED)},
    "noise": {"sigma": (_level_parser(0.0), _REQUIRED), "clip": (_parse_bool, False)},
    "blur": {"kernel_size": (_parse_odd_size, _REQUIRED),
             "sigma": (_level_parser(0.0, exclusive_minimum=True), _REQUIRED)},
    "block_mask": {"size": (_level_parser(1, integer=True), _REQUIRED)},
    "downsample": {"factor": (_parse_factor, _REQUIRED)},
    "compose": {"ops": (_parse_ops, _REQUIRED)},
    "choice": {"ops": (_parse_ops, _REQUIRED), "weights": (_parse_weights, None)},
    "imagenet_c": {"corruption": (imagenet_c.parse_corruption, _REQUIRED),
                   "severity": (imagenet_c.parse_severity, _REQUIRED)},
    # step_size None: 2.5 * eps / steps (Madry et al.'s rule; FARE's 1/255 at eps 4/255).
    "pgd": {"eps": (_parse_positive, _REQUIRED), "steps": (_parse_steps, 10),
            "step_size": (_parse_optional_positive, None),
            "norm": (_choice_parser(adversarial.NORMS), "linf"),
            "loss": (_choice_parser(ATTACK_LOSSES), "mse")},
}


def _parse(spec, where: str = "operator") -> dict[str, Any]:
  """Validates a spec and returns it as a plain dict with every field normalised."""
  if hasattr(spec, "to_dict"):  # ml_collections ConfigDict
    spec = spec.to_dict()
  if not isinstance(spec, Mapping):
    raise ValueError(
        f"{where} must be a dict or ConfigDict such as {{'kind': 'mask', 'p': 0.9}}; "
        f"got {spec!r}.")
  kind = spec.get("kind")
  if kind not in _SCHEMA:
    raise ValueError(
        f"operator field '{where}.kind' must be one of {sorted(_SCHEMA)}; got {kind!r}.")
  fields = _SCHEMA[kind]
  unknown = sorted(set(spec) - set(fields) - {"kind"})
  if unknown:
    raise ValueError(
        f"{where} of kind {kind!r} has unknown field(s) {unknown}; its fields are "
        f"{sorted(fields)}.")
  parsed = {"kind": kind}
  for name, (parse, default) in fields.items():
    if name in spec:
      parsed[name] = parse(f"{where}.{name}", spec[name])
    elif default is _REQUIRED:
      raise ValueError(
          f"{where} of kind {kind!r} is missing field '{where}.{name}' (its fields are "
          f"{sorted(fields)}).")
    else:
      parsed[name] = default
  if kind == "choice":
    _check_choice(parsed, where)
  return parsed


def _check_choice(parsed: dict[str, Any], where: str) -> None:
  """What the choice's fields cannot check alone: one weight per operator, no attacks."""
  ops, weights = parsed["ops"], parsed["weights"]
  if weights is not None and len(weights) != len(ops):
    raise ValueError(
        f"operator field '{where}.weights' must hold one weight per entry of '{where}.ops' "
        f"({len(ops)}); got {len(weights)}.")

  def attacks(stage, at):
    if stage["kind"] in ("compose", "choice"):
      return [f for i, s in enumerate(stage["ops"]) for f in attacks(s, f"{at}.ops[{i}]")]
    return [at] if stage["kind"] in ADVERSARIAL_KINDS else []

  found = [f for i, stage in enumerate(ops) for f in attacks(stage, f"{where}.ops[{i}]")]
  if found:
    # Each image is corrupted alone, but an attack needs the whole batch's loss.
    raise ValueError(
        f"operator field '{found[0]}.kind' is an attack (kind 'pgd'), which a choice cannot "
        "hold: it draws an operator per image, and attacks need the batch's training loss. "
        "Attack after the choice instead: {'kind': 'compose', 'ops': [choice, pgd]}.")


# --------------------------------------------------------------------------- operators


def _check_images(images) -> None:
  """Trace-time checks: shapes and dtypes are static, so these cost nothing under jit."""
  if images.ndim != 4:
    raise ValueError(f"images must have shape [B, H, W, C]; got shape {images.shape}.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(
        f"images must be floats in [0, 1] (convert uint8 with images / 255); got dtype "
        f"{images.dtype}.")


def _per_image(apply_one) -> Operator:
  """Lifts apply_one(level_key, sample_key, image [H, W, C]) to a batch, one key per image."""

  def op(rng, images):
    _check_images(images)

    def one(key, image):
      level_key, sample_key = jax.random.split(key)
      return apply_one(level_key, sample_key, image).astype(image.dtype)

    return jax.vmap(one)(jax.random.split(rng, images.shape[0]), images)

  return op


def _draw_level(key, level: Level, *, integer: bool = False):
  """The image's level: the fixed number itself, or a uniform draw from (low, high)."""
  if not isinstance(level, tuple):
    return level
  low, high = level
  if integer:
    return jax.random.randint(key, (), low, high + 1)
  return jax.random.uniform(key, (), minval=low, maxval=high)


def _identity(rng, images):
  del rng  # Deterministic.
  _check_images(images)
  return images


def _masked_count(num_pixels: int, p: float) -> int:
  # Rounding first keeps decimal levels exact: 100 * 0.29 is 28.999999999999996 in floats.
  return math.floor(round(num_pixels * p, 6))


def _smallest(keys, count):
  """Marks exactly `count` entries of the uint32 vector `keys`: those with the smallest keys.

  Finds the threshold by a 32-step binary search over its bits (one counting pass per
  bit) instead of sorting, which is ~20x faster on CPU and cheap on accelerators. Equal
  keys at the threshold (rare: about count/2^32 per key) are taken in position order.
  """

  def refine(bit, threshold):
    candidate = threshold | (jnp.uint32(1) << (31 - bit).astype(jnp.uint32))
    return jnp.where(jnp.sum(keys < candidate) <= count, candidate, threshold)

  # The largest threshold with at most `count` keys strictly below it.
  threshold = jax.lax.fori_loop(0, 32, refine, jnp.uint32(0))
  below = keys < threshold
  ties = keys == threshold
  return below | (ties & (jnp.cumsum(ties) <= count - jnp.sum(below)))


def _mask(p: Level) -> Operator:

  def apply_one(level_key, sample_key, image):
    h, w, _ = image.shape
    if isinstance(p, tuple):
      drawn = jnp.floor(h * w * _draw_level(level_key, p)).astype(jnp.int32)
      # Float32 rounding must not push a count past the bounds of the range.
      count = jnp.clip(drawn, _masked_count(h * w, p[0]), _masked_count(h * w, p[1]))
    else:
      count = _masked_count(h * w, p)
    # The `count` pixels with the smallest i.i.d. random keys form a uniformly random
    # subset of exactly `count` positions.
    keys = jax.random.bits(sample_key, (h * w,), jnp.uint32)
    masked = _smallest(keys, count).reshape(h, w)
    return jnp.where(masked[..., None], 0, image)

  return _per_image(apply_one)


def _noise(sigma: Level, clip: bool) -> Operator:

  def apply_one(level_key, sample_key, image):
    noisy = image + _draw_level(level_key, sigma) * jax.random.normal(
        sample_key, image.shape, jnp.float32)
    return jnp.clip(noisy, 0, 1) if clip else noisy

  return _per_image(apply_one)


def _gaussian_kernel(kernel_size: int, sigma) -> jax.Array:
  u = jnp.arange(kernel_size, dtype=jnp.float32) - (kernel_size - 1) / 2
  g = jnp.exp(-u**2 / (2 * jnp.square(sigma)))
  return g / g.sum()


def _reflect_index(index, size: int):
  """Maps any integer index into [0, size) by mirroring about the edge pixels, without
  repeating them (numpy "reflect", scipy "mirror"), however far outside it lies."""
  period = max(2 * (size - 1), 1)
  index = jnp.mod(index, period)
  return jnp.where(index > size - 1, period - index, index)


def _correlation_matrix(size: int, kernel) -> jax.Array:
  """[size, size] matrix of 1-D correlation with `kernel` under reflect padding.

  Row i holds the weight that output pixel i gives each input pixel. Blurring as one
  matmul per axis is ~4x faster on CPU than shifted sums (far faster than grouped
  convolutions), fits accelerators well, and lets every image have its own kernel.
  """
  radius = (kernel.shape[0] - 1) // 2
  taps = jnp.arange(size)[:, None] + jnp.arange(kernel.shape[0])[None, :] - radius
  sources = _reflect_index(taps, size)  # [size, k]: the input pixel each tap reads.
  # A dense sum, not a scatter-add: deterministic on every backend.
  return jnp.sum(kernel[None, :, None] * (sources[..., None] == jnp.arange(size)), axis=1)


def _blur(kernel_size: int, sigma: Level) -> Operator:

  def apply_one(level_key, sample_key, image):
    del sample_key  # Only the level (when a range) is random.
    h, w, _ = image.shape
    kernel = _gaussian_kernel(kernel_size, _draw_level(level_key, sigma))
    # HIGHEST: float32 matmuls may otherwise run at reduced (TF32/bfloat16) precision.
    rows = jnp.einsum("ij,jwc->iwc", _correlation_matrix(h, kernel),
                      image.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("kw,iwc->ikc", _correlation_matrix(w, kernel), rows,
                      precision=jax.lax.Precision.HIGHEST)

  return _per_image(apply_one)


def _block_mask(size: Level) -> Operator:

  def apply_one(level_key, sample_key, image):
    h, w, _ = image.shape
    largest = max(size) if isinstance(size, tuple) else size
    if largest > min(h, w):
      raise ValueError(
          f"block_mask size={size} must fit in the image ({h}x{w}); use size <= "
          f"{min(h, w)}.")
    side = _draw_level(level_key, size, integer=True)
    top_key, left_key = jax.random.split(sample_key)
    top = jax.random.randint(top_key, (), 0, h - side + 1)
    left = jax.random.randint(left_key, (), 0, w - side + 1)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return jnp.where(inside[..., None], 0, image)

  return _per_image(apply_one)


def _downsample(factor: int) -> Operator:

  def op(rng, images):
    del rng  # Deterministic.
    _check_images(images)
    b, h, w, c = images.shape
    if h % factor or w % factor:
      raise ValueError(
          f"downsample factor={factor} must divide the image height and width; got "
          f"{h}x{w}. Pick a factor that divides both.")
    blocks = images.astype(jnp.float32).reshape(
        b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
    restored = jnp.repeat(jnp.repeat(blocks, factor, axis=1), factor, axis=2)
    return restored.astype(images.dtype)

  return op


def _pgd(eps: float, steps: int, step_size: float | None, norm: str, loss: str,
         where: str) -> Operator:
  step = step_size if step_size is not None else 2.5 * eps / max(steps, 1)

  def op(rng, images, loss_fn=None):
    _check_images(images)
    if loss_fn is None:
      raise ValueError(
          f"operator field '{where}.kind' is 'pgd', an attack on the student's training "
          "loss: it runs only inside the student stage, which passes it the student. Where "
          "no model is trained (the probe and baseline stages, eval.operators, tools) use "
          "natural operators, e.g. eval.operators=({'kind': 'identity'},); fit probes in a "
          "second run with student.restore_from (configs/adversarial.py:student=WORKDIR).")
    attacked = adversarial.pgd(lambda x: loss_fn(x, loss), images.astype(jnp.float32), rng,
                               eps=eps, steps=steps, step_size=step, norm=norm)
    return attacked.astype(images.dtype)

  op.adversarial = True
  return op


def _is_adversarial_op(op) -> bool:
  return getattr(op, "adversarial", False)


def _compose(ops: Sequence[Operator]) -> Operator:

  def op(rng, images, loss_fn=None):
    for stage_key, stage in zip(jax.random.split(rng, len(ops)), ops):
      images = (stage(stage_key, images, loss_fn) if _is_adversarial_op(stage)
                else stage(stage_key, images))
    return images

  op.adversarial = any(_is_adversarial_op(stage) for stage in ops)
  return op


def _choice(ops: Sequence[Operator], weights: Sequence[float] | None) -> Operator:
  partial_sums = np.cumsum(np.ones(len(ops)) if weights is None else weights)
  # Divided by their own last entry, the sums after the last positive weight are exactly
  # 1, which the uniform u < 1 never reaches: zero-weight operators are never drawn.
  bounds = jnp.asarray(partial_sums[:-1] / partial_sums[-1], jnp.float32)
  branches = [lambda key, image, stage=stage: stage(key, image[None])[0] for stage in ops]

  def apply_one(level_key, sample_key, image):
    index = jnp.sum(jax.random.uniform(level_key) >= bounds)
    # Under the batch's vmap the switch becomes a select: every branch runs on every image.
    return jax.lax.switch(index, branches, sample_key, image)

  return _per_image(apply_one)


def _build_parsed(parsed: dict[str, Any], where: str = "operator") -> Operator:
  kind = parsed["kind"]
  if kind == "identity":
    return _identity
  if kind == "mask":
    return _mask(parsed["p"])
  if kind == "noise":
    return _noise(parsed["sigma"], parsed["clip"])
  if kind == "blur":
    return _blur(parsed["kernel_size"], parsed["sigma"])
  if kind == "block_mask":
    return _block_mask(parsed["size"])
  if kind == "downsample":
    return _downsample(parsed["factor"])
  if kind == "imagenet_c":
    return imagenet_c.corruption(parsed["corruption"], parsed["severity"])
  if kind == "pgd":
    return _pgd(parsed["eps"], parsed["steps"], parsed["step_size"], parsed["norm"],
                parsed["loss"], where)
  if kind == "choice":
    return _choice([_build_parsed(stage, f"{where}.ops[{i}]")
                    for i, stage in enumerate(parsed["ops"])], parsed["weights"])
  return _compose([_build_parsed(stage, f"{where}.ops[{i}]")
                   for i, stage in enumerate(parsed["ops"])])


# --------------------------------------------------------------------------- public API


def build(spec) -> Operator:
  """Returns `op(rng, images, loss_fn=None) -> images` for a spec (dict or ConfigDict;
  see module doc; only adversarial kinds use `loss_fn`).

  Raises ValueError naming the bad field and its allowed values, before any tracing.
  Image-dependent checks (downsample divisibility, block size) and an adversarial kind
  called without `loss_fn` raise ValueError when the operator first sees an image shape.
  """
  op = _build_parsed(_parse(spec))
  if _is_adversarial_op(op):
    return op
  return lambda rng, images, loss_fn=None: op(rng, images)


def adversarial_fields(spec) -> list[str]:
  """The field paths of the spec's adversarial stages ("operator", "operator.ops[1]"):
  empty for an operator that needs no model."""

  def walk(parsed, where):
    if parsed["kind"] == "compose":
      return [field for i, stage in enumerate(parsed["ops"])
              for field in walk(stage, f"{where}.ops[{i}]")]
    return [where] if parsed["kind"] in ADVERSARIAL_KINDS else []

  return walk(_parse(spec), "operator")


_SHORT_NAMES = {"kernel_size": "k"}


def _describe_value(value) -> str:
  if isinstance(value, str):
    return f"={value}"
  if isinstance(value, tuple):
    return f"~U({value[0]:g},{value[1]:g})"
  return f"={value:g}"


def _describe_budget(value: float, norm: str) -> str:
  """linf budgets below 1 that are multiples of 1/255 as papers state them ("4/255"),
  others as they are."""
  if norm == "linf" and value < 1 and abs(value * 255 - round(value * 255)) < 1e-6:
    return f"{round(value * 255)}/255"
  return f"{value:g}"


def _describe_pgd(parsed: dict[str, Any]) -> str:
  norm = parsed["norm"]
  words = ["pgd", norm, f"eps={_describe_budget(parsed['eps'], norm)}",
           f"steps={parsed['steps']}"]
  if parsed["step_size"] is not None:
    words.append(f"step={_describe_budget(parsed['step_size'], norm)}")
  if parsed["loss"] != "mse":
    words.append(f"loss={parsed['loss']}")
  return " ".join(words)


def _varying_level(ops: Sequence[dict[str, Any]]) -> str | None:
  """The one field, numeric in every spec, in which specs of one kind differ, else None."""
  first = ops[0]
  if len(ops) < 2 or any(set(op) != set(first) or op["kind"] != first["kind"] for op in ops):
    return None
  varying = [name for name in first if any(op[name] != first[name] for op in ops)]
  if len(varying) == 1 and all(_is_number(op[varying[0]]) for op in ops):
    return varying[0]
  return None


def _describe_choice(parsed: dict[str, Any]) -> str:
  """"choice(mask p=0.5 or noise sigma=0.3)", "choice(0.75: mask p=0.5 or 0.25: noise
  sigma=0.3)" (non-uniform weights, normalised), and a uniform choice among levels of one
  operator as "imagenet_c corruption=fog severity~{1,2,3,4,5}". Not "|": labels go into
  Markdown tables."""
  ops, weights = parsed["ops"], parsed["weights"]
  uniform = weights is None or len(set(weights)) == 1
  field = _varying_level(ops) if uniform else None
  if field:
    rest = {name: value for name, value in ops[0].items() if name != field}
    levels = ",".join(f"{op[field]:g}" for op in ops)
    return f"{_describe_parsed(rest)} {_SHORT_NAMES.get(field, field)}~{{{levels}}}"
  labels = [_describe_parsed(op) for op in ops]
  if not uniform:
    labels = [f"{w / sum(weights):.3g}: {label}" for w, label in zip(weights, labels)]
  return f"choice({' or '.join(labels)})"


def _describe_parsed(parsed: dict[str, Any]) -> str:
  kind = parsed["kind"]
  if kind == "compose":
    return " + ".join(_describe_parsed(stage) for stage in parsed["ops"])
  if kind == "pgd":
    return _describe_pgd(parsed)
  if kind == "choice":
    return _describe_choice(parsed)
  words = [kind]
  for name, value in parsed.items():
    if name == "kind":
      continue
    if isinstance(value, bool):
      words += [name] if value else []
    else:
      words.append(_SHORT_NAMES.get(name, name) + _describe_value(value))
  return " ".join(words)


def describe(spec) -> str:
  """A short label for plots and reports, e.g. "mask p=0.9", "blur k=21 sigma=5"."""
  return _describe_parsed(_parse(spec))


# Each kind's severity field: what `eval.levels` sets and severity plots put on the x axis.
SEVERITY_FIELDS = {"mask": "p", "noise": "sigma", "blur": "sigma", "block_mask": "size",
                   "downsample": "factor", "imagenet_c": "severity", "pgd": "eps"}


def severity(spec) -> float | None:
  """The spec's severity as a number, or None for kinds without one and for ranges."""
  spec = spec.to_dict() if hasattr(spec, "to_dict") else spec
  value = spec.get(SEVERITY_FIELDS.get(spec.get("kind"), ""))
  return float(value) if _is_number(value) else None


def with_severity(spec, level) -> dict[str, Any]:
  """The operator `spec` at another severity ({"kind": "mask", "p": .9}, .99 -> p=.99)."""
  spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
  if spec.get("kind") not in SEVERITY_FIELDS:
    raise ValueError(f"eval.levels: operator kind {spec.get('kind')!r} has no severity "
                     f"field; levels work for {', '.join(SEVERITY_FIELDS)}.")
  spec[SEVERITY_FIELDS[spec["kind"]]] = level
  return spec

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
  imagenet_c(corruption,      an ImageNet-C corruption at severity 1..5, as Hendrycks &
    severity)                 Dietterich's code (imagecorruptions 1.1.2); the 19 names
                              and how each matches it: rrjax/imagenet_c.py

A level (`p`, `sigma`, block `size`) is a number, used for every image, or a pair
(low, high) with low <= high: each image then draws its own level uniformly from
[low, high] (integers from low..high inclusive for `size`).

Randomness is independent per image and fully determined by the batch key, laid out as
(tests and reproductions rely on this):

  keys = jax.random.split(rng, B)                     # image i uses keys[i]
  level_key, sample_key = jax.random.split(keys[i])   # its level, then its own draws
  compose: stage j is called with jax.random.split(rng, len(ops))[j]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rrjax import imagenet_c

Operator = Callable[[jax.Array, jax.Array], jax.Array]
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
    "imagenet_c": {"corruption": (imagenet_c.parse_corruption, _REQUIRED),
                   "severity": (imagenet_c.parse_severity, _REQUIRED)},
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
  return parsed


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


def _compose(ops: Sequence[Operator]) -> Operator:

  def op(rng, images):
    for stage_key, stage in zip(jax.random.split(rng, len(ops)), ops):
      images = stage(stage_key, images)
    return images

  return op


def _build_parsed(parsed: dict[str, Any]) -> Operator:
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
  return _compose([_build_parsed(stage) for stage in parsed["ops"]])


# --------------------------------------------------------------------------- public API


def build(spec) -> Operator:
  """Returns `op(rng, images) -> images` for a spec (dict or ConfigDict; see module doc).

  Raises ValueError naming the bad field and its allowed values, before any tracing.
  Image-dependent checks (downsample divisibility, block size) raise ValueError when the
  operator first sees an image shape.
  """
  return _build_parsed(_parse(spec))


_SHORT_NAMES = {"kernel_size": "k"}


def _describe_value(value) -> str:
  if isinstance(value, tuple):
    return f"~U({value[0]:g},{value[1]:g})"
  return f"={value:g}"


def _describe_parsed(parsed: dict[str, Any]) -> str:
  kind = parsed["kind"]
  if kind == "compose":
    return " + ".join(_describe_parsed(stage) for stage in parsed["ops"])
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
                   "downsample": "factor"}


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

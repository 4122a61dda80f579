"""Forward operators against independent numpy/scipy references (SPEC §3)."""

import fractions
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from rrjax import operators

RNG = jax.random.key(42)
# One shared shape so each operator compiles once for the whole module. 32 x 32 x 3 is
# large enough for blur k=21, for noise statistics, and 32 * 32 * p is exact in float32.
SHAPE = (4, 32, 32, 3)


def per_image_keys(rng, batch_size):
  """The documented key layout: [(level_key, sample_key)] for each image."""
  return [jax.random.split(k) for k in jax.random.split(rng, batch_size)]


def drawn_levels(rng, batch_size, low, high):
  return np.array([float(jax.random.uniform(level_key, (), minval=low, maxval=high))
                   for level_key, _ in per_image_keys(rng, batch_size)])


def positive_images(shape, seed=0):
  """Uniform in [0.1, 1]: a zero in the output can only come from the operator."""
  return jnp.asarray(np.random.default_rng(seed).uniform(0.1, 1.0, shape), jnp.float32)


def gaussian_kernel_2d(kernel_size, sigma):
  u = np.arange(kernel_size) - (kernel_size - 1) / 2
  g = np.exp(-u**2 / (2 * sigma**2))
  g /= g.sum()
  return np.outer(g, g)


def scipy_blur(image, kernel_size, sigma):
  kernel = gaussian_kernel_2d(kernel_size, sigma)
  return np.stack([ndimage.correlate(np.float64(image[..., c]), kernel, mode="mirror")
                   for c in range(image.shape[-1])], axis=-1)


@pytest.fixture(scope="module")
def jitted():
  """Jitted operators shared across tests, keyed by their describe() label."""
  cache = {}

  def get(spec):
    label = operators.describe(spec)
    if label not in cache:
      cache[label] = jax.jit(operators.build(spec))
    return cache[label]

  return get


# --------------------------------------------------------------------------- mask


def test_mask_zeroes_exactly_floor_hwp_positions_in_all_channels(jitted):
  x = positive_images(SHAPE)
  y = np.asarray(jitted({"kind": "mask", "p": 0.75})(RNG, x))
  zero = y == 0
  np.testing.assert_array_equal(zero.any(-1), zero.all(-1))  # Same positions in R, G, B.
  np.testing.assert_array_equal(zero[..., 0].sum((1, 2)), [768] * 4)
  np.testing.assert_array_equal(np.where(zero, np.asarray(x), y), np.asarray(x))
  assert len({m.tobytes() for m in zero[..., 0]}) == 4  # Independent masks per image.


@pytest.mark.parametrize("num_pixels, p", [(100, 0.29), (100, 0.57), (50176, 0.9),
                                           (50176, 0.0), (50176, 1.0), (7, 0.5)])
def test_masked_count_is_floor_of_exact_decimal_product(num_pixels, p):
  # 100 * 0.29 is 28.999999999999996 in floats; the user means 29 pixels.
  expected = math.floor(fractions.Fraction(str(p)) * num_pixels)
  assert operators.natural.masked_count(num_pixels, p) == expected


def test_mask_positions_are_uniform(jitted):
  y = np.asarray(jitted({"kind": "mask", "p": 0.5})(RNG, positive_images((512, 4, 4, 1))))
  frequency = (y == 0).mean(axis=0)
  # Each position is masked with probability 8/16; the std of the estimate is 0.022.
  np.testing.assert_allclose(frequency, 0.5, atol=0.1)


def test_smallest_matches_stable_argsort_with_ties():
  rng = np.random.default_rng(0)
  smallest = jax.jit(operators.natural.smallest)
  extremes = np.array([2**32 - 1, 0, 2**32 - 1, 7, 0] * 12, np.uint32)
  for keys in (rng.integers(0, 4, 60, dtype=np.uint32),  # Many ties at the threshold.
               extremes, rng.integers(0, 2**32, 60, dtype=np.uint32)):
    for count in (0, 1, 13, 59, 60):
      expected = np.zeros(len(keys), bool)
      expected[np.argsort(keys, kind="stable")[:count]] = True
      np.testing.assert_array_equal(np.asarray(smallest(keys, count)), expected)


def test_mask_range_counts_follow_per_image_levels(jitted):
  x = positive_images(SHAPE)
  y = np.asarray(jitted({"kind": "mask", "p": (0.5, 0.95)})(RNG, x))
  counts = (y[..., 0] == 0).sum((1, 2))
  p = drawn_levels(RNG, 4, 0.5, 0.95)
  np.testing.assert_array_equal(counts, np.floor(1024 * p))  # 1024 p is exact in float32.
  assert np.all((counts >= 512) & (counts <= math.floor(1024 * 0.95)))
  assert len(set(counts)) > 1


# --------------------------------------------------------------------------- noise


def test_noise_has_the_per_image_sigma_and_the_documented_draws(jitted):
  x = positive_images(SHAPE)
  y = np.asarray(jitted({"kind": "noise", "sigma": 0.3})(RNG, x))
  residual = y - np.asarray(x)
  # 3072 draws per image: the std estimate has a relative error of about 1.3%.
  np.testing.assert_allclose(residual.std(axis=(1, 2, 3)), 0.3, rtol=0.06)
  np.testing.assert_allclose(residual.mean(axis=(1, 2, 3)), 0.0, atol=0.03)
  for i, (_, sample_key) in enumerate(per_image_keys(RNG, 4)):
    eps = np.asarray(jax.random.normal(sample_key, SHAPE[1:]))
    np.testing.assert_allclose(residual[i], 0.3 * eps, atol=1e-6)
  assert y.min() < 0 and y.max() > 1  # The paper does not clip.


def test_noise_range_sigma_per_image(jitted):
  x = positive_images(SHAPE)
  y = np.asarray(jitted({"kind": "noise", "sigma": (0.1, 0.3)})(RNG, x))
  measured = (y - np.asarray(x)).std(axis=(1, 2, 3))
  sigma = drawn_levels(RNG, 4, 0.1, 0.3)
  np.testing.assert_allclose(measured, sigma, rtol=0.06)
  assert np.all((sigma >= 0.1) & (sigma <= 0.3)) and np.ptp(sigma) > 0.02


def test_noise_clip_equals_clipped_unclipped(jitted):
  x = positive_images(SHAPE)
  clipped = jitted({"kind": "noise", "sigma": 0.3, "clip": True})(RNG, x)
  unclipped = jitted({"kind": "noise", "sigma": 0.3})(RNG, x)
  np.testing.assert_array_equal(np.asarray(clipped), np.clip(np.asarray(unclipped), 0, 1))


def test_noise_keeps_bfloat16(jitted):
  x = positive_images(SHAPE).astype(jnp.bfloat16)
  assert jitted({"kind": "noise", "sigma": 0.3})(RNG, x).dtype == jnp.bfloat16


# --------------------------------------------------------------------------- blur


@pytest.mark.parametrize("kernel_size, sigma", [(5, 1.0), (21, 5.0)])
def test_blur_matches_scipy_mirror(jitted, kernel_size, sigma):
  x = positive_images(SHAPE)
  spec = {"kind": "blur", "kernel_size": kernel_size, "sigma": sigma}
  y = np.asarray(jitted(spec)(RNG, x))
  for i in range(4):
    np.testing.assert_allclose(y[i], scipy_blur(np.asarray(x[i]), kernel_size, sigma),
                               atol=1e-5)


def test_blur_range_sigma_per_image_matches_scipy(jitted):
  x = positive_images(SHAPE)
  y = np.asarray(jitted({"kind": "blur", "kernel_size": 5, "sigma": (0.5, 2.0)})(RNG, x))
  sigma = drawn_levels(RNG, 4, 0.5, 2.0)
  assert np.all((sigma >= 0.5) & (sigma <= 2.0)) and np.ptp(sigma) > 0.1
  for i in range(4):
    np.testing.assert_allclose(y[i], scipy_blur(np.asarray(x[i]), 5, sigma[i]), atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 4, 5, 2), (1, 1, 6, 2)])
def test_blur_kernel_wider_than_the_image_matches_scipy(shape):
  # The padding mirrors again and again, as scipy's "mirror" mode does.
  x = positive_images(shape)
  y = jax.jit(operators.build({"kind": "blur", "kernel_size": 13, "sigma": 3.0}))(RNG, x)
  np.testing.assert_allclose(np.asarray(y[0]), scipy_blur(np.asarray(x[0]), 13, 3.0),
                             atol=1e-5)


# --------------------------------------------------------------------------- block mask


def zeroed_boxes(y):
  """(top, left, height, width, count) of each image's zeroed pixels."""
  boxes = []
  for zero in (y == 0).all(-1):
    rows, cols = np.nonzero(zero)
    boxes.append((rows.min(), cols.min(), np.ptp(rows) + 1, np.ptp(cols) + 1, zero.sum()))
  return boxes


def test_block_mask_zeroes_exactly_one_square(jitted):
  x = positive_images(SHAPE)
  y = np.asarray(jitted({"kind": "block_mask", "size": 3})(RNG, x))
  boxes = zeroed_boxes(y)
  assert all(box[2:] == (3, 3, 9) for box in boxes)  # A full 3x3 square, nothing else.
  assert ((y == 0).any(-1) == (y == 0).all(-1)).all()
  assert len({box[:2] for box in boxes}) > 1


def test_block_mask_positions_are_uniform(jitted):
  y = np.asarray(jitted({"kind": "block_mask", "size": 2})(RNG, positive_images((500, 6, 6, 1))))
  corners = np.array([box[:2] for box in zeroed_boxes(y)])
  frequency = np.bincount(corners[:, 0] * 5 + corners[:, 1], minlength=25) / 500
  assert frequency.min() > 0 and np.abs(frequency - 1 / 25).max() < 0.035  # std 0.009


def test_block_mask_range_of_sizes(jitted):
  y = np.asarray(jitted({"kind": "block_mask", "size": (1, 4)})(RNG, positive_images(SHAPE)))
  sides = [box[2] for box in zeroed_boxes(y)]
  assert all(box[2] == box[3] and box[4] == box[2]**2 for box in zeroed_boxes(y))
  assert set(sides) <= {1, 2, 3, 4} and len(set(sides)) > 1


# --------------------------------------------------------------------------- downsample


def test_downsample_is_identity_on_block_constant_images(jitted):
  coarse = np.random.default_rng(1).uniform(size=(4, 8, 8, 3)).astype(np.float32)
  x = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)  # SHAPE
  y = jitted({"kind": "downsample", "factor": 4})(RNG, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y), x, atol=1e-6)


def test_downsample_equals_block_average_then_repeat(jitted):
  x = np.asarray(positive_images(SHAPE))
  y = np.asarray(jitted({"kind": "downsample", "factor": 4})(RNG, jnp.asarray(x)))
  expected = np.empty_like(x)
  for i in range(0, 32, 4):
    for j in range(0, 32, 4):
      expected[:, i:i + 4, j:j + 4] = x[:, i:i + 4, j:j + 4].mean(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(y, expected, atol=1e-6)


# --------------------------------------------------------------------------- compose, identity

COMPOSED = ({"kind": "mask", "p": 0.75}, {"kind": "noise", "sigma": 0.3},
            {"kind": "blur", "kernel_size": 5, "sigma": (0.5, 2.0)})


def test_compose_equals_sequential_application_with_split_keys(jitted):
  x = positive_images(SHAPE)
  y = jitted({"kind": "compose", "ops": list(COMPOSED)})(RNG, x)
  expected = x
  for stage_key, spec in zip(jax.random.split(RNG, 3), COMPOSED):
    expected = jitted(spec)(stage_key, expected)
  np.testing.assert_allclose(np.asarray(y), np.asarray(expected), atol=1e-6)


def test_identity_returns_the_images():
  x = positive_images(SHAPE)
  np.testing.assert_array_equal(operators.build({"kind": "identity"})(RNG, x), x)


# --------------------------------------------------------------------------- all kinds

RANDOM_SPECS = (
    {"kind": "mask", "p": 0.75},
    {"kind": "mask", "p": (0.5, 0.95)},
    {"kind": "noise", "sigma": (0.1, 0.3)},
    {"kind": "noise", "sigma": 0.3, "clip": True},
    {"kind": "blur", "kernel_size": 5, "sigma": (0.5, 2.0)},
    {"kind": "block_mask", "size": (1, 4)},
    {"kind": "compose", "ops": list(COMPOSED)},
)


@pytest.mark.parametrize("spec", RANDOM_SPECS, ids=operators.describe)
def test_determinism_per_key_and_jit_agreement(jitted, spec):
  x = positive_images(SHAPE)
  op = jitted(spec)
  first = op(RNG, x)
  chex.assert_trees_all_equal(first, op(RNG, x))
  assert not np.array_equal(np.asarray(first), np.asarray(op(jax.random.key(7), x)))
  chex.assert_shape(first, x.shape)
  chex.assert_type(first, jnp.float32)
  np.testing.assert_allclose(np.asarray(operators.build(spec)(RNG, x)), np.asarray(first),
                             atol=1e-6)


def test_paper_settings_and_labels():
  labels = [operators.describe(spec) for spec in operators.PAPER_SETTINGS]
  assert labels == ["mask p=0.5", "mask p=0.75", "mask p=0.9", "noise sigma=0.1",
                    "noise sigma=0.3", "noise sigma=0.5", "blur k=21 sigma=5",
                    "blur k=37 sigma=9"]
  assert operators.describe({"kind": "mask", "p": (0.5, 0.95)}) == "mask p~U(0.5,0.95)"
  assert (operators.describe({"kind": "compose", "ops": [
      {"kind": "noise", "sigma": 0.1, "clip": True}, {"kind": "downsample", "factor": 4}]})
          == "noise sigma=0.1 clip + downsample factor=4")


def test_configdict_specs_equal_dict_specs(jitted):
  x = positive_images(SHAPE)
  spec = {"kind": "compose", "ops": list(COMPOSED)}
  from_config = jax.jit(operators.build(ml_collections.ConfigDict(spec)))
  chex.assert_trees_all_equal(from_config(RNG, x), jitted(spec)(RNG, x))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("spec, field, allowed", [
    ({"kind": "sharpen"}, "kind", "'mask'"),
    ({"p": 0.5}, "kind", "'blur'"),
    ({"kind": "mask", "p": 0.5, "q": 1}, "'q'", "['p']"),
    ({"kind": "mask"}, "operator.p", "['p']"),
    ({"kind": "mask", "p": 1.5}, "operator.p", "<= 1"),
    ({"kind": "mask", "p": -0.1}, "operator.p", "0.0 <="),
    ({"kind": "mask", "p": (0.9, 0.5)}, "operator.p", "low <= high"),
    ({"kind": "mask", "p": (0.5, 0.9, 0.95)}, "operator.p", "pair"),
    ({"kind": "mask", "p": "0.5"}, "operator.p", "a number"),
    ({"kind": "noise", "sigma": -0.1}, "operator.sigma", "0.0 <="),
    ({"kind": "noise", "sigma": 0.1, "clip": "yes"}, "operator.clip", "True or False"),
    ({"kind": "blur", "kernel_size": 20, "sigma": 5.0}, "operator.kernel_size", "odd"),
    ({"kind": "blur", "kernel_size": 21.0, "sigma": 5.0}, "operator.kernel_size", "odd"),
    ({"kind": "blur", "kernel_size": 21, "sigma": -5.0}, "operator.sigma", "0.0 <"),
    ({"kind": "blur", "kernel_size": 21, "sigma": 0.0}, "operator.sigma", "0.0 <"),
    ({"kind": "block_mask", "size": 0}, "operator.size", "integer"),
    ({"kind": "block_mask", "size": (2.5, 4)}, "operator.size", "integer"),
    ({"kind": "downsample", "factor": 0}, "operator.factor", ">= 1"),
    ({"kind": "downsample", "factor": (2, 4)}, "operator.factor", ">= 1"),
    ({"kind": "compose", "ops": []}, "operator.ops", "non-empty list"),
    ({"kind": "compose", "ops": [{"kind": "identity"}, {"kind": "mask", "p": 2}]},
     "operator.ops[1].p", "<= 1"),
    ("mask", "operator", "dict or ConfigDict"),
])
def test_bad_specs_name_the_field_and_allowed_values(spec, field, allowed):
  for check in (operators.build, operators.describe):
    with pytest.raises(ValueError) as error:
      check(spec)
    assert field in str(error.value) and allowed in str(error.value)


@pytest.mark.parametrize("spec, images, message", [
    ({"kind": "mask", "p": 0.5}, np.zeros((2, 4, 4, 3), np.uint8), "images / 255"),
    ({"kind": "noise", "sigma": 0.1}, np.zeros((4, 4, 3), np.float32), "[B, H, W, C]"),
    ({"kind": "block_mask", "size": (2, 5)}, np.zeros((1, 4, 8, 1), np.float32), "size <= 4"),
    ({"kind": "downsample", "factor": 3}, np.zeros((1, 6, 8, 1), np.float32), "factor=3"),
])
def test_bad_images_raise(spec, images, message):
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
    operators.build(spec)(RNG, jnp.asarray(images))

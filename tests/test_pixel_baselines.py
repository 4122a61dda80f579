"""Pixel-space baselines: non-local means against scikit-image, the Deep Decoder against a
numpy forward pass and on tiny inpainting/denoising problems (one compiled fit shared)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.restoration import denoise_nl_means

from rrjax import operators, sharding
from rrjax.baselines import pixel

HEIGHT, WIDTH = 16, 24  # Not square, to catch mixed-up axes.
FIT = dict(steps=200, channels=8, num_layers=2)
IMAGES = 8  # One per simulated device (conftest), for the sharded fit.
# Jitted once and shared: eager op-by-op dispatch compiles every small op, far slower here.
mask_half = jax.jit(operators.build({"kind": "mask", "p": 0.5}))


@jax.jit
def initial_decoder(key):
  """An image's generator input and initial weights, by the documented key layout."""
  init_key, input_key = jax.random.split(key)
  z = pixel.deep_decoder_input(input_key, HEIGHT, WIDTH, channels=FIT["channels"],
                               num_layers=FIT["num_layers"])
  model = pixel.DeepDecoder(channels=FIT["channels"], num_layers=FIT["num_layers"])
  return z, model.init(init_key, z)["params"]


def smooth_images(count: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
  """Smooth colour images in [0.1, 0.9]: a random plane wave per channel."""
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  images = np.empty((count, height, width, 3), np.float32)
  for image in images:
    for channel in range(3):
      angle, phase = rng.uniform(0, 2 * np.pi, size=2)
      frequency = rng.uniform(0.5, 1)
      wave = frequency * (x * np.cos(angle) + y * np.sin(angle))
      image[..., channel] = 0.5 + 0.4 * np.sin(2 * np.pi * wave + phase)
  return images


def psnr(estimate, reference, weights=None) -> np.ndarray:
  """Per-image PSNR (peak 1) over the entries where weights (broadcast) are 1."""
  weights = np.ones_like(reference[..., :1]) if weights is None else weights
  squared = np.asarray(weights) * (np.asarray(estimate) - reference)**2
  count = np.broadcast_to(weights, reference.shape).sum(axis=(1, 2, 3))
  mse = squared.sum(axis=(1, 2, 3)) / count
  return -10 * np.log10(mse)


# ------------------------------------------------------------------------ non-local means


def test_nlm_denoise_matches_skimage_and_removes_noise():
  clean = smooth_images(3, 32, 32)
  noise = np.random.default_rng(1).standard_normal(clean.shape).astype(np.float32)
  noisy = clean + 0.1 * noise
  denoised = pixel.nlm_denoise(noisy, sigma=0.1, num_threads=2)
  assert denoised.shape == clean.shape and denoised.dtype == np.float32
  assert denoised.min() >= 0 and denoised.max() <= 1
  direct = denoise_nl_means(noisy[1], patch_size=5, patch_distance=6, h=0.08, sigma=0.1,
                            fast_mode=True, channel_axis=-1)
  np.testing.assert_allclose(denoised[1], np.clip(direct, 0, 1), atol=1e-6)
  np.testing.assert_array_equal(pixel.nlm_denoise(noisy, sigma=0.1, num_threads=1), denoised)
  assert np.all(psnr(denoised, clean) > psnr(noisy, clean) + 8)


def test_nlm_denoise_rejects_bad_input():
  images = np.zeros((1, 8, 8, 3), np.float32)
  with pytest.raises(ValueError, match="sigma"):
    pixel.nlm_denoise(images, sigma=0.0)
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    pixel.nlm_denoise(images[0], sigma=0.1)
  with pytest.raises(ValueError, match="uint8"):
    pixel.nlm_denoise(images.astype(np.uint8), sigma=0.1)


# --------------------------------------------------------------------------- observed mask


def test_observed_mask_recovers_the_mask_operator_positions():
  images = jnp.asarray(smooth_images(IMAGES))  # No channel is ever 0.
  masked = mask_half(jax.random.key(5), images)
  mask = pixel.observed_mask(masked)
  assert mask.shape == (IMAGES, HEIGHT, WIDTH, 1) and mask.dtype == jnp.float32
  np.testing.assert_array_equal(mask.sum(axis=(1, 2, 3)), [HEIGHT * WIDTH // 2] * IMAGES)
  np.testing.assert_array_equal(masked * mask, masked)
  # A pure black pixel is indistinguishable from a dropped one; one zero channel is not.
  images = images.at[0, 0, 0].set(0.0).at[0, 0, 1, 2].set(0.0)
  mask = pixel.observed_mask(images)
  assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 1, 0] == 1


# ---------------------------------------------------------------------------- Deep Decoder


def numpy_deep_decoder(params, z) -> np.ndarray:
  """Reference forward pass, written from the layout in the module docstring."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(z, np.float64)
  num_layers = sum(name.startswith("norm_") for name in params) - 1

  def upsample(x, axis):  # PyTorch bilinear x2, align_corners=False: clamp, then lerp.
    size = x.shape[axis]
    source = np.clip((np.arange(2 * size) + 0.5) / 2 - 0.5, 0, size - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, size - 1)
    fraction = (source - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return (1 - fraction) * np.take(x, low, axis) + fraction * np.take(x, high, axis)

  for layer in range(num_layers + 1):
    x = x @ params[f"conv_{layer}"]["kernel"]
    if layer < num_layers:
      x = upsample(upsample(x, 1), 2)
    x = np.maximum(x, 0)
    norm = params[f"norm_{layer}"]
    normalised = (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(
        x.var(axis=(1, 2), keepdims=True) + 1e-5)
    x = normalised * norm["scale"] + norm["bias"]
  return 1 / (1 + np.exp(-(x @ params["conv_out"]["kernel"])))


def test_deep_decoder_forward_matches_numpy():
  z, params = initial_decoder(jax.random.key(0))
  assert z.shape == (1, 4, 6, 8) and 0 <= z.min() and z.max() < 0.1
  # Non-trivial norm scales and biases, so that they are checked too.
  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda leaf: leaf + 0.3 * rng.standard_normal(leaf.shape), params)
  model = pixel.DeepDecoder(channels=FIT["channels"], num_layers=FIT["num_layers"])
  output = jax.jit(model.apply)({"params": params}, z)
  assert output.shape == (1, HEIGHT, WIDTH, 3)
  np.testing.assert_allclose(output, numpy_deep_decoder(params, z), atol=1e-5)


@pytest.fixture(scope="module")
def inpainting():
  """Smooth images, half their pixels dropped, and their fit (compiled once)."""
  clean = smooth_images(IMAGES)
  masked = mask_half(jax.random.key(0), jnp.asarray(clean))
  mask = pixel.observed_mask(masked)
  fit = pixel.fit_deep_decoder(jax.random.key(1), masked, mask, **FIT)
  return clean, masked, mask, fit


def test_deep_decoder_first_loss_is_the_masked_mse_of_the_initial_generator(inpainting):
  clean, masked, mask, fit = inpainting
  assert fit.images.shape == clean.shape and fit.losses.shape == (IMAGES, FIT["steps"])
  for i, key in enumerate(jax.random.split(jax.random.key(1), IMAGES)):  # Documented layout.
    z, params = initial_decoder(key)
    initial = numpy_deep_decoder(params, z)[0]
    observed = np.asarray(mask[i])
    expected = (observed * (initial - np.asarray(masked[i]))**2).sum() / (3 * observed.sum())
    np.testing.assert_allclose(fit.losses[i, 0], expected, rtol=1e-4)


def test_deep_decoder_loss_decreases(inpainting):
  losses = np.asarray(inpainting[3].losses)
  window_means = losses.reshape(IMAGES, 10, -1).mean(axis=-1)
  assert np.all(np.diff(window_means, axis=1) < 0)
  assert np.all(losses[:, -1] < 0.1 * losses[:, 0])


def test_deep_decoder_inpaints_unobserved_pixels(inpainting):
  clean, masked, mask, fit = inpainting
  assert 0 <= fit.images.min() and fit.images.max() <= 1
  missing = 1 - np.asarray(mask)
  zero_fill, restored = psnr(masked, clean, missing), psnr(fit.images, clean, missing)
  assert np.all(restored > zero_fill + 10), (zero_fill, restored)
  np.testing.assert_array_equal(
      pixel.deep_decoder_inpaint(jax.random.key(1), masked, mask, **FIT), fit.images)


def test_deep_decoder_images_are_independent_and_deterministic(inpainting):
  clean, masked, mask, fit = inpainting
  changed = masked.at[1].set(masked[1, ::-1])
  refit = pixel.fit_deep_decoder(jax.random.key(1), changed, mask, **FIT)
  unchanged = np.arange(IMAGES) != 1
  np.testing.assert_allclose(refit.images[unchanged], fit.images[unchanged], atol=1e-6)
  assert np.abs(refit.images[1] - fit.images[1]).max() > 0.05
  again = pixel.fit_deep_decoder(jax.random.key(1), masked, mask, **FIT)
  np.testing.assert_array_equal(again.images, fit.images)
  other_key = pixel.fit_deep_decoder(jax.random.key(2), masked, mask, **FIT)
  assert np.abs(other_key.images - fit.images).max() > 1e-3


def test_deep_decoder_fit_sharded_over_devices_matches_one_device(inpainting):
  clean, masked, mask, fit = inpainting
  batch = sharding.shard_batch((masked, mask), sharding.make_mesh())
  sharded = pixel.fit_deep_decoder(jax.random.key(1), *batch, **FIT)
  assert sharded.images.sharding.is_equivalent_to(batch[0].sharding, 4)
  # Compiled differently, so rounding differs, and 200 Adam steps amplify it: compare
  # the early losses tightly and the final images loosely.
  np.testing.assert_allclose(sharded.losses[:, :20], fit.losses[:, :20], rtol=1e-4)
  np.testing.assert_allclose(sharded.images, fit.images, atol=0.05)


def test_deep_decoder_denoises(inpainting):
  clean = inpainting[0]
  noise = np.random.default_rng(3).standard_normal(clean.shape).astype(np.float32)
  noisy = clean + 0.1 * noise
  denoised = pixel.deep_decoder_denoise(jax.random.key(1), noisy, **FIT)  # Same compiled fit.
  assert np.all(psnr(denoised, clean) > psnr(noisy, clean) + 2)


@pytest.mark.parametrize("call, message", [
    (lambda: pixel.fit_deep_decoder(jax.random.key(0), np.zeros((1, 12, 16, 3)),
                                    np.ones((1, 12, 16, 1)), num_layers=3), "multiple of"),
    (lambda: pixel.fit_deep_decoder(jax.random.key(0), np.zeros((1, 16, 16, 3)),
                                    np.ones((2, 16, 16, 1))), "mask must have shape"),
    (lambda: pixel.fit_deep_decoder(jax.random.key(0), np.zeros((1, 16, 16, 1)),
                                    np.ones((1, 16, 16, 1))), r"\[B, H, W, 3\]"),
    (lambda: pixel.deep_decoder_denoise(jax.random.key(0), np.zeros((1, 16, 16, 3)),
                                        steps=0), "steps"),
    (lambda: pixel.observed_mask(np.zeros((16, 16, 3))), r"\[B, H, W, C\]"),
])
def test_deep_decoder_rejects_bad_input(call, message):
  with pytest.raises(ValueError, match=message):
    call()

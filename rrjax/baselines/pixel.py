"""Pixel-space baselines (SPEC §6 E7, the paper's Tables 7 and 8): restore, then classify.

Instead of learning robust representations, restore the corrupted image in pixel space
and hand the restoration to a classifier trained on clean images:

  nlm_denoise(noisy01, sigma=0.1)                      non-local means (scikit-image), CPU
  deep_decoder_inpaint(rng, masked01, observed_mask(masked01))   Deep Decoder, on device
  deep_decoder_denoise(rng, noisy01)                   Deep Decoder fitted to every pixel

Images are float [B, H, W, 3] in [0, 1] (noisy images may stray outside; restorations
never do).

Deep Decoder (Heckel & Hand, "Deep Decoder: Concise Image Representations from
Untrained Non-convolutional Networks", ICLR 2019): an untrained generator G maps a fixed
random tensor z [H/2^L, W/2^L, k] to an image; its weights are fitted to one corrupted
image by Adam on the MSE over the observed pixels, and G(z) is the restoration. The
network's structure (1x1 convolutions, bilinear upsampling, channel normalisation) fits
natural images long before it fits noise or fills holes with garbage, so the number of
steps is the regulariser. Layout, following the authors' reference code (`decodernw`):

  L times:  1x1 conv (k -> k, no bias) -> bilinear x2 upsample -> ReLU -> channel norm
  once:     1x1 conv (k -> k, no bias) -> ReLU -> channel norm        (full resolution)
  output:   1x1 conv (k -> 3, no bias) -> sigmoid

where channel norm normalises each channel over the spatial positions of the image
(PyTorch BatchNorm2d in training mode on a batch of one image, eps 1e-5) with a learnable
scale and bias. The input z is uniform on [0, 0.1), weights start uniform on
±1/sqrt(fan_in) (PyTorch's defaults, which the reference code uses).

Every image gets its own generator and optimiser state; `fit_deep_decoder` vmaps the
whole fit (initialisation and all steps, a `lax.scan`) over the batch inside one jit, so
a batch of images is fitted in parallel on the device. The batch may be sharded over
devices (`rrjax.sharding.shard_batch`): images never interact, so XLA partitions the fit
along the batch without communication.

Randomness, per image (tests rely on this layout):
  keys = jax.random.split(rng, B)                    # image i uses keys[i]
  init_key, input_key = jax.random.split(keys[i])    # generator weights, input z
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from skimage.restoration import denoise_nl_means

# ------------------------------------------------------------------------ shared checks


def _check_images(name: str, images) -> None:
  if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
    raise ValueError(
        f"{name} must be a non-empty batch of RGB images with shape [B, H, W, 3]; got "
        f"shape {tuple(images.shape)}.")
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(
        f"{name} must be float images in [0, 1]; got dtype {images.dtype} (divide uint8 "
        f"images by 255).")


# ----------------------------------------------------------------------- non-local means


def _default_threads() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def nlm_denoise(images01, *, sigma: float, patch_size: int = 5, patch_distance: int = 6,
                h_factor: float = 0.8, num_threads: int | None = None) -> np.ndarray:
  """Non-local means denoising of every image, knowing the noise level `sigma`.

  scikit-image's `denoise_nl_means` in fast mode, RGB patches (channel_axis=-1), with
  `sigma` passed so that patch distances discount the expected noise variance and the
  cut-off h = h_factor * sigma (scikit-image's recommended 0.8 for this setting).
  The noisy input is used as is (the paper's noise is not clipped); the output is
  clipped to [0, 1]. Images are processed in a pool of `num_threads` threads
  (default: the CPUs this process may use); scikit-image releases the GIL.

  Returns float32 numpy [B, H, W, 3].
  """
  images01 = np.asarray(images01)
  _check_images("images01", images01)
  if not (isinstance(sigma, (int, float, np.number)) and sigma > 0):
    raise ValueError(
        f"sigma must be the noise level (> 0, on the [0, 1] scale) of the images; got "
        f"{sigma!r}. For a range operator pass the level of this batch.")
  num_threads = _default_threads() if num_threads is None else num_threads
  if num_threads < 1:
    raise ValueError(f"num_threads must be >= 1; got {num_threads}.")
  denoise = partial(denoise_nl_means, patch_size=patch_size, patch_distance=patch_distance,
                    h=h_factor * sigma, sigma=sigma, fast_mode=True, channel_axis=-1,
                    preserve_range=True)
  images = images01.astype(np.float32, copy=False)
  with ThreadPoolExecutor(max_workers=min(num_threads, len(images))) as pool:
    denoised = list(pool.map(denoise, images))
  return np.clip(np.stack(denoised), 0.0, 1.0).astype(np.float32)


# -------------------------------------------------------------------------- Deep Decoder


def observed_mask(corrupted01) -> jax.Array:
  """Which pixels a `mask` or `block_mask` operator left: float32 [B, H, W, 1], 1 = kept.

  The operators zero every channel of a dropped pixel, so a pixel counts as observed
  unless all its channels are exactly 0. Ambiguity: a pixel that was pure black in the
  clean image is indistinguishable from a dropped one and is treated as missing; the
  Deep Decoder then fills it from its neighbours, which for a black pixel in a black
  region gives the same answer, and otherwise loses one pixel's evidence. Pass the
  operator's own mask instead where it is available.
  """
  corrupted01 = jnp.asarray(corrupted01)
  if corrupted01.ndim != 4:
    raise ValueError(
        f"corrupted01 must have shape [B, H, W, C]; got shape {tuple(corrupted01.shape)}.")
  return jnp.any(corrupted01 != 0, axis=-1, keepdims=True).astype(jnp.float32)


def _conv1x1(features: int, name: str) -> nn.Dense:
  """A 1x1 convolution without bias, initialised like PyTorch's (uniform ±1/sqrt(fan_in)).

  A Dense over the channel axis: under vmap over images its per-image weights become a
  batched matmul, where an `nn.Conv` would become a grouped convolution, which is slower
  and which XLA fails to partition when the batch is sharded over devices.
  """
  return nn.Dense(features, use_bias=False, name=name,
                  kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"))


class ChannelNorm(nn.Module):
  """Normalises each channel over the spatial axes of each image; learnable scale, bias."""
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):  # [N, H, W, C]
    mean = x.mean(axis=(1, 2), keepdims=True)
    variance = x.var(axis=(1, 2), keepdims=True)
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    return (x - mean) * jax.lax.rsqrt(variance + self.epsilon) * scale + bias


def bilinear_upsample2(x):
  """x2 bilinear upsampling of [N, H, W, C] with half-pixel centres and clamped edges
  (PyTorch `Upsample(scale_factor=2, mode="bilinear")`, align_corners=False).

  Output pixel 2i sits a quarter pixel before input pixel i, 2i + 1 a quarter after, so
  each is 3/4 of pixel i plus 1/4 of its neighbour on that side (itself at the edges).
  Written as shifts rather than `jax.image.resize`, which compiles far more slowly.
  """

  def upsample_axis(x, axis):
    size = x.shape[axis]
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(x, size - 1, size, axis=axis)
    before = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, size - 1, axis=axis)], axis)
    after = jnp.concatenate([jax.lax.slice_in_dim(x, 1, size, axis=axis), last], axis)
    pairs = jnp.stack([0.75 * x + 0.25 * before, 0.75 * x + 0.25 * after], axis=axis + 1)
    return pairs.reshape(x.shape[:axis] + (2 * size,) + x.shape[axis + 1:])

  return upsample_axis(upsample_axis(x, 1), 2)


class DeepDecoder(nn.Module):
  """The generator: fixed input [N, H/2^L, W/2^L, channels] -> images [N, H, W, 3]."""
  channels: int = 64
  num_layers: int = 5  # L, the number of x2 upsampling layers.
  output_channels: int = 3

  @nn.compact
  def __call__(self, z):
    x = z
    for layer in range(self.num_layers + 1):
      x = _conv1x1(self.channels, f"conv_{layer}")(x)
      if layer < self.num_layers:  # The last hidden layer stays at full resolution.
        x = bilinear_upsample2(x)
      x = ChannelNorm(name=f"norm_{layer}")(nn.relu(x))
    x = _conv1x1(self.output_channels, "conv_out")(x)
    return nn.sigmoid(x)


def deep_decoder_input(key, height: int, width: int, *, channels: int,
                       num_layers: int) -> jax.Array:
  """The fixed random input z of one image: uniform on [0, 0.1), [1, H/2^L, W/2^L, k]."""
  factor = 2**num_layers
  shape = (1, height // factor, width // factor, channels)
  return 0.1 * jax.random.uniform(key, shape)


def masked_mse(images, observed, mask):
  """Mean squared error over the observed entries of one image ([H, W, 3], mask [H, W, 1])."""
  count = jnp.maximum(mask.sum() * images.shape[-1], 1.0)
  return jnp.sum(mask * (images - observed)**2) / count


class DeepDecoderFit(NamedTuple):
  images: jax.Array  # [B, H, W, 3] in [0, 1]: G(z) after the last step.
  losses: jax.Array  # [B, steps]: masked MSE before each step (losses[:, 0] at init).


@partial(jax.jit, static_argnames=("steps", "learning_rate", "channels", "num_layers"))
def _fit(rng, observed01, mask, *, steps, learning_rate, channels, num_layers):
  model = DeepDecoder(channels=channels, num_layers=num_layers)
  optimizer = optax.adam(learning_rate)
  height, width = observed01.shape[1:3]

  def fit_one(key, observed, mask):
    init_key, input_key = jax.random.split(key)
    z = deep_decoder_input(input_key, height, width, channels=channels,
                           num_layers=num_layers)
    params = model.init(init_key, z)["params"]

    def loss_fn(params):
      return masked_mse(model.apply({"params": params}, z)[0], observed, mask)

    def step(state, _):
      params, opt_state = state
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), None,
                                       length=steps)
    return model.apply({"params": params}, z)[0], losses

  keys = jax.random.split(rng, observed01.shape[0])
  return DeepDecoderFit(*jax.vmap(fit_one)(keys, observed01, mask))


def fit_deep_decoder(rng, observed01, mask, *, steps: int = 5000,
                     learning_rate: float = 0.01, channels: int = 64,
                     num_layers: int = 5) -> DeepDecoderFit:
  """Fits one Deep Decoder per image to its observed pixels; all images in one jit.

  Args:
    rng: a JAX key; image i uses jax.random.split(rng, B)[i] (see the module doc).
    observed01: float [B, H, W, 3], the corrupted images (values at unobserved pixels
      are ignored). H and W must be multiples of 2**num_layers.
    mask: [B, H, W, 1] (or [B, H, W]), 1 where a pixel was observed, 0 where not.
    steps: Adam steps; the step count is the regulariser (SPEC E7: 5000).
    learning_rate: Adam's learning rate (the reference code's 0.01).
    channels: k, the generator's width (number of channels of every hidden layer).
    num_layers: L, the number of x2 upsampling layers.

  Returns:
    DeepDecoderFit(images [B, H, W, 3] in [0, 1], losses [B, steps]), on device.
  """
  observed01 = jnp.asarray(observed01)
  _check_images("observed01", observed01)
  mask = jnp.asarray(mask, jnp.float32)
  if mask.ndim == 3:
    mask = mask[..., None]
  if mask.shape != observed01.shape[:3] + (1,):
    raise ValueError(
        f"mask must have shape [B, H, W, 1] = {observed01.shape[:3] + (1,)} to match "
        f"observed01; got {tuple(mask.shape)}.")
  for name, value in (("steps", steps), ("channels", channels)):
    if not (isinstance(value, int) and value >= 1):
      raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
  if not (isinstance(num_layers, int) and num_layers >= 0):
    raise ValueError(f"num_layers must be an integer >= 0; got {num_layers!r}.")
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0; got {learning_rate!r}.")
  height, width = observed01.shape[1:3]
  factor = 2**num_layers
  if height % factor or width % factor:
    raise ValueError(
        f"image size {height}x{width} must be a multiple of 2**num_layers = {factor} (the "
        f"generator doubles a {height / factor}x{width / factor} input num_layers times); "
        f"lower num_layers or crop the images.")
  return _fit(rng, observed01.astype(jnp.float32), mask, steps=steps,
              learning_rate=float(learning_rate), channels=channels, num_layers=num_layers)


def deep_decoder_inpaint(rng, observed01, mask, **fit_kwargs) -> jax.Array:
  """Inpainting: the fitted generators' images [B, H, W, 3] (fit_deep_decoder's args)."""
  return fit_deep_decoder(rng, observed01, mask, **fit_kwargs).images


def deep_decoder_denoise(rng, noisy01, **fit_kwargs) -> jax.Array:
  """Denoising: every pixel observed; the step count (early stopping) regularises."""
  noisy01 = jnp.asarray(noisy01)
  _check_images("noisy01", noisy01)
  mask = jnp.ones(noisy01.shape[:3] + (1,), jnp.float32)
  return fit_deep_decoder(rng, noisy01, mask, **fit_kwargs).images


RESTORATIONS = ("nlm", "deep_decoder")


def restoration(name: str, operator_spec: dict, *, steps: int = 5000,
                num_layers: int = 5, channels: int = 64):
  """`restore(corrupted01) -> restored01` for SPEC E7, traceable inside `jax.jit`.

  "nlm": non-local means with the operator's noise level (the middle of a range), run on
  the host through `jax.pure_callback`; "deep_decoder": a Deep Decoder fitted per image
  to the observed pixels (those a `mask` operator left non-black; every pixel otherwise).
  """
  kind = operator_spec.get("kind")
  if name == "nlm":
    if kind != "noise":
      raise ValueError(f"evals.restoration.restore='nlm' denoises; the operator is {kind!r}, "
                       "not 'noise'.")
    sigma = float(np.mean(operator_spec["sigma"]))

    def restore(corrupted01):
      shape = jax.ShapeDtypeStruct(corrupted01.shape, jnp.float32)
      return jax.pure_callback(lambda x: nlm_denoise(np.asarray(x), sigma=sigma), shape,
                               corrupted01.astype(jnp.float32))
    return restore
  if name == "deep_decoder":

    def restore(corrupted01):
      mask = (observed_mask(corrupted01) if kind in ("mask", "block_mask")
              else jnp.ones(corrupted01.shape[:3] + (1,), jnp.float32))
      return fit_deep_decoder(jax.random.key(0), corrupted01, mask, steps=steps,
                              channels=channels, num_layers=num_layers).images
    return restore
  raise ValueError(f"evals.restoration.restore={name!r}; allowed: {', '.join(RESTORATIONS)}.")

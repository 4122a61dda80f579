"""What the ImageNet-C corruptions share (rrjax.imagenet_c): boundary rules, filters as
matrices, colour conversions, zoom, motion blur, the plasma fractal, and the shape of a
corruption's entry."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST

# Filters with static kernels are [size, size] matrices built in numpy at trace time: one
# matmul per axis, exact boundary rules at any size, fast on CPU and accelerators.


def source_index(index: np.ndarray, size: int, mode: str) -> np.ndarray:
  """The pixel a boundary rule reads for integer indices, inside [0, size) or not.

  "nearest" (scipy, skimage's default): aa|abcd|dd; "reflect" (scipy): ba|abcd|dc;
  "mirror" (scipy; OpenCV's default BORDER_REFLECT_101): cb|abcd|cb.
  """
  if mode == "nearest":
    return np.clip(index, 0, size - 1)
  if mode == "reflect":
    index = np.mod(index, 2 * size)
    return np.where(index >= size, 2 * size - 1 - index, index)
  period = max(2 * (size - 1), 1)
  index = np.mod(index, period)
  return np.where(index > size - 1, period - index, index)


def correlation_matrix(size: int, kernel: np.ndarray, mode: str) -> np.ndarray:
  """[size, size]: row i holds the weight output i gives each input (centred kernel)."""
  radius = (len(kernel) - 1) // 2
  taps = np.arange(size)[:, None] + np.arange(len(kernel))[None, :] - radius
  matrix = np.zeros((size, size))
  np.add.at(matrix, (np.repeat(np.arange(size), len(kernel)),
                     source_index(taps, size, mode).ravel()), np.tile(kernel, size))
  return matrix


def separable(image, rows: np.ndarray, cols: np.ndarray):
  """Applies an [H, H] matrix along the rows and a [W, W] one along the columns of
  an [H, W, C] image."""
  out = jnp.einsum("ij,jwc->iwc", jnp.asarray(rows, jnp.float32), image, precision=HIGHEST)
  return jnp.einsum("kw,iwc->ikc", jnp.asarray(cols, jnp.float32), out, precision=HIGHEST)


@functools.lru_cache(maxsize=None)
def gaussian_matrices(h: int, w: int, sigma_h: float, sigma_w: float, mode: str,
                       truncate: float) -> tuple[np.ndarray, np.ndarray]:
  def kernel(sigma):  # scipy.ndimage.gaussian_filter1d's
    radius = int(truncate * sigma + 0.5)
    g = np.exp(-0.5 * np.arange(-radius, radius + 1)**2 / sigma**2)
    return g / g.sum()

  return (correlation_matrix(h, kernel(sigma_h), mode),
          correlation_matrix(w, kernel(sigma_w), mode))


def skimage_gaussian(image, sigma, mode: str = "nearest", truncate: float = 4.0):
  """skimage.filters.gaussian of [H, W, C], channels apart; sigma: a number or (H, W)."""
  sigma_h, sigma_w = (sigma, sigma) if np.isscalar(sigma) else sigma
  return separable(image, *gaussian_matrices(image.shape[0], image.shape[1],
                                               float(sigma_h), float(sigma_w), mode,
                                               truncate))


def gray(image):
  """OpenCV's RGB2GRAY (ITU-R 601 luma), [H, W, 3] -> [H, W, 1]."""
  r, g, b = image[..., 0:1], image[..., 1:2], image[..., 2:3]
  return 0.299 * r + 0.587 * g + 0.114 * b


def rgb_to_hsv(rgb):
  """skimage.color.rgb2hsv (ties between maxima go to blue, then green, as there)."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = rgb.max(-1)
  delta = v - rgb.min(-1)
  grey = delta == 0
  safe = jnp.where(grey, 1, delta)
  s = jnp.where(grey, 0, delta / jnp.where(v == 0, 1, v))
  h = jnp.where(b == v, 4 + (r - g) / safe,
                jnp.where(g == v, 2 + (b - r) / safe, (g - b) / safe))
  return jnp.where(grey, 0, jnp.mod(h / 6, 1.0)), s, v


def hsv_to_rgb(h, s, v):
  """skimage.color.hsv2rgb."""
  hi = jnp.floor(h * 6)
  f = h * 6 - hi
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  sector = jnp.mod(hi.astype(jnp.int32), 6)[..., None]
  choices = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
  return jnp.select([sector == k for k in range(6)],
                    [jnp.stack(c, -1) for c in choices])


@functools.lru_cache(maxsize=None)
def zoom_taps(size: int, zoom: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """imagecorruptions' clipped_zoom along one axis: scipy.ndimage.zoom(order=1) of the
  centred ceil(size / zoom) crop. Per output (round(crop * zoom) >= size of them): the
  lower and upper source index and the upper one's weight."""
  crop = int(math.ceil(size / zoom))
  top = (size - crop) // 2
  out = int(round(crop * zoom))
  # scipy's grid_mode=False: output o samples input o (crop - 1) / (out - 1).
  position = np.arange(out) * ((crop - 1) / (out - 1) if out > 1 else 0.0)
  lower = np.floor(position).astype(np.int64)
  return top + lower, top + np.minimum(lower + 1, crop - 1), position - lower


def clipped_zoom(image, zoom: float, crop_to_input: bool):
  """clipped_zoom of an [H, W, C] image; its first H x W pixels if crop_to_input."""
  h, w, _ = image.shape
  lo, hi, t = (a[:h] if crop_to_input else a for a in zoom_taps(h, zoom))
  t = jnp.asarray(t, jnp.float32)[:, None, None]
  rows = (1 - t) * image[lo] + t * image[hi]
  lo, hi, t = (a[:w] if crop_to_input else a for a in zoom_taps(w, zoom))
  t = jnp.asarray(t, jnp.float32)[None, :, None]
  return (1 - t) * rows[:, lo] + t * rows[:, hi]


def motion_blur(image, angle, radius: int, sigma: float):
  """imagecorruptions' motion_blur of [H, W, C]: a one-sided Gaussian-weighted sum of
  edge-replicated shifts along `angle` (degrees), up to the first shift as large as the
  image (that one and later ones are dropped, unnormalised, as there)."""
  h, w, _ = image.shape
  width = 2 * radius + 1
  weights = np.exp(-np.arange(width)**2 / (2 * sigma**2))
  weights = jnp.asarray(weights / weights.sum(), jnp.float32)
  theta = jnp.deg2rad(angle)

  def tap(i, out):
    # A loop, not 21-41 unrolled taps: compiles in a fraction of the time.
    dy = -jnp.ceil(i * jnp.sin(theta) - 0.5).astype(jnp.int32)
    dx = -jnp.ceil(i * jnp.cos(theta) - 0.5).astype(jnp.int32)
    inside = (jnp.abs(dy) < h) & (jnp.abs(dx) < w)
    shifted = image[jnp.clip(jnp.arange(h) - dy, 0, h - 1)][:, jnp.clip(jnp.arange(w) - dx,
                                                                       0, w - 1)]
    return out + jnp.where(inside, weights[i], 0.0) * shifted

  return jax.lax.fori_loop(0, width, tap, jnp.zeros_like(image))


def plasma_fractal(uniforms, decay):
  """imagecorruptions' plasma_fractal: diamond-square on a torus, scaled to [0, 1].

  uniforms: [m, m] in [0, 1), m a power of 2. Every position but (0, 0) is filled once,
  at the step (m, m/2, ..., 2) whose centres or diamond points it is, with its value of
  `uniforms` as that fill's np.random.uniform draw (scaled as there). A loop over steps on
  the full grid: one small compiled body however large m is."""
  m = uniforms.shape[0]
  rows, cols = jnp.arange(m)[:, None], jnp.arange(m)[None, :]

  def halve(level, grid):
    step = jnp.right_shift(m, level)
    half = step // 2
    wibble = 100.0 / decay**level
    # wibbledmean: array / 4 + wibble * np.random.uniform(-wibble, wibble)
    noise = wibble * (-wibble + 2 * wibble * uniforms)
    # Squares: the 4 corners around each centre (i s + s/2, j s + s/2).
    corners = grid + jnp.roll(grid, -step, 0)
    corners = corners + jnp.roll(corners, -step, 1)
    at_row, at_col = rows % step, cols % step
    grid = jnp.where((at_row == half) & (at_col == half),
                     jnp.roll(corners, (half, half), (0, 1)) / 4 + noise, grid)
    # Diamonds: the 4 neighbours at distance s/2 of (i s, j s + s/2) and (i s + s/2, j s).
    diamond = ((jnp.roll(grid, -half, 0) + jnp.roll(grid, half, 0))
               + (jnp.roll(grid, half, 1) + jnp.roll(grid, -half, 1)))
    edges = ((at_row == 0) & (at_col == half)) | ((at_row == half) & (at_col == 0))
    return jnp.where(edges, diamond / 4 + noise, grid)

  grid = jax.lax.fori_loop(0, int(math.log2(m)), halve, jnp.zeros((m, m), jnp.float32))
  grid = grid - grid.min()
  return grid / grid.max()


def map_size(h: int, w: int) -> int:
  """fog's next_power_of_2 of the largest of H, W and 3 channels."""
  return 1 << (max(h, w, 3) - 1).bit_length()

# Each corruption: per-severity parameters, an optional draw(key, image_shape, param)
# returning its random draws (named like the reference's, in the reference's units so
# that tests can feed numpy's), and apply(image [H, W, 3] float32, draws, param).


class Corruption(NamedTuple):
  params: tuple
  apply: Callable[[jax.Array, Any, Any], jax.Array]
  draw: Callable[[jax.Array, tuple[int, ...], Any], Any] | None = None

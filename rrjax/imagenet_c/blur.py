"""The blur family of ImageNet-C (rrjax.imagenet_c): defocus, glass, motion, zoom and
gaussian blur."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rrjax.imagenet_c.filters import (Corruption, HIGHEST, clipped_zoom, correlation_matrix,
                                      motion_blur, skimage_gaussian)


def _gaussian_blur(x, draws, sigma):
  del draws
  return skimage_gaussian(x, sigma)


@functools.lru_cache(maxsize=None)
def _disk(radius: int, alias_blur: float) -> np.ndarray:
  """imagecorruptions' disk: an aliased disk smoothed by cv2.GaussianBlur."""
  half = 8 if radius <= 8 else radius
  ksize = 3 if radius <= 8 else 5
  yy, xx = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1))
  disk = (xx**2 + yy**2 <= radius**2).astype(np.float32)
  disk /= disk.sum()
  g = np.exp(-(np.arange(ksize) - (ksize - 1) / 2)**2 / (2 * alias_blur**2))
  g /= g.sum()
  # cv2.GaussianBlur: separable, BORDER_REFLECT_101 (scipy "mirror").
  size = disk.shape[0]
  blur = correlation_matrix(size, g, "mirror")
  return (blur @ disk.astype(np.float64) @ blur.T).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _defocus_matrices(h: int, w: int, radius: int, alias_blur: float):
  """cv2.filter2D with the disk (BORDER_REFLECT_101) as a sum of separable filters: the
  disk has rank 3-7 (its SVD), so [rank, H, H] row and [rank, W, W] column matrices."""
  u, singular, vt = np.linalg.svd(_disk(radius, alias_blur).astype(np.float64))
  rank = int(np.sum(singular > 1e-9 * singular[0]))
  rows = np.stack([correlation_matrix(h, u[:, i] * singular[i], "mirror")
                   for i in range(rank)])
  cols = np.stack([correlation_matrix(w, vt[i], "mirror") for i in range(rank)])
  return rows, cols


def _defocus_blur(x, draws, param):
  del draws
  rows, cols = _defocus_matrices(x.shape[0], x.shape[1], *param)
  # Matmuls: ~10x faster on CPU than XLA's convolution with the 17x17 or 21x21 disk.
  out = jnp.einsum("rij,jwc->riwc", jnp.asarray(rows, jnp.float32), x, precision=HIGHEST)
  return jnp.einsum("rkw,riwc->ikc", jnp.asarray(cols, jnp.float32), out,
                    precision=HIGHEST)


def _motion_blur_draw(key, shape, param):
  del shape, param
  return {"angle": jax.random.uniform(key, (), minval=-45.0, maxval=45.0)}


def _motion_blur_apply(x, draws, param):
  radius, sigma = param
  # The reference blurs uint8 values and clips to [0, 255]: the same up to the scale.
  return motion_blur(x, draws["angle"], radius, sigma)


def _zoom_blur(x, draws, zooms):
  del draws
  out = x
  for zoom in zooms:
    out = out + clipped_zoom(x, zoom, crop_to_input=True)
  return out / (len(zooms) + 1)


def _glass_draw(key, shape, param):
  _, delta, iterations = param
  # np.random.randint(-delta, delta): shifts in [-delta, delta - 1].
  return {"shifts": jax.random.randint(key, (iterations,) + shape[:2] + (2,), -delta,
                                       delta)}


@functools.lru_cache(maxsize=None)
def _glass_schedule(h: int, w: int, delta: int) -> np.ndarray:
  """The reference's pixel moves grouped into rounds of non-interacting ones.

  For y from h - delta down to delta + 1 and, within a row, x from w - delta down to
  delta + 1, it "swaps" pixel (y, x) with (y + dy, x + dx), dy, dx in [-delta, delta):
  a chain of h*w dependent steps. Two moves touch a common pixel only if their positions
  differ by less than 2 delta in both y and x, so ordering each move by
  t = 2 delta (h - delta - y) + (w - delta - x) keeps every such pair in the reference's
  order while moves with the same t touch disjoint pixels and can run at once
  (~2 delta h + w rounds). Returns [rounds, k] flat positions y * w + x, padded with
  h * w (a spare slot)."""
  ys = np.arange(h - delta, delta, -1)
  xs = np.arange(w - delta, delta, -1)
  if not len(ys) or not len(xs):
    return np.zeros((0, 1), np.int32)
  y, x = np.meshgrid(ys, xs, indexing="ij")
  t = (2 * delta * (h - delta - y) + (w - delta - x)).ravel()
  flat = (y * w + x).ravel()
  order = np.argsort(t, kind="stable")
  t, flat = t[order], flat[order]
  counts = np.bincount(t)
  table = np.full((len(counts), counts.max()), h * w, np.int32)
  slot = np.arange(len(t)) - np.repeat(np.cumsum(counts) - counts, counts)
  table[t, slot] = flat
  return table


def _glass_sources(shifts, h: int, w: int, delta: int):
  """[h*w]: the pixel each position holds after the reference's local "swaps".

  The reference swaps with `x[h, w], x[h', w'] = x[h', w'], x[h, w]` on [H, W, 3] arrays:
  the right side holds views, so (h', w') is copied onto (h, w) and keeps its value (a
  known quirk of ImageNet-C's glass blur); this reproduces that. shifts: [iterations, h,
  w, 2], the (dx, dy) drawn for each position of the reference's loop."""
  table = jnp.asarray(_glass_schedule(h, w, delta))
  iterations = shifts.shape[0]
  # Flat offsets dy * w + dx per position, and a zero one for the spare slot.
  offsets = (shifts[..., 1] * w + shifts[..., 0]).reshape(iterations, h * w)
  offsets = jnp.concatenate([offsets, jnp.zeros((iterations, 1), offsets.dtype)], 1)
  rounds = table.shape[0]

  def move(step, source):
    targets = table[step % rounds]
    return source.at[targets].set(source[targets + offsets[step // rounds][targets]])

  source = jnp.arange(h * w + 1)
  if rounds:
    source = jax.lax.fori_loop(0, iterations * rounds, move, source)
  return source[:h * w]


def _glass_blur(x, draws, param):
  sigma, delta, _ = param
  h, w, c = x.shape
  # The reference shuffles np.uint8(blurred * 255): truncated to integers.
  x = jnp.floor(skimage_gaussian(x, sigma) * 255) / 255
  source = _glass_sources(draws["shifts"], h, w, delta)
  x = x.reshape(h * w, c)[source].reshape(h, w, c)
  return skimage_gaussian(x, sigma)


CORRUPTIONS = {
    "defocus_blur": Corruption(((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
                               _defocus_blur),
    "glass_blur": Corruption(((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2),
                              (1.5, 4, 2)), _glass_blur, _glass_draw),
    "motion_blur": Corruption(((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
                              _motion_blur_apply, _motion_blur_draw),
    "zoom_blur": Corruption(tuple(tuple(np.arange(1, stop, step)) for stop, step in
                                  ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02),
                                   (1.26, 0.02), (1.31, 0.03))), _zoom_blur),
    "gaussian_blur": Corruption((1, 2, 3, 4, 6), _gaussian_blur),
}

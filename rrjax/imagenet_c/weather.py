"""The weather family of ImageNet-C (rrjax.imagenet_c): snow, frost, fog, brightness and
spatter."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rrjax.imagenet_c.filters import (Corruption, clipped_zoom, gray, hsv_to_rgb, map_size,
                                      motion_blur, plasma_fractal, rgb_to_hsv, skimage_gaussian,
                                      source_index)


# (loc, scale, zoom, threshold, blur radius, blur sigma, image weight)
_SNOW = ((0.1, 0.3, 3, 0.5, 10, 4, 0.8),
         (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
         (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
         (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
         (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))


def _snow_draw(key, shape, param):
  del param
  normal_key, angle_key = jax.random.split(key)
  return {"normal": jax.random.normal(normal_key, shape[:2]),
          "angle": jax.random.uniform(angle_key, (), minval=-135.0, maxval=-45.0)}


def _snow(x, draws, param):
  loc, scale, zoom, threshold, radius, sigma, weight = param
  h, w, _ = x.shape
  layer = clipped_zoom((loc + scale * draws["normal"])[..., None], zoom,
                        crop_to_input=False)
  layer = jnp.clip(jnp.where(layer < threshold, 0, layer), 0, 1)
  # The reference blurs the whole zoomed layer (a few pixels larger than the image)
  # before cropping it, and rounds it to uint8.
  layer = motion_blur(layer, draws["angle"], radius, sigma)
  layer = jnp.round(layer * 255)[:h, :w] / 255
  x = weight * x + (1 - weight) * jnp.maximum(x, gray(x) * 1.5 + 0.5)
  return x + layer + layer[::-1, ::-1]


# Per-channel (R, G, B) mean and standard deviation, in 0..255, of each of the reference's
# frost photographs frost1.png .. frost5.jpg as it resizes them (x1.1, bicubic); frost2
# and frost3 are the same photograph. The reference draws one of these 5 uniformly.
_FROST_STATS = np.array([
    [[77.7, 149.1, 165.7], [26.6, 16.3, 15.2]],
    [[200.8, 205.4, 214.5], [21.3, 22.0, 22.5]],
    [[200.8, 205.4, 214.5], [21.3, 22.0, 22.5]],
    [[137.6, 152.8, 165.2], [28.2, 28.2, 29.5]],
    [[112.4, 123.4, 134.7], [44.0, 42.8, 41.2]],
], np.float32)
_FROST_WEIGHTS = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))
# The procedural texture: needle strokes (sparse seeds smeared along 4 random directions,
# the brightest stroke kept, softened by a 0.5 px blur) plus fractal shading at half their
# standard deviation. Strokes are sized in pixels, like the reference's crops (it uses its
# photographs at about 1.1x whatever the image size). The mix matches the reference's
# share of fine detail and of coarse shading in 64-224 px crops (tests).
_FROST_SEED_RATE, _FROST_STROKE, _FROST_DIRECTIONS = 0.03, 9, 4
_FROST_SHADING = 0.5


def _frost_spread(h: int, w: int) -> float:
  """The share of a photograph's standard deviation that the reference's crops hold: crops
  miss the variation coarser than themselves. Measured (mean over the photographs) 0.65,
  0.72, 0.75, 0.86, 0.92 at 32, 64, 128, 224, 320 px; fitted within 8%."""
  return min(1.0, 0.65 + 0.12 * math.log(max(math.sqrt(h * w), 1) / 32))


def _frost_draw(key, shape, param):
  del param
  h, w, _ = shape
  keys = jax.random.split(key, 5)
  return {"photo": jax.random.randint(keys[0], (), 0, 5),
          "seeds": jax.random.uniform(keys[1], (h, w)) *
                   jax.random.bernoulli(keys[2], _FROST_SEED_RATE, (h, w)),
          "directions": jax.random.uniform(keys[3], (_FROST_DIRECTIONS,),
                                           minval=0.0, maxval=180.0),
          "shading": jax.random.uniform(keys[4], (map_size(h, w),) * 2)}


def _standardise(a):
  a = a - a.mean()
  return a / jnp.maximum(jnp.sqrt(jnp.mean(a * a)), 1e-6)


def _line_smear(seeds, angle):
  """[H, W, 1] seeds smeared along a line at `angle` (degrees) into tapered strokes of
  2 _FROST_STROKE + 1 pixels (wrapping around the edges)."""
  h, w, _ = seeds.shape
  theta = jnp.deg2rad(angle)

  def tap(i, out):
    dy = jnp.round(i * jnp.sin(theta)).astype(jnp.int32)
    dx = jnp.round(i * jnp.cos(theta)).astype(jnp.int32)
    shifted = seeds[jnp.mod(jnp.arange(h) - dy, h)][:, jnp.mod(jnp.arange(w) - dx, w)]
    return out + (1 - jnp.abs(i) / (_FROST_STROKE + 1)) * shifted

  return jax.lax.fori_loop(-_FROST_STROKE, _FROST_STROKE + 1, tap, jnp.zeros_like(seeds))


def _frost_texture(draws, h: int, w: int):
  """A zero-mean, unit-variance frost texture [H, W, 1]."""
  strokes = jax.vmap(_line_smear, (None, 0))(draws["seeds"][..., None], draws["directions"])
  needles = _standardise(skimage_gaussian(strokes.max(0), 0.5))
  shading = plasma_fractal(draws["shading"], 2.0)[:h, :w, None]
  return _standardise(needles + _FROST_SHADING * _standardise(shading))


def _frost(x, draws, param):
  image_weight, frost_weight = param
  h, w, _ = x.shape
  mean, std = jnp.asarray(_FROST_STATS)[draws["photo"]] / 255
  frost = mean + _frost_spread(h, w) * std * _frost_texture(draws, h, w)
  return image_weight * x + frost_weight * frost


def _fog_draw(key, shape, param):
  del param
  return {"uniforms": jax.random.uniform(key, (map_size(*shape[:2]),) * 2)}


def _fog(x, draws, param):
  strength, decay = param
  h, w, _ = x.shape
  peak = x.max()
  fractal = plasma_fractal(draws["uniforms"], decay)[:h, :w, None]
  return (x + strength * fractal) * peak / (peak + strength)


def _brightness(x, draws, c):
  del draws
  h, s, v = rgb_to_hsv(x)
  return hsv_to_rgb(h, s, jnp.clip(v + c, 0, 1))


# (loc, scale, sigma, threshold, intensity, mud): mud 0 is water (its intensity scales the
# highlights), 1 mud (its intensity is the mask's blur sigma).
_SPATTER = ((0.65, 0.3, 4, 0.69, 0.6, 0),
            (0.65, 0.3, 3, 0.68, 0.6, 0),
            (0.65, 0.3, 2, 0.68, 0.5, 0),
            (0.65, 0.3, 1, 0.65, 1.5, 1),
            (0.67, 0.4, 1, 0.65, 1.5, 1))


def _spatter_draw(key, shape, param):
  del param
  return {"normal": jax.random.normal(key, shape[:2])}


def _filter3x3(a, kernel: np.ndarray, mode: str):
  """3x3 correlation of [H, W] with a border rule of source_index."""
  h, w = a.shape
  rows = jnp.asarray(source_index(np.arange(-1, h + 1), h, mode))
  cols = jnp.asarray(source_index(np.arange(-1, w + 1), w, mode))
  padded = a[rows][:, cols]
  return sum(float(kernel[i, j]) * padded[i:i + h, j:j + w]
             for i in range(3) for j in range(3) if kernel[i, j])


def _canny(image, low: float, high: float):
  """cv2.Canny(image (integers 0..255), low, high): 3x3 Sobel (replicated border), L1
  magnitude, non-maximum suppression in 4 directions, hysteresis (8-connected)."""
  sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
  gx = _filter3x3(image, sobel_x, "nearest")
  gy = _filter3x3(image, sobel_x.T, "nearest")
  magnitude = jnp.abs(gx) + jnp.abs(gy)
  m = jnp.pad(magnitude, 1)  # Zero magnitude outside, as OpenCV's buffers.
  h, w = image.shape

  def at(dy, dx):
    return m[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

  # OpenCV's sectors in 15-bit fixed point: tan(22.5 deg) = 13573 / 2^15 and
  # tan(67.5 deg) = tan(22.5 deg) + 2.
  ax, ay = jnp.abs(gx).astype(jnp.int32), jnp.abs(gy).astype(jnp.int32) << 15
  tan22 = ax * 13573
  horizontal = ay < tan22
  vertical = ay > tan22 + (ax << 16)
  s = jnp.where((gx < 0) != (gy < 0), -1, 1)
  diagonal = jnp.where(s > 0, (magnitude > at(-1, -1)) & (magnitude > at(1, 1)),
                       (magnitude > at(-1, 1)) & (magnitude > at(1, -1)))
  peak = jnp.where(horizontal, (magnitude > at(0, -1)) & (magnitude >= at(0, 1)),
                   jnp.where(vertical, (magnitude > at(-1, 0)) & (magnitude >= at(1, 0)),
                             diagonal))
  candidate = peak & (magnitude > low)
  strong = candidate & (magnitude > high)

  def grow(state):
    edges, _ = state
    near = jax.lax.reduce_window(edges, False, jax.lax.bitwise_or, (3, 3), (1, 1), "SAME")
    grown = edges | (candidate & near)
    return grown, jnp.any(grown != edges)

  return jax.lax.while_loop(lambda state: state[1], grow, (strong, jnp.array(True)))[0]


def _edge_distance(edges, cap: int):
  """cv2.distanceTransform(DIST_L2, 5) to the nearest edge pixel, then truncated at cap.

  OpenCV's 5x5 chamfer distance: the cheapest path of steps (1, 0), (1, 1), (2, 1) (and
  their mirror images) costing 1, 1.4 and 2.1969 in its 16-bit fixed point. Relaxing all
  16 steps `cap` times finds every path of cost <= cap (each step costs >= 1)."""
  h, w = edges.shape
  unit = 65536.0
  steps = [(dy, dx, cost) for dy in range(-2, 3) for dx in range(-2, 3)
           for cost in [{1: 65536.0, 2: 91750.0, 5: 143976.0}.get(dy * dy + dx * dx)]
           if cost is not None]
  far = jnp.float32((cap + 1) * unit)
  padded = jnp.pad(jnp.where(edges, 0.0, far), 2, constant_values=far)

  def relax(_, d):
    best = d[2:2 + h, 2:2 + w]
    for dy, dx, cost in steps:
      best = jnp.minimum(best, d[2 + dy:2 + dy + h, 2 + dx:2 + dx + w] + cost)
    return d.at[2:2 + h, 2:2 + w].set(best)

  distance = jax.lax.fori_loop(0, cap, relax, padded)[2:2 + h, 2:2 + w]
  return jnp.minimum(distance / unit, cap)


def _equalize_hist(image):
  """cv2.equalizeHist of integers 0..255 (as floats)."""
  levels = image.astype(jnp.int32).ravel()
  hist = jnp.zeros(256, jnp.int32).at[levels].add(1)
  cdf = jnp.cumsum(hist)
  first = jnp.argmax(hist > 0)
  total = levels.size
  lowest = hist[first]
  lut = jnp.round((cdf - lowest) * (255.0 / jnp.maximum(total - lowest, 1)))
  lut = jnp.where(jnp.arange(256) <= first, 0.0, lut)
  lut = jnp.where(lowest == total, first.astype(jnp.float32), lut)
  return lut[levels].reshape(image.shape)


def _spatter(x, draws, param):
  loc, scale, sigma, threshold, intensity, mud = param
  liquid = skimage_gaussian((loc + scale * draws["normal"])[..., None], sigma)[..., 0]
  liquid = jnp.where(liquid < threshold, 0, liquid)
  if mud:
    mask = skimage_gaussian((liquid > threshold).astype(jnp.float32)[..., None],
                             intensity)
    mask = jnp.where(mask < 0.8, 0, mask)
    brown = jnp.array([63, 42, 20], jnp.float32) / 255
    return x * (1 - mask) + brown * mask
  box = np.ones((3, 3))
  liquid8 = jnp.floor(liquid * 255)  # .astype(np.uint8)
  distance = _edge_distance(_canny(liquid8, 50, 150), 20)
  # cv2.blur: the sum over 3x3 (exact here) scaled by 1/9 in double, then .astype(uint8).
  distance = jnp.floor(_filter3x3(distance, box, "mirror") / 9)
  distance = _equalize_hist(distance)
  emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
  distance = jnp.clip(_filter3x3(distance, emboss, "mirror"), 0, 255)  # cv2.CV_8U
  distance = jnp.round(_filter3x3(distance, box, "mirror") / 9)  # blur of uint8: rounded
  m = liquid8 * distance
  m = intensity * m / jnp.maximum(m.max(), 1e-6)
  # Pale turquoise (175, 238, 238) added in the image's channel order.
  return x + m[..., None] * jnp.array([175, 238, 238], jnp.float32) / 255


CORRUPTIONS = {
    "snow": Corruption(_SNOW, _snow, _snow_draw),
    "frost": Corruption(_FROST_WEIGHTS, _frost, _frost_draw),
    "fog": Corruption(((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)), _fog,
                      _fog_draw),
    "brightness": Corruption((0.1, 0.2, 0.3, 0.4, 0.5), _brightness),
    "spatter": Corruption(_SPATTER, _spatter, _spatter_draw),
}

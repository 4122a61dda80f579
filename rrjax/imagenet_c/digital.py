"""The digital family of ImageNet-C (rrjax.imagenet_c): contrast, elastic transform,
pixelate, JPEG compression and saturate."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rrjax.imagenet_c.filters import Corruption, hsv_to_rgb, rgb_to_hsv, separable, skimage_gaussian


def _saturate(x, draws, param):
  del draws
  h, s, v = rgb_to_hsv(x)
  return hsv_to_rgb(h, jnp.clip(s * param[0] + param[1], 0, 1), v)


def _contrast(x, draws, c):
  del draws
  mean = x.mean(axis=(0, 1), keepdims=True)
  return (x - mean) * c + mean


def _elastic_draw(key, shape, alpha):
  del alpha
  dx_key, dy_key = jax.random.split(key)
  return {"dx": jax.random.uniform(dx_key, shape[:2]),
          "dy": jax.random.uniform(dy_key, shape[:2])}


def _reflect_sample(x, rows, cols):
  """Bilinear samples of [H, W, C] at float coordinates, scipy.ndimage.map_coordinates
  (order=1, mode="reflect": the image mirrored about its outer pixel edges)."""
  h, w, _ = x.shape

  def taps(coordinate, size):
    lower = jnp.floor(coordinate)
    t = coordinate - lower
    lower = lower.astype(jnp.int32)

    def fold(i):
      i = jnp.mod(i, 2 * size)
      return jnp.where(i >= size, 2 * size - 1 - i, i)

    return fold(lower), fold(lower + 1), t[..., None]

  r0, r1, tr = taps(rows, h)
  c0, c1, tc = taps(cols, w)
  top = (1 - tc) * x[r0, c0] + tc * x[r0, c1]
  bottom = (1 - tc) * x[r1, c0] + tc * x[r1, c1]
  return (1 - tr) * top + tr * bottom


def _elastic_transform(x, draws, alpha):
  h, w, _ = x.shape
  # The reference's raw shifts are np.random.uniform(-m, m) with m = 0.005 H on both axes.
  m = h * 0.005
  shifts = jnp.stack([-m + 2 * m * draws["dx"], -m + 2 * m * draws["dy"]], -1)
  shifts = skimage_gaussian(shifts, (h * 0.01, w * 0.01), mode="reflect", truncate=3.0)
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                            jnp.arange(w, dtype=jnp.float32), indexing="ij")
  return _reflect_sample(x, rows + alpha * shifts[..., 1], cols + alpha * shifts[..., 0])


@functools.lru_cache(maxsize=None)
def _pixelate_matrix(size: int, c: float) -> np.ndarray:
  """[size, size]: PIL's BOX resize to int(size * c) then its NEAREST resize back."""
  small = max(int(size * c), 1)  # PIL cannot resize to 0 pixels; tiny images keep 1.
  scale = size / small
  down = np.zeros((small, size))
  for j in range(small):
    # PIL's precompute_coeffs with its box filter: weight 1 for inputs x with
    # -0.5 < (x + 0.5 - centre) / scale <= 0.5, normalised.
    centre = (j + 0.5) * scale
    lo = max(int(centre - 0.5 * scale + 0.5), 0)
    hi = min(int(centre + 0.5 * scale + 0.5), size)
    u = (np.arange(lo, hi) - centre + 0.5) / scale
    weights = ((u > -0.5) & (u <= 0.5)).astype(np.float64)
    down[j, lo:hi] = weights / weights.sum()
  # PIL's NEAREST: output i reads floor(a (i + 0.5)) with a = small / size, accumulated.
  up = np.zeros((size, small))
  step = small / size
  position = 0.5 * step
  for i in range(size):
    up[i, min(int(position), small - 1)] = 1
    position += step
  return up @ down


def _pixelate(x, draws, c):
  del draws
  h, w, _ = x.shape
  return separable(x, _pixelate_matrix(h, c), _pixelate_matrix(w, c))


_JPEG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]).reshape(8, 8)
_JPEG_CHROMA = np.full((8, 8), 99)
_JPEG_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99],
                        [47, 66, 99, 99]]


def _jpeg_quant_tables(quality: int) -> tuple[np.ndarray, np.ndarray]:
  """libjpeg's jpeg_set_quality(quality, force_baseline=TRUE): (luma, chroma) [8, 8]."""
  scale = 5000 // quality if quality < 50 else 200 - 2 * quality
  return tuple(np.clip((table * scale + 50) // 100, 1, 255) for table in
               (_JPEG_LUMA, _JPEG_CHROMA))


# libjpeg's accurate integer DCTs (jfdctint.c, jidctint.c; libjpeg-turbo's SIMD versions
# give the same integers): 13-bit fixed-point rotations, 2 extra bits between passes.
# Within a pass every output is a rounding shift of an integer combination of its 8
# inputs, so each pass is one int32 product with a matrix read off libjpeg's butterflies,
# then per-output shifts: far quicker to compile than the butterflies. The sums stay below
# 2^31: IJG's bounds (samples of 8 bits, 13 + 2 bits of scaling) are what keep libjpeg's
# own 32-bit arithmetic in range.
_C0298, _C0390, _C0541, _C0765, _C0899, _C1175 = 2446, 3196, 4433, 6270, 7373, 9633
_C1501, _C1847, _C1961, _C2053, _C2562, _C3072 = 12299, 15137, 16069, 16819, 20995, 25172


def _fdct_butterfly(d):
  """jpeg_fdct_islow's pass over d[0..7] before its final shifts."""
  t0, t7, t1, t6 = d[0] + d[7], d[0] - d[7], d[1] + d[6], d[1] - d[6]
  t2, t5, t3, t4 = d[2] + d[5], d[2] - d[5], d[3] + d[4], d[3] - d[4]
  t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
  z1 = (t12 + t13) * _C0541
  even = [t10 + t11, z1 + t13 * _C0765, t10 - t11, z1 - t12 * _C1847]
  z1, z2, z3, z4 = t4 + t7, t5 + t6, t4 + t6, t5 + t7
  z5 = (z3 + z4) * _C1175
  z1, z2 = -z1 * _C0899, -z2 * _C2562
  z3, z4 = -z3 * _C1961 + z5, -z4 * _C0390 + z5
  odd = [t7 * _C1501 + z1 + z4, t6 * _C3072 + z2 + z3, t5 * _C2053 + z2 + z4,
         t4 * _C0298 + z1 + z3]
  return [even[0], odd[0], even[1], odd[1], even[2], odd[2], even[3], odd[3]]


def _idct_butterfly(c):
  """jpeg_idct_islow's pass over c[0..7] before its final shifts."""
  z1 = (c[2] + c[6]) * _C0541
  t2, t3 = z1 - c[6] * _C1847, z1 + c[2] * _C0765
  t0, t1 = (c[0] + c[4]) * 8192, (c[0] - c[4]) * 8192
  t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
  t0, t1, t2, t3 = c[7], c[5], c[3], c[1]
  z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
  z5 = (z3 + z4) * _C1175
  z1, z2 = -z1 * _C0899, -z2 * _C2562
  z3, z4 = -z3 * _C1961 + z5, -z4 * _C0390 + z5
  t0, t1 = t0 * _C0298 + z1 + z3, t1 * _C2053 + z2 + z4
  t2, t3 = t2 * _C3072 + z2 + z3, t3 * _C1501 + z1 + z4
  return [t10 + t3, t11 + t2, t12 + t1, t13 + t0, t13 - t0, t12 - t1, t11 - t2, t10 - t3]


@functools.lru_cache(maxsize=None)
def _butterfly_matrix(inverse: bool) -> np.ndarray:
  """[8 outputs, 8 inputs]: the integer combination each output of a pass takes."""
  butterfly = _idct_butterfly if inverse else _fdct_butterfly
  return np.stack(butterfly(list(np.eye(8, dtype=np.int64))))


def _integer_pass(x, inverse: bool, shifts):
  """A DCT pass along the last axis: int32 sums, then per output a right shift that
  rounds (DESCALE) or, for negative shifts, a left shift."""
  # A broadcast product and a sum rather than an integer dot, which not every backend's
  # matrix units take.
  matrix = jnp.asarray(_butterfly_matrix(inverse).T, jnp.int32)  # [input, output]
  sums = (x[..., :, None] * matrix).sum(-2)
  shifts = np.broadcast_to(shifts, (8,))
  right = np.maximum(shifts, 0)
  rounding = np.where(shifts > 0, 1 << np.maximum(right - 1, 0), 0)
  return jnp.where(shifts > 0, (sums + rounding) >> right, sums << np.maximum(-shifts, 0))


def _jpeg_blocks(blocks, tables):
  """libjpeg's encode then decode of [n, 8, 8] blocks of samples 0..255 (int32), block i
  quantised with tables[i]."""
  # Rows then columns; coefficients come out scaled by 8: [n, vertical, horizontal].
  # Pass 1 keeps 2 extra bits (PASS1_BITS), pass 2 removes them.
  rows = _integer_pass(blocks - 128, False, np.array([-2, 11, 11, 11, -2, 11, 11, 11]))
  coefficients = _integer_pass(rows.swapaxes(-1, -2), False,
                               np.array([2, 15, 15, 15, 2, 15, 15, 15]))
  coefficients = coefficients.swapaxes(-1, -2)
  # Rounding to the nearest level, halves away from zero (what libjpeg-turbo's
  # reciprocal multiplication computes for every 16-bit coefficient).
  divisor = tables * 8
  levels = jnp.sign(coefficients) * ((jnp.abs(coefficients) + divisor // 2) // divisor)
  # Columns (descaled by 13 - 2 bits) then rows (13 + 2 + 3 bits).
  columns = _integer_pass((levels * tables).swapaxes(-1, -2), True, 11).swapaxes(-1, -2)
  samples = _integer_pass(columns, True, 18)
  # The decoder's range limit: x + 128 clamped to 0..255 for |x| < 512, wrapping beyond.
  x = samples & 1023
  return jnp.where(x < 128, x + 128,
                   jnp.where(x < 512, 255, jnp.where(x < 896, 0, x - 896)))


def _to_blocks(plane):
  h, w = plane.shape
  return plane.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)


def _from_blocks(blocks, h: int, w: int):
  return blocks.reshape(h // 8, w // 8, 8, 8).transpose(0, 2, 1, 3).reshape(h, w)


def _fancy_upsample(chroma, h: int, w: int):
  """libjpeg's h2v2 "fancy" upsampling of integer samples: 3/4 nearest, 1/4 next, per
  axis, in its integer arithmetic (edges replicated); the first h x w outputs."""
  ch, cw = chroma.shape
  up = jnp.clip(jnp.arange(ch) - 1, 0, ch - 1)
  down = jnp.clip(jnp.arange(ch) + 1, 0, ch - 1)
  # Output rows 2i and 2i + 1 mix row i with the rows above and below.
  rows = jnp.stack([3 * chroma + chroma[up], 3 * chroma + chroma[down]], 1)
  rows = rows.reshape(2 * ch, cw)
  left = jnp.clip(jnp.arange(cw) - 1, 0, cw - 1)
  right = jnp.clip(jnp.arange(cw) + 1, 0, cw - 1)
  out = jnp.stack([(3 * rows + rows[:, left] + 8) >> 4,
                   (3 * rows + rows[:, right] + 7) >> 4], 2)
  return out.reshape(2 * ch, 2 * cw)[:h, :w]


def _fix(value: float) -> int:
  """libjpeg's FIX(): a constant in 16-bit fixed point."""
  return int(value * 65536 + 0.5)


def _jpeg_compression(x, draws, quality):
  del draws
  h, w, _ = x.shape
  luma_table, chroma_table = _jpeg_quant_tables(quality)
  # PIL hands libjpeg 8-bit RGB; jccolor.c converts it to YCbCr in 16-bit fixed point.
  rgb = jnp.round(jnp.clip(x, 0, 1) * 255).astype(jnp.int32)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  half, offset = 1 << 15, 128 << 16
  y = (_fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + half) >> 16
  cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + offset + half - 1) >> 16
  cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + offset + half - 1) >> 16
  # libjpeg pads as it goes: columns at full resolution to whole chroma blocks (16 pixels),
  # rows to an even count, then each downsampled plane's rows to whole blocks (8); all by
  # repeating the last column or row.
  y, cb, cr = (jnp.pad(p, ((0, h % 2), (0, -w % 16)), mode="edge") for p in (y, cb, cr))

  def downsample(p):
    # jcsample.c h2v2_downsample: (sum of 2x2 + bias) >> 2, bias 1, 2, 1, 2, ... by column.
    hp, wp = p.shape
    sums = p.reshape(hp // 2, 2, wp // 2, 2).sum(axis=(1, 3))
    return (sums + jnp.where(jnp.arange(wp // 2) % 2 == 0, 1, 2)) >> 2

  def whole_blocks(p):
    return jnp.pad(p, ((0, -p.shape[0] % 8), (0, 0)), mode="edge")

  # All blocks of the three planes through one DCT, each with its table.
  planes = [whole_blocks(y)] + [whole_blocks(downsample(p)) for p in (cb, cr)]
  counts = [p.size // 64 for p in planes]
  tables = np.concatenate([np.broadcast_to(t, (n, 8, 8)) for t, n in
                           zip((luma_table, chroma_table, chroma_table), counts)])
  blocks = _jpeg_blocks(jnp.concatenate([_to_blocks(p) for p in planes]),
                        jnp.asarray(tables, jnp.int32))
  y, cb, cr = (_from_blocks(b, *p.shape) for b, p in
               zip(jnp.split(blocks, np.cumsum(counts)[:-1]), planes))
  y = y[:h, :w]
  # The decoder upsamples from the ceil(H/2) x ceil(W/2) chroma samples of the image.
  cb, cr = (_fancy_upsample(p[:(h + 1) // 2, :(w + 1) // 2], h, w) - 128 for p in (cb, cr))
  # jdcolor.c's tables: rounded products; green rounds the sum of its two products.
  r = y + ((_fix(1.402) * cr + half) >> 16)
  g = y + ((-_fix(0.34414) * cb - _fix(0.71414) * cr + half) >> 16)
  b = y + ((_fix(1.772) * cb + half) >> 16)
  return jnp.clip(jnp.stack([r, g, b], -1), 0, 255).astype(jnp.float32) / 255


CORRUPTIONS = {
    "contrast": Corruption((0.4, 0.3, 0.2, 0.1, 0.05), _contrast),
    "elastic_transform": Corruption(tuple(250 * a for a in (0.05, 0.065, 0.085, 0.1, 0.12)),
                                    _elastic_transform, _elastic_draw),
    "pixelate": Corruption((0.6, 0.5, 0.4, 0.3, 0.25), _pixelate),
    "jpeg_compression": Corruption((25, 18, 15, 10, 7), _jpeg_compression),
    "saturate": Corruption(((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)), _saturate),
}

"""The ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019) as jax.numpy operators.

  op = operators.build({"kind": "imagenet_c", "corruption": "fog", "severity": 3})
  corrupted = op(rng, images)

One module per family (Hendrycks & Dietterich's grouping, the extra corruptions with
theirs): `noise` (gaussian, shot, impulse, speckle), `blur` (defocus, glass, motion, zoom,
gaussian), `weather` (snow, frost, fog, brightness, spatter), `digital` (contrast,
elastic_transform, pixelate, jpeg_compression, saturate); `filters` holds what they share.
Here: the names, the spec fields and `corrupt`, one image at a time.

images: float [B, H, W, 3] in [0, 1]. Like every rrjax operator (rrjax/operators/) these
are pure and jittable, keep shape and dtype, work at any static H and W, and draw
independently per image with the same key layout: keys = jax.random.split(rng, B), and
image i draws from jax.random.split(keys[i])[1] (index 0, the level key, is unused).

Parameters per severity 1..5 are those of the `imagecorruptions` package 1.1.2
(bethgelab/imagecorruptions, corruptions.py: Hendrycks & Dietterich's make_imagenet_c.py
generalised to any image size), under its names:

  gaussian_noise     x + N(0, c^2)                    c = .08 .12 .18 .26 .38
  shot_noise         Poisson(c x) / c                 c = 60 25 12 5 3
  impulse_noise      salt and pepper, amount c        c = .03 .06 .09 .17 .27
  defocus_blur       antialiased disk (radius, blur)  (3,.1) (4,.5) (6,.5) (8,.5) (10,.5)
  glass_blur         (sigma, max shift, iterations)   (.7,1,2) (.9,2,1) (1,2,3) (1.1,3,2)
                                                      (1.5,4,2)
  motion_blur        (radius, sigma), angle ~ U(-45, 45) degrees
                                                      (10,3) (15,5) (15,8) (15,12) (20,15)
  zoom_blur          zoom factors from 1 to           1.10 by .01, 1.15 by .01, 1.20 by .02,
                                                      1.24 by .02, 1.30 by .03
  snow               7 parameters per severity        weather._SNOW
  frost              (image weight, frost weight)     (1,.4) (.8,.6) (.7,.7) (.65,.7) (.6,.75)
  fog                (strength, fractal decay)        (1.5,2) (2,2) (2.5,1.7) (2.5,1.5) (3,1.4)
  brightness         HSV value + c                    c = .1 .2 .3 .4 .5
  contrast           (x - mean) c + mean              c = .4 .3 .2 .1 .05
  elastic_transform  displacement gain alpha          alpha = 250 x .05 .065 .085 .1 .12
                     (smoothing sigma .01 H and .01 W, raw shifts U(-.005 H, .005 H))
  pixelate           box downscale by c, nearest up   c = .6 .5 .4 .3 .25
  jpeg_compression   quality                          25 18 15 10 7
and the 4 extra (validation) corruptions:
  speckle_noise      x + x N(0, c^2)                  c = .15 .2 .35 .45 .6
  gaussian_blur      sigma                            1 2 3 4 6
  spatter            6 parameters per severity        weather._SPATTER
  saturate           HSV saturation s c0 + c1         (.3,0) (.1,0) (2,0) (5,.1) (20,.2)

Where the package departs from Hendrycks' original (hendrycks/robustness,
make_imagenet_c.py), the package is reproduced: its motion_blur (and snow's) is its own
shift-and-add instead of ImageMagick's, and its elastic_transform drops the original's
random affine warp and uses other parameters.

Closeness to the reference, measured by tests/test_imagenet_c.py on 57 x 70 images and
once on two 224 x 224 photographs, in units of 1/255:

  * the same up to float32 rounding (max |diff| < 0.003): gaussian_blur, defocus_blur,
    zoom_blur, brightness, contrast, saturate; and, given the reference's own numpy draws
    (tests replay them), gaussian_noise, speckle_noise, motion_blur, fog,
    elastic_transform, glass_blur and spatter (OpenCV's Canny, 5x5 chamfer distance
    transform, histogram equalisation and 8-bit roundings reproduced). snow and
    glass_blur round to 8 bits mid-way (a rounding, a truncation): where float32 lands
    on the other side of an integer a few values differ, by at most 1 (snow) and 0.07
    (glass_blur) on the 224 px photographs, not at all on the test images.
  * jpeg_compression: bit-exact with PIL's libjpeg-turbo: RGB to YCbCr, 4:2:0 chroma
    averaging (alternating rounding bias), padding, the IJG tables scaled for the quality
    (baseline, at most 255), the accurate integer DCT, quantisation and IDCT, "fancy"
    chroma upsampling and YCbCr to RGB, all in libjpeg's integer arithmetic.
  * pixelate: max |diff| 1, mean 0.5 (PIL rounds to uint8 after each pass of its box
    filter; nothing is rounded here).
  * the random draws come from jax.random, from the reference's distributions; per
    severity the mean |x' - x| agrees with the reference's within 4 standard errors (10
    and 8 draws), noise residuals' standard deviations within 3%. shot_noise draws
    Poisson(c x) by inversion (exact but for a < 1e-12 tail). impulse_noise follows
    scikit-image >= 0.19 (each value flipped with probability c, to 0 or 1 with equal
    odds), which is what imagecorruptions runs on current scikit-image.
  * glass_blur's "swaps" (`x[h, w], x[h', w'] = x[h', w'], x[h, w]` on numpy views) copy
    one pixel over the other: reproduced, as a wavefront of independent moves.
  * frost: the reference blends a random crop of one of 5 photographs of frost shipped in
    imagecorruptions, of unstated origin and licence, so they are not copied into rrjax.
    Here a procedural texture (needle-like strokes over fractal shading) takes the chosen
    photograph's per-channel mean and standard deviation (the only numbers taken from
    them: weather._FROST_STATS), with the share of it that crops of the image's size hold. Per
    photograph the layer's mean matches the reference's crops within 0.02 (x 255 = 5), its
    spread within ~30% and its share of fine detail within ~30% (64-224 px); its
    crystals do not look like the photographs'.

The reference's `corrupt` ends with np.uint8(...), which floors to integers; these
operators do not quantise their output (jpeg_compression excepted: a JPEG decoder's output
is 8-bit), and clip it to [0, 1] as the reference does. The reference needs H, W >= 32;
these run at any size, keeping the reference's rules (a motion blur stops at a shift as
large as the image; pixelate keeps at least 1 pixel).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from rrjax.imagenet_c import blur, digital, noise, weather
from rrjax.imagenet_c.filters import Corruption

COMMON: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression")
EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
NAMES: tuple[str, ...] = COMMON + EXTRA
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)


# --------------------------------------------------------------------------- spec fields


def parse_corruption(where: str, value) -> str:
  if isinstance(value, str) and value in NAMES:
    return value
  raise ValueError(f"operator field {where!r} must be one of {list(NAMES)}; got {value!r}.")


def parse_severity(where: str, value) -> int:
  if (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
      and value in SEVERITIES):
    return int(value)
  raise ValueError(
      f"operator field {where!r} must be an integer severity in {list(SEVERITIES)}; got "
      f"{value!r}.")


# --------------------------------------------------------------------------- corruptions
# Each family module holds its corruptions' entries (filters.Corruption): per-severity
# parameters, apply and an optional draw.

_CORRUPTIONS: dict[str, Corruption] = {
    name: {**noise.CORRUPTIONS, **blur.CORRUPTIONS, **weather.CORRUPTIONS,
           **digital.CORRUPTIONS}[name] for name in NAMES}


# --------------------------------------------------------------------------- operators


def _apply(name: str, severity: int, image, draws):
  """One [H, W, 3] float image corrupted with given draws (None for deterministic ones).

  The draws are those of the corruption's draw function (see _CORRUPTIONS), in the
  reference's units: tests feed numpy's draws to compare with imagecorruptions."""
  spec = _CORRUPTIONS[name]
  out = spec.apply(image.astype(jnp.float32), draws, spec.params[severity - 1])
  return jnp.clip(out, 0, 1)


def corrupt(name: str, severity: int, key, image):
  """One [H, W, 3] float image in [0, 1] corrupted with corruption `name` at `severity`,
  its random draws made from `key` (the per-image sample key of rrjax.operators; build
  batched operators with rrjax.operators.build)."""
  name = parse_corruption("corruption", name)
  severity = parse_severity("severity", severity)
  if image.shape[-1] != 3:
    raise ValueError(f"imagenet_c corruptions need RGB images [B, H, W, 3]; got "
                    f"{image.shape[-1]} channels.")
  spec = _CORRUPTIONS[name]
  draws = spec.draw(key, image.shape, spec.params[severity - 1]) if spec.draw else None
  return _apply(name, severity, image, draws).astype(image.dtype)

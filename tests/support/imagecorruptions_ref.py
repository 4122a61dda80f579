"""imagecorruptions 1.1.2 (Hendrycks & Dietterich's ImageNet-C code) as a test reference.

Installed as CI does, beside the test extra:

  pip install opencv-python-headless==5.0.0.93
  pip install --no-deps imagecorruptions==1.1.2

(--no-deps: its opencv-python dependency needs libGL; the headless wheel is the same
OpenCV.) It was written for older libraries: three things stop it from running on the
pinned stack, bridged here inside the reference module's own namespace, without touching
site-packages:

  * it imports `pkg_resources.resource_filename` (absent from current setuptools): a
    stand-in module, visible only while the package imports, resolves the frost images
    inside the installed package;
  * it calls `skimage.filters.gaussian(..., multichannel=True)` (gone from current
    scikit-image): its `gaussian` becomes one that maps that to `channel_axis=-1`;
  * fog's plasma fractal allocates with `np.float_` (removed in NumPy 2.0): its `np` becomes
    numpy with `float_ = float64`.

`scipy.ndimage.interpolation` still imports (with a DeprecationWarning, silenced here).
"""

from __future__ import annotations

import os
import sys
import types
import warnings

import numpy as np

_CORRUPTIONS = None


class _NumpyWithFloat_(types.ModuleType):
  """numpy, plus the `float_` alias the reference's plasma fractal allocates with."""

  float_ = np.float64

  def __getattr__(self, name):
    return getattr(np, name)


def _gaussian(image, sigma=1.0, *args, multichannel=None, **kwargs):
  from skimage import filters
  if multichannel:
    kwargs["channel_axis"] = -1
  return filters.gaussian(image, sigma, *args, **kwargs)


def _resource_filename(package: str, path: str) -> str:
  return os.path.join(os.path.dirname(sys.modules[package].__file__), path)


def corruptions_module():
  """The patched `imagecorruptions.corruptions` module (imported once)."""
  global _CORRUPTIONS
  if _CORRUPTIONS is not None:
    return _CORRUPTIONS
  stand_in = None
  try:
    import pkg_resources  # noqa: F401
  except ImportError:
    stand_in = types.ModuleType("pkg_resources")
    stand_in.resource_filename = _resource_filename
    sys.modules["pkg_resources"] = stand_in
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      from imagecorruptions import corruptions
  finally:
    if stand_in is not None:
      sys.modules.pop("pkg_resources", None)
  corruptions.gaussian = _gaussian
  if not hasattr(np, "float_"):
    corruptions.np = _NumpyWithFloat_("numpy")
  _CORRUPTIONS = corruptions
  return corruptions


def corrupt(name: str, image: np.ndarray, severity: int, seed: int = 0) -> np.ndarray:
  """The reference corruption of a uint8 [H, W, 3] image, as float64 in [0, 1].

  Calls the corruption function the way `imagecorruptions.corrupt` does (on a PIL image)
  but skips corrupt's final `np.uint8(...)`, which truncates (floors) to integers: the
  jax operators do not quantise. Seeds numpy's global generator (all corruptions but
  impulse_noise draw from it; scikit-image's salt-and-pepper has its own generator).
  """
  from PIL import Image
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected a uint8 [H, W, 3] image; got {image.dtype} {image.shape}.")
  function = getattr(corruptions_module(), name)
  np.random.seed(seed)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out = function(Image.fromarray(image), severity)
  return np.asarray(out, np.float64) / 255.0

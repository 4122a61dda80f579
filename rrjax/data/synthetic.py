"""Small generated image folders for tests, smoke configs and benchmarks.

Every class has its own colour and stripe pattern (so even a tiny model, or the mean
colour alone, separates the classes), every image has its own noise, and image sizes
vary around `size` so resizing and cropping are exercised. Deterministic in `seed`.
"""

from __future__ import annotations

import colorsys
import os
from typing import Sequence

import numpy as np
from PIL import Image

CORRUPT_NAME = "000000_corrupt.jpg"
_EXTENSIONS = {"jpeg": ".jpg", "png": ".png"}


def class_colour(label: int, num_classes: int) -> np.ndarray:
  """The base RGB colour (floats in [0,255]) of a class: evenly spaced hues."""
  r, g, b = colorsys.hsv_to_rgb(label / num_classes, 0.8, 0.9)
  return np.array([r, g, b]) * 255.0


def make_image(label: int, num_classes: int, height: int, width: int,
               rng: np.random.Generator) -> np.ndarray:
  """One uint8 [height,width,3] image of class `label`."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
  angle = np.pi * label / num_classes
  period = 4.0 + 2.0 * (label % 3)
  stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
  image = class_colour(label, num_classes) * (0.85 + 0.15 * stripes[..., None])
  image += rng.normal(0.0, 8.0, size=image.shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def make_image_folder(root: str, *, num_classes: int, per_class: int,
                      splits: Sequence[str] = ("train", "val"), size: int = 32,
                      seed: int = 0, class_names: Sequence[str] | None = None,
                      image_format: str = "jpeg", corrupt: bool = False) -> str:
  """Writes root/<split>/<class>/<NNNNNN>.<ext> and returns root.

  Sizes are drawn per image in [3/4 size, 5/4 size] per side. `class_names` default to
  class_000, class_001, ... (pass wnids to mimic ImageNet). `corrupt=True` also writes
  one unreadable file, `CORRUPT_NAME`, into the last class of the first split.
  """
  if image_format not in _EXTENSIONS:
    raise ValueError(f"image_format={image_format!r} must be one of {sorted(_EXTENSIONS)}.")
  if num_classes <= 0 or per_class <= 0 or size < 4:
    raise ValueError(f"num_classes={num_classes} and per_class={per_class} must be "
                     f"positive and size={size} at least 4.")
  class_names = list(class_names or [f"class_{c:03d}" for c in range(num_classes)])
  if len(class_names) != num_classes:
    raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes.")
  ext = _EXTENSIONS[image_format]
  for split_index, split in enumerate(splits):
    for label, name in enumerate(class_names):
      class_dir = os.path.join(root, split, name)
      os.makedirs(class_dir, exist_ok=True)
      rng = np.random.default_rng([seed, split_index, label])
      for i in range(per_class):
        height, width = rng.integers(3 * size // 4, 5 * size // 4 + 1, size=2)
        image = make_image(label, num_classes, int(height), int(width), rng)
        Image.fromarray(image).save(os.path.join(class_dir, f"{i:06d}{ext}"))
  if corrupt:
    path = os.path.join(root, splits[0], class_names[-1], CORRUPT_NAME)
    with open(path, "wb") as f:
      f.write(b"\xff\xd8\xff\xe0 this is not a JPEG")
  return root

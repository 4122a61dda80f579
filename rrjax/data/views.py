"""Deterministic views of an image: the preprocessing pipelines of SPEC §4.

A *view* is a pure function of (image, seed, example id, view index): the same view can
be produced again at any time, on any host, in any process, which is what lets the
teacher-embedding cache store R(view) once and the student see exactly that crop later.

- view 0 is the evaluation view;
- views >= 1 are training views (random-resized-crop + horizontal flip), whose random
  parameters come from `np.random.default_rng([seed, example_id, view_index])`, a
  counter-based stream that depends on nothing else (no global RNG, no worker state).

Two modes:
- "crop" (ImageNet-100/100B, COVID): view 0 = resize the shorter side to `resize_size`,
  centre crop `size`; view k = torchvision's RandomResizedCrop(size, scale, ratio) + flip.
- "resize" (CIFAR-10/100, STL-10): view 0 = resize the whole image to `size`x`size`;
  view k = the same resize + flip.

Resampling is PIL's bilinear filter, which (like torchvision on PIL images) is
antialiased when downscaling; crops are cut first and then resized, as torchvision does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from PIL import Image

MODES = ("crop", "resize")


@dataclasses.dataclass(frozen=True)
class ViewParams:
  """How a view is cut from an image of a given shape.

  Applied in order: resize the whole image to `resize_hw` (skipped when None), take the
  box (top, left, height, width) of that image, resize the box to `size`x`size`, then
  mirror left-right when `flip`.
  """
  resize_hw: tuple[int, int] | None
  box: tuple[int, int, int, int]
  size: int
  flip: bool


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """The preprocessing settings of a dataset; a callable `(image, seed, id, view) -> crop`."""
  size: int = 224
  resize_size: int = 256
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  mode: str = "crop"

  def __post_init__(self):
    _check_settings(self.size, self.resize_size, self.scale, self.ratio, self.mode)

  @classmethod
  def from_config(cls, data_cfg) -> "ViewSpec":
    """Reads `data.image_size`, `data.resize_size`, `data.crop_scale`, `data.crop_ratio`,
    `data.view_mode` from a `config.data` ConfigDict."""
    return cls(size=int(data_cfg.image_size), resize_size=int(data_cfg.resize_size),
               scale=tuple(float(s) for s in data_cfg.crop_scale),
               ratio=tuple(float(r) for r in data_cfg.crop_ratio),
               mode=str(data_cfg.view_mode))

  def as_dict(self) -> dict[str, Any]:
    """JSON-able settings (for fingerprints of anything computed from views)."""
    return {"size": self.size, "resize_size": self.resize_size, "scale": list(self.scale),
            "ratio": list(self.ratio), "mode": self.mode}

  def __call__(self, image: np.ndarray, *, seed: int, example_id: int,
               view_index: int) -> np.ndarray:
    return make_view(image, seed=seed, example_id=example_id, view_index=view_index,
                     **self._kwargs())

  def params(self, height: int, width: int, *, seed: int, example_id: int,
             view_index: int) -> ViewParams:
    return view_params(height, width, seed=seed, example_id=example_id,
                       view_index=view_index, **self._kwargs())

  def _kwargs(self) -> dict[str, Any]:
    return dict(size=self.size, resize_size=self.resize_size, scale=self.scale,
                ratio=self.ratio, mode=self.mode)


def _check_settings(size, resize_size, scale, ratio, mode) -> None:
  if mode not in MODES:
    raise ValueError(f"data.view_mode={mode!r} is not one of {MODES}.")
  if size <= 0:
    raise ValueError(f"data.image_size={size} must be positive.")
  if mode == "crop" and resize_size < size:
    raise ValueError(f"data.resize_size={resize_size} must be >= data.image_size={size} "
                     "(the evaluation view centre-crops the resized image).")
  if not 0 < scale[0] <= scale[1] <= 1:
    raise ValueError(f"data.crop_scale={tuple(scale)} must satisfy 0 < min <= max <= 1.")
  if not 0 < ratio[0] <= ratio[1]:
    raise ValueError(f"data.crop_ratio={tuple(ratio)} must satisfy 0 < min <= max.")


def view_rng(seed: int, example_id: int, view_index: int) -> np.random.Generator:
  """The random stream of one (seed, example, view): identical on every host and run."""
  if min(seed, example_id, view_index) < 0:
    raise ValueError(f"seed={seed}, example_id={example_id}, view_index={view_index} "
                     "must all be >= 0.")
  return np.random.default_rng([seed, example_id, view_index])


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop.get_params: (top, left, h, w) of the crop.

  Ten tries of (area fraction ~ U(scale), log aspect ratio ~ U(log ratio)); if none fits,
  the largest centred box whose aspect ratio is clamped into `ratio`.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def shorter_side_shape(height: int, width: int, resize_size: int) -> tuple[int, int]:
  """torchvision Resize(int): shorter side -> resize_size, longer side scaled, truncated."""
  if height <= width:
    return resize_size, int(resize_size * width / height)
  return int(resize_size * height / width), resize_size


def view_params(height: int, width: int, *, seed: int, example_id: int, view_index: int,
                size: int = 224, resize_size: int = 256, scale=(0.08, 1.0),
                ratio=(3 / 4, 4 / 3), mode: str = "crop") -> ViewParams:
  """The crop box and flip of a view of an image of shape (height, width)."""
  _check_settings(size, resize_size, scale, ratio, mode)
  rng = view_rng(seed, example_id, view_index)  # Also validates the three integers.
  if view_index == 0:
    if mode == "resize":
      return ViewParams(None, (0, 0, height, width), size, False)
    rh, rw = shorter_side_shape(height, width, resize_size)
    # torchvision CenterCrop rounds the offset.
    top, left = int(round((rh - size) / 2)), int(round((rw - size) / 2))
    return ViewParams((rh, rw), (top, left, size, size), size, False)
  if mode == "resize":
    box = (0, 0, height, width)
  else:
    box = random_resized_crop_box(height, width, rng, scale, ratio)
  return ViewParams(None, box, size, bool(rng.random() < 0.5))


def apply_view_params(image: np.ndarray, params: ViewParams) -> np.ndarray:
  """Cuts a view out of a uint8 [H,W,3] image (PIL bilinear)."""
  pil = Image.fromarray(_check_image(image))
  if params.resize_hw is not None:
    rh, rw = params.resize_hw
    pil = pil.resize((rw, rh), Image.BILINEAR)
  top, left, h, w = params.box
  # Crop, then resize (torchvision's resized_crop): `resize(box=...)` would let the
  # filter read pixels outside the box.
  pil = pil.crop((left, top, left + w, top + h))
  if (h, w) != (params.size, params.size):
    pil = pil.resize((params.size, params.size), Image.BILINEAR)
  out = np.asarray(pil)
  return np.ascontiguousarray(out[:, ::-1]) if params.flip else out


def make_view(image: np.ndarray, *, seed: int, example_id: int, view_index: int,
              size: int = 224, resize_size: int = 256, scale=(0.08, 1.0),
              ratio=(3 / 4, 4 / 3), mode: str = "crop") -> np.ndarray:
  """View `view_index` of `image` (uint8 [H,W,3]) -> uint8 [size,size,3]. See module doc."""
  image = _check_image(image)
  params = view_params(image.shape[0], image.shape[1], seed=seed, example_id=example_id,
                       view_index=view_index, size=size, resize_size=resize_size,
                       scale=scale, ratio=ratio, mode=mode)
  return apply_view_params(image, params)


def resize_to(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes the whole image to size x size (bilinear): the CIFAR/STL eval pipeline."""
  return apply_view_params(image, ViewParams(None, (0, 0, *image.shape[:2]), size, False))


def _check_image(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"views take uint8 [H,W,3] images, got {image.dtype} {image.shape}.")
  return image

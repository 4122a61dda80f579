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

Decoding (`ViewSpec.decode`), for views cut straight from encoded bytes (`encoded_views`).
Baseline, YCbCr and greyscale JPEGs are decoded by libjpeg-turbo through simplejpeg,
which gives PIL's pixels exactly (both run libjpeg-turbo's default integer IDCT and fancy
upsampling) in about 60% of the time because it writes straight into a numpy array;
other formats and CMYK JPEGs (whose colour conversion differs) go through PIL.
- "full": the whole image is decoded; the view is the one `make_view` cuts from it.
- "draft": a training view whose crop box is at least 2, 4 or 8 times the output size
  along both sides is cut from the JPEG decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
  scaling, `Image.draft`), the largest factor that still leaves at least `size` pixels
  each way (the same pixels as PIL's `Image.draft`). The box is drawn from the original
  size (read from the header), so the same box is chosen either way; the pixels differ
  slightly from "full" (a mean absolute difference of about 1 level of 255). Evaluation
  views are always decoded in full, so they follow the paper's protocol exactly.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any, Sequence

import numpy as np
import simplejpeg
from PIL import Image

MODES = ("crop", "resize")
DECODES = ("full", "draft")
_DRAFT_SCALES = (8, 4, 2)


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
  decode: str = "full"

  def __post_init__(self):
    _check_settings(self.size, self.resize_size, self.scale, self.ratio, self.mode)
    if self.decode not in DECODES:
      raise ValueError(f"data.decode={self.decode!r} is not one of {DECODES}.")

  @classmethod
  def from_config(cls, data_cfg) -> "ViewSpec":
    """Reads `data.image_size`, `data.resize_size`, `data.crop_scale`, `data.crop_ratio`,
    `data.view_mode` and `data.decode` (default "full") from a `config.data` ConfigDict."""
    return cls(size=int(data_cfg.image_size), resize_size=int(data_cfg.resize_size),
               scale=tuple(float(s) for s in data_cfg.crop_scale),
               ratio=tuple(float(r) for r in data_cfg.crop_ratio),
               mode=str(data_cfg.view_mode), decode=str(data_cfg.get("decode", "full")))

  def at_size(self, size: int) -> "ViewSpec":
    """The same views at another output size (the teacher's, for a student trained at a
    lower resolution): training views keep their boxes, which do not depend on the size;
    the evaluation view keeps its field of view (resize_size scaled by the same factor)."""
    if size == self.size:
      return self
    return dataclasses.replace(self, size=size,
                               resize_size=round(self.resize_size * size / self.size))

  def as_dict(self) -> dict[str, Any]:
    """JSON-able settings (for fingerprints of anything computed from views)."""
    return {"size": self.size, "resize_size": self.resize_size, "scale": list(self.scale),
            "ratio": list(self.ratio), "mode": self.mode, "decode": self.decode}

  def __call__(self, image: np.ndarray, *, seed: int, example_id: int,
               view_index: int) -> np.ndarray:
    return make_view(image, seed=seed, example_id=example_id, view_index=view_index,
                     **self._kwargs())

  def from_encoded(self, data: bytes, name: str, *, seed: int, example_id: int,
                   view_indices: Sequence[int]) -> np.ndarray:
    """The views [V,S,S,3] of the encoded image `data` (a file's bytes), decoded as
    `decode` says; a ValueError naming `name` if it cannot be decoded."""
    return encoded_views(data, name, seed=seed, example_id=example_id,
                         view_indices=view_indices, decode=self.decode, **self._kwargs())

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
  _check_view_ids(seed, example_id, view_index)
  return np.random.default_rng([seed, example_id, view_index])


def _check_view_ids(seed: int, example_id: int, view_index: int) -> None:
  if min(seed, example_id, view_index) < 0:
    raise ValueError(f"seed={seed}, example_id={example_id}, view_index={view_index} "
                     "must all be >= 0.")


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
  return _cut(_check_image(image), 1, params)


def _cut(image: np.ndarray | Image.Image, reduction: int, params: ViewParams) -> np.ndarray:
  """Cuts a view out of an RGB image (array or PIL) that is the original decoded at
  1/`reduction` scale (the box is in original pixels)."""
  if params.resize_hw is not None:  # Evaluation views: never reduced (`_draft_reduction`).
    rh, rw = params.resize_hw
    image = _pil(image).resize((rw, rh), Image.BILINEAR)
  top, left, h, w = params.box
  # Crop, then resize (torchvision's resized_crop): `resize(box=...)` on the whole image
  # would let the filter read pixels outside the box. In a reduced image the box has
  # fractional corners: crop the pixels it touches, resize exactly its extent.
  x0, y0, x1, y1 = (left / reduction, top / reduction, (left + w) / reduction,
                    (top + h) / reduction)
  cx0, cy0 = math.floor(x0), math.floor(y0)
  cx1, cy1 = math.ceil(x1), math.ceil(y1)
  if isinstance(image, np.ndarray):  # Only the box's pixels enter PIL.
    pil = Image.fromarray(image[cy0:cy1, cx0:cx1])
  else:
    pil = image.crop((cx0, cy0, min(cx1, image.width), min(cy1, image.height)))
  if (h, w) != (params.size, params.size) or reduction != 1:
    pil = pil.resize((params.size, params.size), Image.BILINEAR,
                     box=(x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0))
  if params.flip:  # In PIL: much faster than copying a reversed numpy view.
    pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(pil)


def _pil(image: np.ndarray | Image.Image) -> Image.Image:
  return Image.fromarray(image) if isinstance(image, np.ndarray) else image


def _draft_reduction(params: ViewParams, view_index: int, decode: str) -> int:
  """The JPEG DCT reduction (1, 2, 4 or 8) a view may be decoded at: the largest that
  leaves the crop box at least `size` pixels each way; 1 for evaluation views."""
  if decode == "full" or view_index == 0:
    return 1
  _, _, h, w = params.box
  return next((r for r in _DRAFT_SCALES if min(h, w) >= r * params.size), 1)


def _jpeg_header(data: bytes) -> tuple[int, int] | None:
  """(height, width) of a JPEG simplejpeg decodes as PIL would; None for anything else."""
  try:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
  except ValueError:
    return None
  return (height, width) if colorspace in ("YCbCr", "Gray") else None


def _decode_jpeg(data: bytes, shape: tuple[int, int], reduction: int):
  """The JPEG decoded at exactly 1/reduction (simplejpeg picks the largest scale no
  smaller than that which keeps ceil(side / reduction) pixels, as libjpeg and PIL's
  draft round up) -> (uint8 [h,w,3], reduction)."""
  image = simplejpeg.decode_jpeg(data, colorspace="RGB", min_factor=reduction,
                                 min_height=-(-shape[0] // reduction),
                                 min_width=-(-shape[1] // reduction))
  return image, reduction


def _decode_pil(data: bytes, reduction: int):
  """Any image PIL reads, JPEGs at 1/reduction where possible -> (RGB PIL image, the
  reduction applied)."""
  with Image.open(io.BytesIO(data)) as pil:
    # Asking for exactly width // r x height // r makes PIL pick factor r; formats
    # without DCT scaling (PNG, ...) ignore the request and return None.
    if reduction > 1 and pil.draft("RGB", (pil.width // reduction,
                                           pil.height // reduction)) is None:
      reduction = 1
    pil.load()
    return (pil if pil.mode == "RGB" else pil.convert("RGB")), reduction  # convert() copies.


def _pil_shape(data: bytes) -> tuple[int, int]:
  with Image.open(io.BytesIO(data)) as pil:  # Reads the header only.
    return pil.height, pil.width


def encoded_views(data: bytes, name: str, *, seed: int, example_id: int,
                  view_indices: Sequence[int], size: int = 224, resize_size: int = 256,
                  scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), mode: str = "crop",
                  decode: str = "full") -> np.ndarray:
  """Views `view_indices` of an encoded image -> uint8 [V,size,size,3], decoding it once
  per reduction used. See module doc.

  With decode="full" each view equals `make_view` of the decoded image, pixel for pixel.
  """
  for v in view_indices:  # Bad arguments are not bad images: check before decoding.
    _check_view_ids(seed, example_id, v)

  def all_params(shape: tuple[int, int]) -> list[tuple[int, ViewParams]]:
    return [(v, view_params(*shape, seed=seed, example_id=example_id, view_index=v,
                            size=size, resize_size=resize_size, scale=scale, ratio=ratio,
                            mode=mode)) for v in view_indices]

  jpeg_shape = _jpeg_header(data)
  if jpeg_shape is not None:
    # The header gives the size without decoding: boxes come from the original size,
    # so the same box is chosen whatever the reduction.
    params = all_params(jpeg_shape)
    try:
      return _cut_views(params, lambda r: _decode_jpeg(data, jpeg_shape, r), decode)
    except ValueError:
      pass  # Also libjpeg warnings PIL tolerates (extraneous bytes, ...): PIL decides.
  try:
    return _cut_views(all_params(_pil_shape(data)), lambda r: _decode_pil(data, r), decode)
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ...).
    raise decode_error(name, e) from e


def _cut_views(params: list[tuple[int, ViewParams]], decoded, decode: str) -> np.ndarray:
  """Cuts each (view index, params); `decoded(reduction)` decodes, once per reduction."""
  images = {}
  out = []
  for view_index, view in params:
    wanted = _draft_reduction(view, view_index, decode)
    if wanted not in images:
      images[wanted] = decoded(wanted)
    out.append(_cut(*images[wanted], params=view))
  return np.stack(out)


def decode_error(name: str, error: Exception) -> ValueError:
  """The error for an unreadable image, naming it and the way around it."""
  return ValueError(f"cannot decode image {name}: {error}. Fix or remove the file, or set "
                    "data.skip_corrupt=True to skip unreadable files.")


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

"""Views cut straight from JPEG bytes: reduced-size (draft) decoding of training views.

Fast: numpy and PIL only, nothing is compiled.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from rrjax.data import pipeline, sources, views, workers

SIZE = 64  # Crop boxes of 600x480 images are often >= 2x and 4x this: drafts happen.
HEIGHT, WIDTH = 480, 600
SEED = 7
NUM_IDS = 12
TRAIN_VIEWS = (1, 2, 3, 4)
FULL = views.ViewSpec(size=SIZE, resize_size=73)
DRAFT = views.ViewSpec(size=SIZE, resize_size=73, decode="draft")
# Per-view mean |draft - full| measured: at most 0.67 levels of 255 on these images, at
# most 2.05 (averages 0.7 to 1.0) on 150 rescaled real photos at size 224.
MEAN_ABS_BOUND = 2.5


def _photo_like(seed: int) -> np.ndarray:
  """Smooth gradients, blobs and fine noise: textures JPEG treats like a photo's."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
  image = np.zeros((HEIGHT, WIDTH, 3), np.float32)
  for c in range(3):
    fy, fx = rng.uniform(0.005, 0.05, size=2)
    image[..., c] = 128 + 90 * np.sin(fy * y + rng.uniform(0, 6)) * np.cos(fx * x)
  for _ in range(6):
    cy, cx, r = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH), rng.uniform(20, 120)
    image[(y - cy) ** 2 + (x - cx) ** 2 < r ** 2] += rng.uniform(-80, 80, size=3)
  image += rng.normal(0, 6, size=image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
  out = []
  for seed in range(3):
    buf = io.BytesIO()
    Image.fromarray(_photo_like(seed)).save(buf, "JPEG", quality=90)
    out.append(buf.getvalue())
  return out


def _view(spec, data, example_id, view_index):
  return spec.from_encoded(data, f"image {example_id}", seed=SEED, example_id=example_id,
                           view_indices=[view_index])[0]


def _draft_digest(paths) -> str:
  h = hashlib.sha256()
  for example_id in range(NUM_IDS):
    with open(paths[example_id % len(paths)], "rb") as f:
      data = f.read()
    for v in TRAIN_VIEWS:
      h.update(_view(DRAFT, data, example_id, v).tobytes())
  return h.hexdigest()


_DIGEST_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import test_data_decode
print(test_data_decode._draft_digest(sys.argv[2:]))
"""


def test_draft_views_are_the_same_in_another_process(jpegs, tmp_path):
  paths = []
  for i, data in enumerate(jpegs):
    paths.append(str(tmp_path / f"{i}.jpg"))
    with open(paths[-1], "wb") as f:
      f.write(data)
  digest = _draft_digest(paths)
  assert _draft_digest(paths) == digest
  out = subprocess.run([sys.executable, "-c", _DIGEST_SCRIPT, os.path.dirname(__file__),
                        *paths], check=True, capture_output=True, text=True)
  assert out.stdout.strip() == digest


def test_full_decode_equals_the_decoded_image_path(jpegs):
  for example_id in range(NUM_IDS):
    data = jpegs[example_id % len(jpegs)]
    image = sources.decode_image(data, "x")
    for v in (0, *TRAIN_VIEWS):
      np.testing.assert_array_equal(
          _view(FULL, data, example_id, v),
          FULL(image, seed=SEED, example_id=example_id, view_index=v))


def test_draft_views_are_close_to_full_decode_and_eval_views_unchanged(jpegs):
  reduced = set()
  for example_id in range(NUM_IDS):
    data = jpegs[example_id % len(jpegs)]
    for v in TRAIN_VIEWS:
      full, draft = _view(FULL, data, example_id, v), _view(DRAFT, data, example_id, v)
      assert draft.shape == full.shape == (SIZE, SIZE, 3) and draft.dtype == np.uint8
      _, _, h, w = FULL.params(HEIGHT, WIDTH, seed=SEED, example_id=example_id,
                               view_index=v).box
      if min(h, w) < 2 * SIZE:  # Too few pixels to reduce: decoded in full.
        np.testing.assert_array_equal(draft, full)
        continue
      reduced.add(4 if min(h, w) >= 4 * SIZE else 2)
      diff = np.abs(draft.astype(np.float64) - full).mean()
      assert 0 < diff < MEAN_ABS_BOUND, (example_id, v, diff)
    # Evaluation views keep the paper's protocol exactly: always decoded in full.
    np.testing.assert_array_equal(_view(DRAFT, data, example_id, 0),
                                  _view(FULL, data, example_id, 0))
  assert reduced == {2, 4}, "the images must exercise both reductions"


def test_non_jpeg_images_are_decoded_in_full(jpegs):
  buf = io.BytesIO()
  Image.open(io.BytesIO(jpegs[0])).save(buf, "PNG")
  for v in TRAIN_VIEWS:
    np.testing.assert_array_equal(_view(DRAFT, buf.getvalue(), 0, v),
                                  _view(FULL, jpegs[0], 0, v))


def test_unreadable_bytes_name_the_image():
  with pytest.raises(ValueError, match="cannot decode image image 3"):
    _view(DRAFT, b"not an image", 3, 1)


def test_decode_mode_enters_the_cache_fingerprint():
  data = ml_collections.ConfigDict(dict(image_size=SIZE, resize_size=73,
                                        crop_scale=(0.08, 1.0), crop_ratio=(0.75, 4 / 3),
                                        view_mode="crop"))
  assert views.ViewSpec.from_config(data).decode == "full"  # Configs without the field.
  data.decode = "draft"
  assert views.ViewSpec.from_config(data) == DRAFT
  assert DRAFT.as_dict() != FULL.as_dict()
  assert {k for k in DRAFT.as_dict() if DRAFT.as_dict()[k] != FULL.as_dict()[k]} == {"decode"}
  with pytest.raises(ValueError, match="data.decode"):
    views.ViewSpec(decode="fast")


def test_views_of_one_decode_equal_views_decoded_one_by_one(jpegs, tmp_path):
  """The cache builder cuts several views of an example from one decode (per reduction):
  exactly the views the training loader cuts one at a time."""
  for i, data in enumerate(jpegs):
    (tmp_path / "train" / "c").mkdir(parents=True, exist_ok=True)
    (tmp_path / "train" / "c" / f"{i:02d}.jpg").write_bytes(data)
  source = sources.ImageFolderSource(str(tmp_path), "train")
  for spec in (FULL, DRAFT):
    for row in range(len(source)):
      together, label, example_id = workers.example_views(source, row, spec, seed=SEED,
                                                          view_indices=(0, *TRAIN_VIEWS))
      assert (label, example_id) == (0, row)
      for image, v in zip(together, (0, *TRAIN_VIEWS)):
        np.testing.assert_array_equal(
            image, workers.example_view(source, row, spec, seed=SEED, view_index=v)[0])


def test_loader_cuts_draft_views_from_the_files(jpegs, tmp_path):
  for i, data in enumerate(jpegs * 2):
    (tmp_path / "train" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
    (tmp_path / "train" / f"c{i % 2}" / f"{i}.jpg").write_bytes(data)
  source = sources.ImageFolderSource(str(tmp_path), "train")
  loader = pipeline.TrainLoader(source, global_batch_size=3, view=DRAFT, num_views=4,
                                seed=SEED, process_index=0, process_count=1, num_workers=2)
  try:
    batch = next(loader)
  finally:
    loader.close()
  for image, example_id, v in zip(batch["image"], batch["id"], batch["view"]):
    np.testing.assert_array_equal(
        image, _view(DRAFT, source.encoded(int(example_id)), int(example_id), int(v)))


def _encoded(image: np.ndarray, mode: str = "RGB", **save) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).convert(mode).save(buf, "JPEG", **save)
  return buf.getvalue()


@pytest.mark.parametrize("mode, save", [
    ("RGB", dict(quality=90)),                        # 4:2:0, simplejpeg
    ("RGB", dict(quality=95, subsampling=0)),         # 4:4:4, simplejpeg
    ("RGB", dict(quality=90, progressive=True)),      # progressive, simplejpeg
    ("L", dict(quality=90)),                          # greyscale, simplejpeg
    ("CMYK", dict(quality=90)),                       # CMYK: PIL's colour conversion
])
def test_jpegs_decode_to_pils_pixels(mode, save):
  """Whichever library decodes, the views are those of PIL's decoded image."""
  data = _encoded(_photo_like(5)[:301, :389], mode, **save)
  reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  for spec in (FULL, DRAFT):
    for v in (0, *TRAIN_VIEWS):
      expected = FULL(reference, seed=SEED, example_id=3, view_index=v)
      if spec is DRAFT and v:  # Reduced decodes: PIL's draft gives the same pixels.
        pil = Image.open(io.BytesIO(data))
        params = spec.params(*reference.shape[:2], seed=SEED, example_id=3, view_index=v)
        reduction = views._draft_reduction(params, v, "draft")
        pil.draft("RGB", (pil.width // reduction, pil.height // reduction))
        expected = views._cut(pil.convert("RGB"), reduction, params)
      np.testing.assert_array_equal(_view(spec, data, 3, v), expected)


def test_jpeg_with_a_libjpeg_warning_is_read_as_pil_reads_it():
  """Extraneous bytes before a marker: libjpeg warns, PIL decodes anyway, and so do we."""
  data = _encoded(_photo_like(6)[:200, :260], quality=90)
  start_of_scan = data.index(b"\xff\xda")
  damaged = data[:start_of_scan] + b"\x00\x17\x00" + data[start_of_scan:]
  reference = np.asarray(Image.open(io.BytesIO(damaged)).convert("RGB"))
  for v in (0, 1):
    np.testing.assert_array_equal(
        _view(FULL, damaged, 0, v), FULL(reference, seed=SEED, example_id=0, view_index=v))


def test_bad_view_arguments_are_not_reported_as_bad_images(jpegs):
  with pytest.raises(ValueError, match="must all be >= 0") as error:
    _view(FULL, jpegs[0], -1, 1)
  assert "cannot decode" not in str(error.value)

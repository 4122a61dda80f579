"""Views (SPEC §4) and the synthetic image folder."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rrjax.data import synthetic, views


def _image(height, width, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _reference_crop(image, top, left, h, w, size, flip):
  """torchvision's resized_crop on a PIL image, written out with numpy slicing."""
  crop = Image.fromarray(np.ascontiguousarray(image[top:top + h, left:left + w]))
  out = np.asarray(crop.resize((size, size), Image.BILINEAR))
  return out[:, ::-1] if flip else out


@pytest.mark.parametrize("shape,resized,box", [
    ((300, 400), (256, 341), (16, 58)),   # landscape: 256 * 400/300 = 341.33 -> 341
    ((500, 260), (492, 256), (134, 16)),  # portrait: 256 * 500/260 = 492.3 -> 492
    ((256, 256), (256, 256), (16, 16)),
])
def test_eval_view_is_resize_shorter_side_then_centre_crop(shape, resized, box):
  image = _image(*shape)
  params = views.view_params(*shape, seed=3, example_id=7, view_index=0)
  assert params == views.ViewParams(resized, (*box, 224, 224), 224, False)
  resized_image = np.asarray(Image.fromarray(image).resize(resized[::-1], Image.BILINEAR))
  expected = resized_image[box[0]:box[0] + 224, box[1]:box[1] + 224]
  # The eval view does not depend on the seed or the example id.
  for seed, example_id in [(3, 7), (0, 0), (99, 12345)]:
    got = views.make_view(image, seed=seed, example_id=example_id, view_index=0)
    np.testing.assert_array_equal(got, expected)


def test_training_views_match_reference_crop_and_follow_the_distribution():
  height, width, size = 60, 80, 24
  image = _image(height, width)
  areas, log_ratios, flips = [], [], []
  for example_id in range(400):
    p = views.view_params(height, width, seed=1, example_id=example_id, view_index=2,
                          size=size)
    top, left, h, w = p.box
    assert p.resize_hw is None and p.size == size
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    areas.append(h * w / (height * width))
    log_ratios.append(np.log(w / h))
    flips.append(p.flip)
    if example_id < 20:
      got = views.make_view(image, seed=1, example_id=example_id, view_index=2, size=size)
      np.testing.assert_array_equal(got, _reference_crop(image, *p.box, size, p.flip))
  areas, log_ratios = np.array(areas), np.array(log_ratios)
  # Rounding of h and w moves the edges of the ranges slightly.
  assert areas.min() >= 0.07 and areas.max() <= 1.0
  assert areas.min() < 0.15 and areas.max() > 0.8
  assert np.all(np.abs(log_ratios) <= np.log(4 / 3) + 0.1)
  assert 0.4 < np.mean(flips) < 0.6


def test_random_resized_crop_falls_back_to_clamped_centre_crop():
  # Whole-image area at aspect <= 4/3 never fits a 30x90 image: all 10 tries fail.
  rng = np.random.default_rng(0)
  assert views.random_resized_crop_box(30, 90, rng, scale=(1, 1)) == (0, 25, 30, 40)
  assert views.random_resized_crop_box(90, 30, rng, scale=(1, 1)) == (25, 0, 40, 30)


def test_views_differ_by_view_index_and_seed_and_repeat_exactly():
  image = _image(50, 70)
  made = {(seed, v): views.make_view(image, seed=seed, example_id=5, view_index=v, size=16)
          for seed in (0, 1) for v in (1, 2, 3)}
  blobs = {k: v.tobytes() for k, v in made.items()}
  assert len(set(blobs.values())) == len(blobs)
  again = views.make_view(image, seed=1, example_id=5, view_index=3, size=16)
  assert again.tobytes() == blobs[(1, 3)]


def test_resize_mode_and_resize_to():
  image = _image(32, 40)
  expected = np.asarray(Image.fromarray(image).resize((24, 24), Image.BILINEAR))
  np.testing.assert_array_equal(views.resize_to(image, 24), expected)
  np.testing.assert_array_equal(
      views.make_view(image, seed=0, example_id=0, view_index=0, size=24, mode="resize"),
      expected)
  flips = set()
  for example_id in range(20):
    got = views.make_view(image, seed=0, example_id=example_id, view_index=1, size=24,
                          mode="resize")
    flipped = views.view_params(32, 40, seed=0, example_id=example_id, view_index=1,
                                size=24, mode="resize").flip
    np.testing.assert_array_equal(got, expected[:, ::-1] if flipped else expected)
    flips.add(flipped)
  assert flips == {True, False}


def test_view_spec_reads_config_and_matches_make_view():
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(image_size=16, resize_size=20, crop_scale=(0.5, 1.0),
                                       crop_ratio=(0.9, 1.1), view_mode="crop"))
  spec = views.ViewSpec.from_config(cfg)
  assert spec.as_dict() == {"size": 16, "resize_size": 20, "scale": [0.5, 1.0],
                            "ratio": [0.9, 1.1], "mode": "crop", "decode": "full"}
  image = _image(30, 30)
  np.testing.assert_array_equal(
      spec(image, seed=2, example_id=3, view_index=1),
      views.make_view(image, seed=2, example_id=3, view_index=1, size=16, resize_size=20,
                      scale=(0.5, 1.0), ratio=(0.9, 1.1)))
  assert spec.params(30, 30, seed=2, example_id=3, view_index=1) == views.view_params(
      30, 30, seed=2, example_id=3, view_index=1, size=16, resize_size=20,
      scale=(0.5, 1.0), ratio=(0.9, 1.1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="zoom"), "view_mode"),
    (dict(size=256, resize_size=224), "resize_size"),
    (dict(scale=(0.5, 0.2)), "crop_scale"),
    (dict(ratio=(0.0, 1.0)), "crop_ratio"),
    (dict(example_id=-1), "example_id"),
])
def test_bad_settings_are_refused(kwargs, match):
  args = dict(seed=0, example_id=0, view_index=1) | kwargs
  with pytest.raises(ValueError, match=match):
    views.make_view(_image(40, 40), **args)


def test_bad_image_is_refused():
  with pytest.raises(ValueError, match="uint8"):
    views.make_view(np.zeros((8, 8, 3), np.float32), seed=0, example_id=0, view_index=0)


_VIEW_HASH_SCRIPT = """
import hashlib, numpy as np
from rrjax.data import views
image = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
h = hashlib.sha256()
for example_id in range(4):
  for view_index in range(3):
    h.update(views.make_view(image, seed=11, example_id=example_id, view_index=view_index,
                             size=20, resize_size=24).tobytes())
print(h.hexdigest())
"""


def test_views_are_identical_in_another_process():
  image = _image(45, 61)
  h = hashlib.sha256()
  for example_id in range(4):
    for view_index in range(3):
      h.update(views.make_view(image, seed=11, example_id=example_id, view_index=view_index,
                               size=20, resize_size=24).tobytes())
  env = dict(os.environ, PYTHONHASHSEED="123")
  out = subprocess.run([sys.executable, "-c", _VIEW_HASH_SCRIPT], check=True,
                       capture_output=True, text=True, env=env)
  assert out.stdout.strip() == h.hexdigest()


def test_synthetic_folder_is_deterministic_and_class_distinguishable(tmp_path):
  a = synthetic.make_image_folder(str(tmp_path / "a"), num_classes=4, per_class=3,
                                  size=16, seed=5, image_format="png")
  b = synthetic.make_image_folder(str(tmp_path / "b"), num_classes=4, per_class=3,
                                  size=16, seed=5, image_format="png")
  colours = np.stack([synthetic.class_colour(c, 4) for c in range(4)])
  shapes = set()
  for split in ("train", "val"):
    for label in range(4):
      class_dir = os.path.join(a, split, f"class_{label:03d}")
      names = sorted(os.listdir(class_dir))
      assert names == [f"{i:06d}.png" for i in range(3)]
      for name in names:
        image = np.asarray(Image.open(os.path.join(class_dir, name)))
        other = np.asarray(Image.open(os.path.join(b, split, f"class_{label:03d}", name)))
        np.testing.assert_array_equal(image, other)
        assert 12 <= image.shape[0] <= 20 and 12 <= image.shape[1] <= 20
        shapes.add(image.shape)
        mean = image.reshape(-1, 3).mean(0)
        assert np.argmin(np.linalg.norm(colours - mean, axis=1)) == label
  assert len(shapes) > 3


def test_synthetic_folder_corrupt_file_and_names(tmp_path):
  root = synthetic.make_image_folder(str(tmp_path), num_classes=2, per_class=2,
                                     splits=("train",), size=8, corrupt=True,
                                     class_names=["n01", "n02"])
  path = os.path.join(root, "train", "n02", synthetic.CORRUPT_NAME)
  assert sorted(os.listdir(os.path.join(root, "train", "n02")))[1] == synthetic.CORRUPT_NAME
  with pytest.raises(Exception):
    Image.open(path).load()
  with pytest.raises(ValueError, match="class_names"):
    synthetic.make_image_folder(str(tmp_path), num_classes=3, per_class=1,
                                class_names=["a"])


def test_the_same_views_at_the_teachers_size():
  """A student at 24 px and its teacher at 32 px see the same crops: training boxes do
  not depend on the size, and the evaluation view keeps its field of view."""
  student = views.ViewSpec(size=24, resize_size=28)
  teacher = student.at_size(32)
  assert (teacher.size, teacher.resize_size) == (32, 37) and student.at_size(24) is student
  for v in (1, 2, 3):
    a = student.params(61, 83, seed=1, example_id=5, view_index=v)
    b = teacher.params(61, 83, seed=1, example_id=5, view_index=v)
    assert (a.box, a.flip) == (b.box, b.flip)
  a, b = (s.params(61, 83, seed=1, example_id=5, view_index=0) for s in (student, teacher))
  assert abs(a.box[2] / a.resize_hw[0] - b.box[2] / b.resize_hw[0]) < 0.05

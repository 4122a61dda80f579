"""Sources (image folders, tfds, out-of-class, records), build_source and the prep tool."""

import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from rrjax import config as rr_config
from rrjax.data import build_tfds, prepare, sources, synthetic

NUM_CLASSES, PER_CLASS = 3, 4


def _class_of(image: np.ndarray, num_classes: int) -> int:
  """Independent label check: the synthetic class whose colour is nearest the mean."""
  colours = np.stack([synthetic.class_colour(c, num_classes) for c in range(num_classes)])
  return int(np.argmin(np.linalg.norm(colours - image.reshape(-1, 3).mean(0), axis=1)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return synthetic.make_image_folder(str(tmp_path_factory.mktemp("folder")),
                                     num_classes=NUM_CLASSES, per_class=PER_CLASS, size=12,
                                     seed=1, image_format="png")


@pytest.fixture(scope="module")
def corrupt_folder(tmp_path_factory):
  return synthetic.make_image_folder(str(tmp_path_factory.mktemp("corrupt")),
                                     num_classes=NUM_CLASSES, per_class=PER_CLASS, size=12,
                                     seed=2, splits=("train",), corrupt=True)


def _data_cfg(**overrides):
  cfg = rr_config.base_config().data
  cfg.update(overrides)
  return cfg


def test_image_folder_order_labels_and_ids(folder):
  source = sources.ImageFolderSource(folder, "val")
  assert len(source) == NUM_CLASSES * PER_CLASS and source.num_classes == NUM_CLASSES
  assert source.class_names == [f"class_{c:03d}" for c in range(NUM_CLASSES)]
  expected_files = [os.path.join(folder, "val", f"class_{c:03d}", f"{i:06d}.png")
                    for c in range(NUM_CLASSES) for i in range(PER_CLASS)]
  assert source.files == expected_files
  for i in range(len(source)):
    example = source[i]
    assert example["id"] == i and example["label"] == source.labels[i] == i // PER_CLASS
    np.testing.assert_array_equal(example["image"], np.asarray(Image.open(source.files[i])))
    assert _class_of(example["image"], NUM_CLASSES) == example["label"]
  with pytest.raises(IndexError):
    source[len(source)]


def test_image_folder_class_list_restricts_and_orders(folder):
  source = sources.ImageFolderSource(folder, "train", classes=["class_002", "class_000"])
  assert len(source) == 2 * PER_CLASS
  assert source.labels.tolist() == [0] * PER_CLASS + [1] * PER_CLASS
  assert _class_of(source[0]["image"], NUM_CLASSES) == 2
  with pytest.raises(FileNotFoundError, match="class_009"):
    sources.ImageFolderSource(folder, "train", classes=["class_009"])


def test_missing_root_and_split_name_the_path_and_field(folder, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nowhere.*data\.root"):
    sources.build_source(_data_cfg(source="folder", root=str(tmp_path / "nowhere"), wnids=""),
                         "train")
  with pytest.raises(FileNotFoundError, match=r"test'.*data\.root"):
    sources.ImageFolderSource(folder, "test")


def test_corrupt_file_raises_naming_it(corrupt_folder):
  source = sources.ImageFolderSource(corrupt_folder, "train")
  bad = source.files.index(os.path.join(corrupt_folder, "train", "class_002",
                                        synthetic.CORRUPT_NAME))
  with pytest.raises(ValueError, match=synthetic.CORRUPT_NAME + ".*skip_corrupt"):
    source[bad]
  assert source[bad + 1]["label"] == 2


def test_corrupt_file_skipped_and_counted_labels_intact(corrupt_folder):
  source = sources.build_source(
      _data_cfg(source="folder", root=corrupt_folder, wnids="", skip_corrupt=True), "train")
  assert source.num_skipped == 1 and source.skipped_files[0].endswith(synthetic.CORRUPT_NAME)
  assert len(source) == NUM_CLASSES * PER_CLASS
  for i in range(len(source)):
    example = source[i]
    assert example["id"] == i
    assert example["label"] == i // PER_CLASS == _class_of(example["image"], NUM_CLASSES)


def test_wnid_lists():
  a, b = sources.load_wnids("imagenet100"), sources.load_wnids("imagenet100b")
  assert len(a) == len(set(a)) == 100 and len(b) == len(set(b)) == 100
  assert not set(a) & set(b) and a[0] == "n02869837"
  with pytest.raises(ValueError, match="data.wnids"):
    sources.load_wnids("imagenet1k")


# Positions in imagenet100_wnids.txt (1-based line numbers 9, 34, 41, 55, 65).
EXPECTED_OUT_OF_CLASS = {"n07930864": 8, "n01978287": 33, "n03792782": 40,
                         "n02325366": 54, "n02108915": 64}


def test_out_of_class_relabelling(tmp_path):
  unseen = sorted(EXPECTED_OUT_OF_CLASS)
  root = synthetic.make_image_folder(str(tmp_path), num_classes=5, per_class=2, size=8,
                                     splits=("val",), class_names=unseen)
  source = sources.build_source(_data_cfg(source="folder", root=root, out_of_class=True),
                                "val")
  assert isinstance(source, sources.OutOfClassSource)
  assert source.num_classes == 100 and source.class_names == sources.load_wnids("imagenet100")
  assert len(source) == 10
  for i in range(len(source)):
    example = source[i]
    inner = source.inner[i]
    wnid = os.path.basename(os.path.dirname(source.inner.files[i]))
    expected = EXPECTED_OUT_OF_CLASS[wnid]
    assert example["label"] == source.labels[i] == expected and example["id"] == i
    np.testing.assert_array_equal(example["image"], inner["image"])
  other = sources.ImageFolderSource(root, "val", classes=unseen[:1])
  assert sources.OutOfClassSource(other).labels.tolist() == [EXPECTED_OUT_OF_CLASS[unseen[0]]] * 2
  with pytest.raises(ValueError, match="unseen"):
    sources.OutOfClassSource(_FakeSource(["n00000001"]))


class _FakeSource:
  def __init__(self, class_names):
    self.class_names, self.labels = class_names, np.zeros(1, np.int64)


# A real (not mocked) tfds dataset, prepared in array_record format without TensorFlow:
# the label names are wnids, as in imagenet2012, so the wnid restriction is exercised.
TFDS_WNIDS = ["n01", "n02", "n03", "n04"]
TFDS_LABELS = [3, 0, 1, 3, 2, 0, 1, 3]


def _tfds_image(i):
  return np.full((6 + i, 5, 3), 10 * i, np.uint8)


class RrjaxTestImages(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(names=TFDS_WNIDS)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"validation": self._generate_examples()}

  def _generate_examples(self):
    for i, label in enumerate(TFDS_LABELS):
      buffer = io.BytesIO()
      Image.fromarray(_tfds_image(i)).save(buffer, format="PNG")
      yield i, {"image": buffer.getvalue(), "label": label}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  RrjaxTestImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def _tfds_index(image):
  """Which generated example an image is (its height encodes it)."""
  return image.shape[0] - 6


def test_tfds_source_restricted_to_wnids(tfds_dir):
  source = sources.build_source(
      _data_cfg(source="tfds", name="rrjax_test_images", root=tfds_dir, wnids=""),
      "validation")
  assert source.class_names == TFDS_WNIDS and len(source) == len(TFDS_LABELS)
  restricted = sources.TfdsSource("rrjax_test_images", "validation", data_dir=tfds_dir,
                                  wnids=["n04", "n02"])
  assert restricted.class_names == ["n04", "n02"]
  seen = []
  for i in range(len(restricted)):
    example = restricted[i]
    original = _tfds_index(example["image"])
    np.testing.assert_array_equal(example["image"], _tfds_image(original))
    expected_label = {3: 0, 1: 1}[TFDS_LABELS[original]]
    assert example["label"] == restricted.labels[i] == expected_label and example["id"] == i
    seen.append(original)
  assert sorted(seen) == [i for i, l in enumerate(TFDS_LABELS) if l in (3, 1)]
  with pytest.raises(ValueError, match="n09"):
    sources.TfdsSource("rrjax_test_images", "validation", data_dir=tfds_dir, wnids=["n09"])


def test_tfds_missing_data_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"rrjax_test_images.*data\.root") as error:
    sources.TfdsSource("rrjax_test_images", "validation", data_dir=str(tmp_path))
  # The command it names is the one that prepares it (test_build_tfds_*).
  assert build_tfds.build_command("rrjax_test_images", str(tmp_path)) in str(error.value)


def test_build_tfds_prepares_what_tfds_sources_read(tmp_path, monkeypatch, capsys):
  # This builder stores encoded PNGs, which tfds writes without TensorFlow; real image
  # datasets' builders need it, which the command checks first (see below).
  monkeypatch.setattr(build_tfds, "_has_tensorflow", lambda: True)
  data_dir = str(tmp_path / "tfds")
  build_tfds.main(["rrjax_test_images", "--data_dir", data_dir])
  assert "--config.data.name=rrjax_test_images" in capsys.readouterr().out
  source = sources.TfdsSource("rrjax_test_images", "validation", data_dir=data_dir)
  assert source.class_names == TFDS_WNIDS and len(source) == len(TFDS_LABELS)
  originals = [_tfds_index(source[i]["image"]) for i in range(len(source))]
  assert sorted(originals) == list(range(len(TFDS_LABELS)))
  assert [TFDS_LABELS[i] for i in originals] == [source[i]["label"] for i in range(len(source))]


@pytest.mark.parametrize("name, has_tensorflow, message", [
    ("rrjax_test_images", False, r'pip install -e "\.\[prepare\]"'),
    ("imagenet2012", True, r"placed by hand in .*downloads/manual \(--manual_dir\): .*"
                           r"ILSVRC2012_img_train\.tar"),
    ("no_such_dataset", True, "Dataset no_such_dataset not found"),
])
def test_build_tfds_stops_before_downloading(name, has_tensorflow, message, tmp_path,
                                             monkeypatch, capsys):
  monkeypatch.setattr(build_tfds, "_has_tensorflow", lambda: has_tensorflow)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      lambda *a, **k: pytest.fail("downloaded"))
  with pytest.raises(SystemExit) as stop:
    build_tfds.main([name, "--data_dir", str(tmp_path)])
  assert stop.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and re.search(message, err) and err.count("\n") == 1, err
  assert not os.listdir(tmp_path)


def test_tfds_mock_data_named_datasets():
  with tfds.testing.mock_data(num_examples=3):
    for name, split, num_classes in [("cifar10", "train", 10), ("cifar100", "test", 100),
                                     ("stl10", "test", 10), ("imagenette", "validation", 10),
                                     ("imagenet2012_corrupted/gaussian_noise_3",
                                      "validation", 1000)]:
      source = sources.TfdsSource(name, split)
      assert len(source) == 3 and source.num_classes == num_classes
      example = source[2]
      assert example["image"].dtype == np.uint8 and example["image"].ndim == 3
      assert example["image"].shape[-1] == 3 and example["id"] == 2
      assert 0 <= example["label"] < num_classes


def test_prepare_folder_round_trip_cli(corrupt_folder, tmp_path):
  out = str(tmp_path / "records")
  subprocess.run([sys.executable, "-m", "rrjax.data.prepare", "--source", "folder",
                  "--root", corrupt_folder, "--split", "train", "--skip_corrupt",
                  "--out", out, "--num_shards", "5", "--num_workers", "2"], check=True,
                 capture_output=True)
  folder_source = sources.ImageFolderSource(corrupt_folder, "train", skip_corrupt=True)
  records = sources.build_source(_data_cfg(source="records", root=out, wnids=""), "train")
  assert sorted(os.listdir(out)) == ["train-%05d-of-00005.array_record" % k
                                     for k in range(5)] + ["train.json"]
  assert len(records) == len(folder_source) and records.class_names == folder_source.class_names
  np.testing.assert_array_equal(records.labels, folder_source.labels)
  with open(os.path.join(out, "train.json")) as f:
    assert json.load(f)["num_skipped"] == 1
  for i in range(len(records)):
    a, b = records[i], folder_source[i]
    assert a["id"] == b["id"] == i and a["label"] == b["label"]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert records.encoded(i) == folder_source.encoded(i)
  with pytest.raises(ValueError, match="wnids"):
    sources.build_source(_data_cfg(source="records", root=out, wnids="imagenet100"), "train")
  with pytest.raises(FileNotFoundError, match=r"data\.root"):
    sources.build_source(_data_cfg(source="records", root=out), "val")


def test_prepare_tfds_restricted(tfds_dir, tmp_path):
  out = str(tmp_path / "records")
  prepare.main(["--source", "tfds", "--name", "rrjax_test_images", "--root", tfds_dir,
                "--split", "validation", "--out", out, "--num_shards", "2"])
  records = sources.RecordSource(out, "validation")
  tfds_source = sources.TfdsSource("rrjax_test_images", "validation", data_dir=tfds_dir)
  assert len(records) == len(TFDS_LABELS)
  for i in range(len(records)):
    np.testing.assert_array_equal(records[i]["image"], tfds_source[i]["image"])
    assert records[i]["label"] == tfds_source[i]["label"] and records[i]["id"] == i


def test_shard_ranges_and_build_source_errors():
  assert prepare.shard_ranges(7, 3) == [(0, 2), (2, 4), (4, 7)]
  with pytest.raises(ValueError, match="data.source"):
    sources.build_source(_data_cfg(source="hdf5"), "train")
  with pytest.raises(ValueError, match="data.name"):
    sources.build_source(_data_cfg(source="tfds", name=""), "train")


def test_imagenet_label_names_cover_the_wnid_lists():
  """The wnid restriction of the real tfds ImageNet datasets finds every class."""
  needed = (set(sources.load_wnids("imagenet100")) | set(sources.load_wnids("imagenet100b"))
            | set(sources.OUT_OF_CLASS_RELABEL))
  for name in ("imagenet2012", "imagenet2012_corrupted/gaussian_noise_3"):
    assert needed <= set(tfds.builder(name).info.features["label"].names)


def test_grayscale_and_palette_files_become_rgb(tmp_path):
  class_dir = tmp_path / "train" / "xray"
  class_dir.mkdir(parents=True)
  gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
  Image.fromarray(gray, mode="L").save(class_dir / "a.png")
  Image.fromarray(np.stack([gray] * 3, -1)).convert("P").save(class_dir / "b.png")
  (class_dir / "notes.txt").write_text("not an image")
  source = sources.ImageFolderSource(str(tmp_path), "train")
  assert len(source) == 2
  np.testing.assert_array_equal(source[0]["image"], np.stack([gray] * 3, -1))
  assert source[1]["image"].shape == (5, 7, 3) and source[1]["image"].dtype == np.uint8


def test_prepare_shorter_side_shrinks_large_images_and_names_itself(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / "folder" / "train" / "c"
  folder.mkdir(parents=True)
  shapes = [(60, 90), (90, 48), (20, 30)]  # The last is already small: copied as it is.
  for i, (h, w) in enumerate(shapes):
    image = (rng.random((h, w, 3)) * 4 + np.linspace(0, 200, w)[None, :, None])
    Image.fromarray(image.astype(np.uint8)).save(folder / f"{i}.jpg", quality=95)
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "3.png")
  folder_source = sources.ImageFolderSource(str(tmp_path / "folder"), "train")
  out = str(tmp_path / "records")
  prepare.main(["--source", "folder", "--root", str(tmp_path / "folder"), "--split", "train",
                "--out", out, "--shorter_side", "32", "--quality", "97"])
  records = sources.RecordSource(out, "train")
  assert records.preparation == {"shorter_side": 32, "quality": 97}
  assert [records[i]["image"].shape[:2] for i in range(4)] == [(32, 48), (60, 32), (20, 30),
                                                              (32, 32)]
  assert records.encoded(2) == folder_source.encoded(2)
  assert Image.open(io.BytesIO(records.encoded(3))).format == "PNG"
  # The evaluation protocol's own first step, up to the JPEG re-encoding.
  resized = Image.open(folder_source.files[0]).resize((48, 32), Image.BILINEAR)
  assert np.abs(records[0]["image"].astype(float) - np.asarray(resized)).mean() < 2.0
  plain = sources.RecordSource(
      prepare.write_records(folder_source, str(tmp_path / "plain"), "train").rsplit("/", 1)[0],
      "train")
  assert plain.preparation == {"shorter_side": 0, "quality": None}
  with pytest.raises(ValueError, match="--shorter_side"):
    prepare.write_records(folder_source, str(tmp_path / "bad"), "train", shorter_side=-1)


def test_folders_use_their_own_classes_and_imagenet_wnids_on_them_say_how(folder):
  """data.wnids="auto" (the default) uses a folder's own classes; "imagenet100" on a
  folder of other classes gets the fix, not a list of 100 missing wnids."""
  assert sources.build_source(_data_cfg(source="folder", root=folder),
                              "train").num_classes == NUM_CLASSES
  assert sources.class_list(_data_cfg(source="tfds", name="imagenet2012")) == (
      sources.load_wnids("imagenet100"))
  assert sources.class_list(_data_cfg(source="tfds", name="cifar10")) is None
  with pytest.raises(ValueError) as error:
    sources.build_source(_data_cfg(source="folder", root=folder, wnids="imagenet100"),
                         "train")
  message = str(error.value)
  assert "data.wnids='imagenet100'" in message and "not wnids" in message
  assert "class_000, class_001, class_002" in message
  assert "--config.data.wnids=''" in message and "missing" not in message
  source = sources.build_source(_data_cfg(source="folder", root=folder, wnids=""), "train")
  assert source.num_classes == NUM_CLASSES


def test_imagenet_folder_missing_classes_names_the_first_missing(tmp_path):
  """A folder of wnid directories that lacks some of data.wnids: an ImageNet folder with
  classes missing, named, in wnid order."""
  wnids = sources.load_wnids("imagenet100")
  present = sorted(wnids)[3:]
  root = synthetic.make_image_folder(str(tmp_path), num_classes=len(present), per_class=1,
                                     size=4, splits=("train",), class_names=present,
                                     image_format="png")
  with pytest.raises(FileNotFoundError) as error:
    sources.build_source(_data_cfg(source="folder", root=root, wnids="imagenet100"), "train")
  message = str(error.value)
  assert "3 of the 100 class directories" in message and "data.wnids" in message
  assert str(sorted(wnids)[:3]) in message and "--config.data.wnids=''" not in message

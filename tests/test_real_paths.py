"""The download paths a real run takes, offline: CLIP teachers by hub id from a Hugging Face
cache laid out as huggingface_hub lays it out, and tfds data sets by their real names
(the configs' own data settings) through `tfds.data_source` under `tfds.testing.mock_data`.
"""

import hashlib
import logging
import os
import subprocess
import sys

import huggingface_hub
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from rrjax import config as config_lib
from rrjax.data import sources
from rrjax.models import clip
from rrjax.teachers.clip import CLIPTeacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT_ID = "rrjax-test/tiny-clip-vit"  # Shaped like openai/clip-vit-base-patch32.
RN_ID = "rrjax-test/tiny-clip-rn"    # Shaped like timm/resnet101_clip.openai.
PARTIAL_ID = "rrjax-test/configs-only"  # `hf download VIT_ID config.json ...`: no weights.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".msgpack")


def _commit(repo_id):
  return hashlib.sha1(repo_id.encode()).hexdigest()


def add_to_hf_cache(cache_dir, repo_id, files_dir):
  """Lays out `files_dir`'s files as huggingface_hub's cache holds a downloaded repo
  (huggingface_hub/file_download.py, `hf_hub_download`): `models--<org>--<name>/` with
  `blobs/<etag>` (sha256 for LFS files such as weights, the git blob sha1 otherwise),
  `snapshots/<commit>/<file>` relative symlinks to the blobs, and `refs/main` holding the
  commit (no newline). Returns the snapshot directory."""
  repo = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
  commit = _commit(repo_id)
  snapshot = os.path.join(repo, "snapshots", commit)
  os.makedirs(os.path.join(repo, "blobs"))
  os.makedirs(os.path.join(repo, "refs"))
  os.makedirs(snapshot)
  for name in sorted(os.listdir(files_dir)):
    with open(os.path.join(files_dir, name), "rb") as f:
      data = f.read()
    etag = (hashlib.sha256(data).hexdigest() if name.endswith(WEIGHT_SUFFIXES) else
            hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
    with open(os.path.join(repo, "blobs", etag), "wb") as f:
      f.write(data)
    os.symlink(os.path.join("..", "..", "blobs", etag), os.path.join(snapshot, name))
  with open(os.path.join(repo, "refs", "main"), "w") as f:
    f.write(commit)
  return snapshot


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
  """An HF_HOME whose hub cache holds a tiny ViT CLIP in the transformers layout and a tiny
  ModifiedResNet CLIP in the open_clip layout (plus the timm `config.json` that timm's
  CLIP repos also carry, which is not a CLIP config), and the ViT's configs alone (a
  partial download); returns (HF_HOME, local dirs)."""
  base = tmp_path_factory.mktemp("hub")
  local = {VIT_ID: clip.create_tiny_clip(str(base / "vit"), vision="vit", layout="hf"),
           RN_ID: clip.create_tiny_clip(str(base / "rn"), vision="resnet", layout="open_clip")}
  with open(os.path.join(local[RN_ID], "config.json"), "w") as f:
    f.write('{"architecture": "resnet50_clip", "num_classes": 16, "pretrained_cfg": {}}')
  os.makedirs(base / "partial")
  for name in ("config.json", "preprocessor_config.json"):
    os.symlink(os.path.join(local[VIT_ID], name), base / "partial" / name)
  home = base / "hf_home"
  for repo_id, directory in [*local.items(), (PARTIAL_ID, str(base / "partial"))]:
    add_to_hf_cache(str(home / "hub"), repo_id, directory)
  return str(home), local


@pytest.fixture
def offline_cache(hf_cache, monkeypatch):
  """HF_HOME pointed at the test cache, offline. huggingface_hub reads these variables
  once, when it is imported, so its constants are set as a fresh process would have them."""
  home, local = hf_cache
  monkeypatch.setenv("HF_HOME", home)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", os.path.join(home, "hub"))
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  return local


@pytest.mark.parametrize("repo_id,layout", [(VIT_ID, "hf"), (RN_ID, "open_clip")])
def test_clip_teacher_from_a_hub_id_in_the_cache_is_the_local_checkpoint(offline_cache,
                                                                         repo_id, layout):
  teacher = CLIPTeacher(repo_id)
  direct = CLIPTeacher(offline_cache[repo_id])
  assert teacher.checkpoint.layout == direct.checkpoint.layout == layout
  assert teacher.checkpoint.identity() == {"hub_id": repo_id, "commit": _commit(repo_id)}
  assert teacher.fingerprint != direct.fingerprint  # The hub commit, not the local files.
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  np.testing.assert_array_equal(teacher.embed(images), direct.embed(images))
  if layout == "hf":  # Its own tokenizer files, read from the snapshot.
    np.testing.assert_array_equal(teacher.embed_text(["a photo of a tench."]),
                                  direct.embed_text(["a photo of a tench."]))


def test_hub_id_missing_from_the_cache_offline_is_a_short_error_before_any_compile(
    offline_cache, caplog):
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    with pytest.raises(FileNotFoundError) as error:
      CLIPTeacher("rrjax-test/not-downloaded")
  message = str(error.value)
  assert "'rrjax-test/not-downloaded'" in message and "cache" in message
  assert "hf download rrjax-test/not-downloaded" in message and "local directory" in message
  assert len(message) < 400 and "not a CLIP checkpoint" not in message
  assert not [r.getMessage() for r in caplog.records if r.name.startswith("jax")]  # No jit.


def test_hub_id_cached_without_its_weights_offline_names_them(offline_cache):
  with pytest.raises(FileNotFoundError, match=r"'rrjax-test/configs-only': no hf CLIP weights "
                     r"found \(model.safetensors, .*local Hugging Face cache"):
    CLIPTeacher(PARTIAL_ID)


def test_hf_home_of_a_fresh_process_finds_the_cached_files(hf_cache):
  """The environment variables themselves, read by huggingface_hub at import."""
  home, _ = hf_cache
  script = ("from rrjax import hub; p = hub.find_file(%r, 'config.json'); "
            "print(p); print(hub.identity(%r, [p]))" % (VIT_ID, VIT_ID))
  env = dict(os.environ, HF_HOME=home, HF_HUB_OFFLINE="1", PYTHONPATH=REPO)
  env.pop("HF_HUB_CACHE", None)
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       check=True, timeout=60).stdout.splitlines()
  snapshot = os.path.join(home, "hub", "models--rrjax-test--tiny-clip-vit", "snapshots",
                          _commit(VIT_ID))
  assert out == [os.path.join(snapshot, "config.json"),
                 str({"hub_id": VIT_ID, "commit": _commit(VIT_ID)})]


# tfds.testing.mock_data (tensorflow-datasets 4.9.10) mocks `tfds.data_source` by
# replacing the array_record reader with a MagicMock, with two gaps rrjax's label scan
# (`TfdsSource._scan_labels`: batched `__getitems__` reads with image decoding skipped)
# falls into:
# 1. it sets `__getitems__` on the MagicMock instance, where Python does not bind it to
#    the instance, so every batched read fails with "_getitems() missing 1 required
#    positional argument: 'record_keys'" (only `__getitem__`, a magic method MagicMock
#    supports, works);
# 2. with a decoder (`SkipDecoding`) it serves encoded examples, encoding the random
#    images with TensorFlow, which rrjax does not need and does not install.
# `_unbound_getitems` fills both: the same random examples (seeded by index, as
# `__getitem__` serves them), unencoded; the scan reads only their labels.
def _unbound_getitems(record_keys, generator, serialized=False):
  assert not serialized
  return [mocking.RandomFakeGenerator.__getitem__(generator, k) for k in record_keys]


NUM_EXAMPLES = 120  # ImageNet-100 is a tenth of imagenet2012: about 12 of them stay.


@pytest.fixture
def mock_tfds(monkeypatch):
  """Real builders (names, features, label names), random examples. USE_CODE: the dataset
  info comes from the builder code (this tfds ships no metadata files, so AUTO would do
  the same); split names are then not checked."""
  monkeypatch.setattr(mocking, "_getitems", _unbound_getitems)
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def _data_config(config_arg):
  return config_lib.load_config(os.path.join(REPO, "configs", config_arg)).data


def _check_examples(source, indices):
  for i in indices:
    example = source[i]
    image = example["image"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert min(image.shape[:2]) >= 1 and example["id"] == i
    assert 0 <= example["label"] < source.num_classes and example["label"] == source.labels[i]


@pytest.mark.parametrize("config_arg,name,split,num_classes", [
    ("quickstart.py", "imagenette", "validation", 10),
    ("transfer.py:dataset=cifar10", "cifar10", "test", 10),
])
def test_tfds_datasets_of_the_configs_by_their_real_names(mock_tfds, config_arg, name, split,
                                                          num_classes):
  data = _data_config(config_arg)
  assert (data.source, data.name, data.wnids) == ("tfds", name, "")
  source = sources.build_source(data, split)
  assert len(source) == NUM_EXAMPLES and source.num_classes == num_classes
  assert source.labels.shape == (NUM_EXAMPLES,)
  assert np.all((source.labels >= 0) & (source.labels < num_classes))
  _check_examples(source, (0, NUM_EXAMPLES - 1))
  if name == "imagenette":  # Its labels are wnids, which zero-shot turns into CLIP's names.
    assert all(sources.WNID_PATTERN.fullmatch(c) for c in source.class_names)


def test_imagenet2012_restricted_to_imagenet100(mock_tfds):
  """configs/mask.py's data: imagenet2012 with data.wnids='auto' (ImageNet-100 for it)
  keeps exactly the examples of those 100 classes, relabelled by their position."""
  data = _data_config("mask.py")
  assert (data.name, data.wnids) == ("imagenet2012", "auto")
  assert sources.class_list(data) == sources.load_wnids("imagenet100")
  restricted = sources.build_source(data, "validation")
  full = sources.TfdsSource("imagenet2012", "validation")
  wnids = sources.load_wnids("imagenet100")
  assert full.num_classes == 1000 and restricted.class_names == wnids
  in_100 = [i for i in range(NUM_EXAMPLES) if full.class_names[full.labels[i]] in wnids]
  assert len(restricted) == len(in_100) > 0
  for i, original in enumerate(in_100):
    assert restricted.labels[i] == wnids.index(full.class_names[full.labels[original]])
  _check_examples(restricted, range(len(restricted)))
  np.testing.assert_array_equal(restricted[0]["image"], full[in_100[0]]["image"])

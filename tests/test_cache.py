"""Teacher-embedding cache: build, resume, fingerprints, hosts/devices, object stores."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rrjax import config as config_lib
from rrjax import in_flight, preemption, sharding
from rrjax.cache import (TeacherCache, build, build_cache, cache_fingerprint, from_config,
                         store, verify_cache)
from rrjax.data import prepare, sources
from rrjax.data.pipeline import TrainLoader
from rrjax.data.synthetic import make_image_folder
from rrjax.data.views import ViewSpec
from support import in_flight_spy

# Numerically sensitive: sharded and multi-host builds against single-device ones.
# .ci/run runs these tests again with XLA's CPU code capped at AVX.
pytestmark = pytest.mark.numerics


IMAGE_SIZE = 16
VIEW_SPEC = ViewSpec(size=IMAGE_SIZE, resize_size=18)
NUM_EXAMPLES = 20
VIEWS = (1, 2)
BATCH = 16  # 40 images: chunks of 16 and 4 rows; the last batch of each chunk is padded.


class LinearTeacher:
  """A plug-in teacher: 4x4 average pooling then a fixed random projection (in jnp)."""
  image_size = IMAGE_SIZE
  dim = 8

  def __init__(self, seed=0):
    self.fingerprint = f"linear-teacher-{seed}"
    self.params = {"w": jnp.asarray(np.random.default_rng(seed).normal(
        size=(4 * 4 * 3, self.dim)), jnp.float32)}

  @staticmethod
  def apply(params, images):
    x = images.astype(jnp.float32) / 255.0
    b, s = x.shape[0], x.shape[1]
    pooled = x.reshape(b, 4, s // 4, 4, s // 4, 3).mean(axis=(2, 4)).reshape(b, -1)
    return pooled @ params["w"]

  def embed(self, images):
    return self.apply(self.params, jnp.asarray(images))


def linear_teacher_factory(cfg):
  """`teacher.factory = "test_cache:linear_teacher_factory"` (tests/ on PYTHONPATH)."""
  del cfg
  return LinearTeacher()


class EmbedOnlyTeacher:
  """A plug-in with `embed` only (no params/apply): called as it is, in numpy."""
  image_size, dim, fingerprint = IMAGE_SIZE, 3, "mean-colour"

  def embed(self, images):
    return np.asarray(images, np.float32).mean(axis=(1, 2))


class ListSource:
  """A tiny random-access source of random images of varying sizes."""

  def __init__(self, n=NUM_EXAMPLES, seed=0):
    rng = np.random.default_rng(seed)
    self.images = [rng.integers(0, 256, size=(int(rng.integers(18, 28)),
                                              int(rng.integers(18, 28)), 3), dtype=np.uint8)
                   for _ in range(n)]

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": i % 2, "id": i}


def _build(teacher, source, path, **overrides):
  kwargs = dict(view_spec=VIEW_SPEC, views=VIEWS, seed=0, batch_size=BATCH,
                dataset={"name": "list", "split": "test"}, num_workers=0)
  kwargs.update(overrides)
  return build_cache(teacher, source, str(path), **kwargs)


def _fingerprint(teacher, source, **overrides):
  kwargs = dict(dataset={"name": "list", "split": "test"}, num_examples=len(source),
                preprocessing=VIEW_SPEC.as_dict(), seed=0, views=VIEWS, dtype="float16")
  kwargs.update(overrides)
  return cache_fingerprint(teacher, **kwargs)


@pytest.fixture(scope="module")
def teacher():
  return LinearTeacher()


@pytest.fixture(scope="module")
def source():
  return ListSource()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, teacher, source):
  """One uninterrupted single-process build on all 8 devices."""
  path = tmp_path_factory.mktemp("reference") / "cache"
  report = _build(teacher, source, path)
  return path, report


def _expected_embeddings(teacher, source, views, seed=0):
  """Independent reference: every view cut now and embedded one image at a time."""
  return np.stack([[np.asarray(teacher.embed(VIEW_SPEC(source[i]["image"], seed=seed,
                                                       example_id=i, view_index=v)[None]))[0]
                    for v in views] for i in range(len(source))])


def test_cached_embeddings_are_the_teacher_on_the_views(reference, teacher, source):
  """The student's crop is exactly the crop the teacher embedded: cache == R(view) now."""
  path, report = reference
  assert (report.chunks_computed, report.images_computed) == (2, NUM_EXAMPLES * len(VIEWS))
  cache = TeacherCache.open(str(path), _fingerprint(teacher, source))
  assert (cache.num_examples, cache.dim, cache.views, cache.is_complete) == (
      NUM_EXAMPLES, teacher.dim, VIEWS, True)
  expected = _expected_embeddings(teacher, source, VIEWS)
  stored = cache.to_numpy()
  assert stored.dtype == np.float16 and stored.shape == (NUM_EXAMPLES, len(VIEWS), 8)
  np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=1e-3, atol=1e-3)
  ids = np.array([19, 0, 7, 7])
  views = np.array([2, 1, 1, 2])
  np.testing.assert_array_equal(
      cache.lookup(ids, views), stored[ids, views - 1].astype(np.float32))
  np.testing.assert_array_equal(cache.lookup([3, 4], 2), stored[[3, 4], 1].astype(np.float32))
  # Different views of one example are different crops, hence different embeddings.
  assert not np.allclose(expected[:, 0], expected[:, 1])


def test_lookup_rejects_unknown_views_and_ids(reference):
  cache = TeacherCache.open(str(reference[0]))
  with pytest.raises(ValueError, match=r"views \[0\] are not in the cache"):
    cache.lookup([1], 0)
  with pytest.raises(ValueError, match=r"must be in \[0, 20\)"):
    cache.lookup([20], 1)


def test_lookups_from_memory_equal_lookups_from_the_store(reference):
  stored = TeacherCache.open(str(reference[0]))
  resident = TeacherCache.open(str(reference[0]))
  assert not resident.keep_in_memory(resident.nbytes - 1)  # Over the budget: stays put.
  assert resident.keep_in_memory(resident.nbytes)
  ids = np.array([19, 0, 7, 7, 12, 3])
  views = np.array([2, 1, 1, 2, 2, 1])
  got = resident.lookup(ids, views)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, stored.lookup(ids, views))
  np.testing.assert_array_equal(resident.lookup([3, 4], 2), stored.lookup([3, 4], 2))
  with pytest.raises(ValueError, match=r"views \[0\] are not in the cache"):
    resident.lookup([1], 0)


def test_rebuilding_a_finished_cache_computes_nothing(reference, teacher, source):
  report = _build(teacher, source, reference[0])
  assert (report.chunks_already_done, report.chunks_computed, report.images_computed) == (
      2, 0, 0)


def test_fingerprint_mismatch_is_refused(reference, teacher, source, tmp_path):
  path = str(reference[0])
  with pytest.raises(ValueError) as error:
    TeacherCache.open(path, _fingerprint(teacher, source, seed=1))
  message = str(error.value)
  assert "seed: cache has 0, expected 1" in message and "python -m rrjax.cache build" in message
  assert "teacher:" not in message  # Only the differing keys are listed.
  with pytest.raises(ValueError, match=r"preprocessing.size: cache has 16, expected 12"):
    TeacherCache.open(path, _fingerprint(
        teacher, source, preprocessing={**VIEW_SPEC.as_dict(), "size": 12}))
  with pytest.raises(ValueError, match=r"teacher: cache has 'linear-teacher-0', expected "
                                       r"'linear-teacher-1'"):
    TeacherCache.open(path, _fingerprint(LinearTeacher(seed=1), source))
  # Building into a directory holding another configuration's cache never overwrites it...
  with pytest.raises(ValueError, match=r"(?s)seed: cache has 0, expected 1.*Refusing"):
    _build(teacher, source, path, seed=1)
  assert TeacherCache.open(path).fingerprint["seed"] == 0
  # ...unless asked to.
  copy = tmp_path / "copy"
  _build(teacher, source, copy, views=(0,))
  _build(teacher, source, copy, seed=1, overwrite=True)
  replaced = TeacherCache.open(str(copy), _fingerprint(teacher, source, seed=1))
  np.testing.assert_allclose(replaced.to_numpy().astype(np.float32),
                             _expected_embeddings(teacher, source, VIEWS, seed=1),
                             rtol=1e-3, atol=1e-3)


def test_two_hosts_give_the_same_cache_as_one(reference, teacher, source, tmp_path):
  path = tmp_path / "two_hosts"
  first = _build(teacher, source, path, process_index=1, process_count=2, chunk_rows=4)
  assert (first.chunks_this_process, first.chunks_computed) == (2, 2)  # chunks 1 and 3
  with pytest.raises(ValueError, match=r"incomplete: 12 of 20 examples \(3 of 5 chunks\)"):
    TeacherCache.open(str(path))
  partial = TeacherCache.open(str(path), require_complete=False)
  np.testing.assert_array_equal(partial.finished_ids(), [4, 5, 6, 7, 12, 13, 14, 15])
  with pytest.raises(ValueError, match="not finished"):
    partial.lookup([0], 1)
  second = _build(teacher, source, path, process_index=0, process_count=2)
  assert second.chunks_computed == 3
  expected = TeacherCache.open(str(reference[0])).to_numpy()
  np.testing.assert_array_equal(TeacherCache.open(str(path)).to_numpy(), expected)
  # The same two hosts at the same time, racing to create the cache.
  concurrent_path = tmp_path / "two_hosts_at_once"
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    reports = list(pool.map(lambda p: _build(teacher, source, concurrent_path, process_index=p,
                                             process_count=2), [0, 1]))
  assert [r.chunks_computed for r in reports] == [1, 1]
  np.testing.assert_array_equal(TeacherCache.open(str(concurrent_path)).to_numpy(), expected)


def test_sharded_build_equals_single_device_build(reference, teacher, source, tmp_path):
  path = tmp_path / "one_device"
  _build(teacher, source, path, mesh=sharding.make_mesh(jax.devices()[:1]))
  one = TeacherCache.open(str(path)).to_numpy().astype(np.float32)
  eight = TeacherCache.open(str(reference[0])).to_numpy().astype(np.float32)
  # Equal up to float16 rounding of float32 results that may differ in the last bits.
  np.testing.assert_allclose(one, eight, rtol=2 ** -10, atol=0)


def test_embeddings_in_flight_give_the_one_at_a_time_cache(teacher, source, tmp_path,
                                                           monkeypatch):
  """Several batches embedded ahead of the write (the default; no collectives, so on CPU
  too) and one batch at a time give the same cache, bit for bit."""
  depths = in_flight_spy.record_depths(monkeypatch)
  _build(teacher, source, tmp_path / "ahead", prefetch=2)
  monkeypatch.setattr(in_flight, "default_depth", lambda *, collectives: 1)
  _build(teacher, source, tmp_path / "one_at_a_time", prefetch=2)
  # Each build: the device loop, then the view cutting it pulls from (prefetch + 1).
  assert depths == [in_flight.ACCELERATOR_DEPTH, 3, 1, 3]
  np.testing.assert_array_equal(TeacherCache.open(str(tmp_path / "ahead")).to_numpy(),
                                TeacherCache.open(str(tmp_path / "one_at_a_time")).to_numpy())


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_storage_dtypes_and_object_store_paths(teacher, source, dtype):
  """A tensorstore kvstore URL (memory:// here, gs:// or s3:// in the cloud) works too."""
  path = f"memory://rrjax-test-{dtype}/cache"
  _build(teacher, source, path, dtype=dtype, views=(0, 3))
  cache = TeacherCache.open(path, _fingerprint(teacher, source, dtype=dtype, views=(0, 3)))
  stored = cache.to_numpy()
  assert stored.dtype == store.DTYPES[dtype]
  expected = _expected_embeddings(teacher, source, (0, 3))
  tolerance = 2 ** -7 if dtype == "bfloat16" else 1e-5
  np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=tolerance, atol=1e-5)


def test_embed_only_plugins_are_called_as_they_are(source, tmp_path):
  plugin = EmbedOnlyTeacher()
  _build(plugin, source, tmp_path / "plugin", views=(0,), batch_size=6)
  cache = TeacherCache.open(str(tmp_path / "plugin"))
  expected = _expected_embeddings(plugin, source, (0,))[:, 0]
  np.testing.assert_allclose(cache.lookup(np.arange(NUM_EXAMPLES), 0), expected, rtol=1e-3)


def test_bad_arguments_fail_before_any_work(teacher, source, tmp_path):
  path = tmp_path / "bad"
  with pytest.raises(ValueError, match="cache.batch_size=12 must be a positive multiple of"):
    _build(teacher, source, path, batch_size=12)
  with pytest.raises(ValueError, match="data.image_size=12 but the teacher takes 16x16"):
    _build(teacher, source, path, view_spec=ViewSpec(size=12, resize_size=14))
  with pytest.raises(ValueError, match="strictly increasing"):
    _build(teacher, source, path, views=(2, 1))
  with pytest.raises(ValueError, match="cache.dtype='int8' must be one of"):
    _build(teacher, source, path, dtype="int8")
  other = build.TeacherForward(LinearTeacher(seed=1), sharding.make_mesh())
  with pytest.raises(ValueError, match="forward must be a TeacherForward of this teacher"):
    _build(teacher, source, path, forward=other)
  assert not path.exists()
  with pytest.raises(FileNotFoundError, match="No teacher cache at"):
    TeacherCache.open(str(path))


def test_verify_detects_a_wrong_cache(reference, teacher, source):
  cache = TeacherCache.open(str(reference[0]))
  good = verify_cache(cache, teacher, source, view_spec=VIEW_SPEC, seed=0, num_samples=8)
  assert good["ok"] and good["num_checked"] == 8 and good["max_abs_diff"] < good["tolerance"]
  wrong_seed = verify_cache(cache, teacher, source, view_spec=VIEW_SPEC, seed=5,
                            num_samples=8)
  assert not wrong_seed["ok"]


# ---------------------------------------------------------------------------------------
# Configs, the command line and real teachers/sources.

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)
CONFIG_TEMPLATE = """
from rrjax.config import base_config


def get_config():
  c = base_config()
  c.data.source, c.data.name, c.data.root, c.data.wnids = "folder", "synthetic", {root!r}, ""
  c.data.image_size, c.data.resize_size, c.data.num_workers = {size}, {size} + 2, 2
  c.teacher.kind, c.teacher.name, c.teacher.factory = {kind!r}, {name!r}, {factory!r}
  c.cache.path, c.cache.num_views, c.cache.batch_size = {cache!r}, 2, 8
  return c
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """20 training images (2 classes x 10), 24..40 pixels a side."""
  root = tmp_path_factory.mktemp("folder")
  return str(make_image_folder(str(root), num_classes=2, per_class=10, splits=("train",),
                               size=32, seed=0))


def _write_config(directory, folder, cache, *, kind="python", name="",
                  factory="test_cache:linear_teacher_factory", size=IMAGE_SIZE):
  path = os.path.join(directory, "cache_config.py")
  with open(path, "w") as f:
    f.write(CONFIG_TEMPLATE.format(root=folder, size=size, kind=kind, name=name,
                                   factory=factory, cache=str(cache)))
  return path


def _load_config(path):
  return config_lib.load_config(str(path))


def _cli(command, config_file, *extra, env=None, **popen):
  args = [sys.executable, "-m", "rrjax.cache", command, f"--config={config_file}", *extra]
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, REPO_DIR]), **(env or {})}
  return subprocess.Popen(args, cwd=REPO_DIR, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, **popen)


def _last_json(output):
  return json.loads(output.strip().splitlines()[-1])


def _files(directory):
  """{relative path: bytes} of every file under `directory`."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        out[os.path.relpath(os.path.join(root, name), directory)] = f.read()
  return out


def test_killed_build_resumes_to_an_identical_cache(folder, tmp_path):
  """SIGKILL the builder after chunk 1's data is written but before it is marked done;
  the rerun recomputes exactly the unfinished chunks and gives the uninterrupted cache."""
  config_file = _write_config(tmp_path, folder, tmp_path / "caches")
  config = _load_config(config_file)
  path = from_config.cache_path(config, "", "train", "train")
  proc = _cli("build", config_file, env={build.HANG_ENV: "1"})
  watchdog = threading.Timer(120, proc.kill)  # Never let a stuck builder hang the tests.
  watchdog.start()
  output = []
  for line in proc.stdout:  # Ends at EOF if the builder exits instead of hanging.
    output.append(line)
    if build.HANG_MESSAGE in line:
      break
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  watchdog.cancel()
  assert build.HANG_MESSAGE in "".join(output), "".join(output)
  # 20 examples in chunks of 8: chunk 0 done, chunk 1 written but not marked.
  assert sorted(os.listdir(os.path.join(path, "done"))) == ["00000000"]
  assert os.path.exists(os.path.join(path, "embeddings", "c", "1", "0", "0"))

  inspect = _cli("inspect", "", f"--path={path}")
  state = _last_json(inspect.communicate(timeout=120)[0])
  assert (state["complete"], state["chunks_done"], state["num_chunks"],
          state["rows_remaining"]) == (False, 1, 3, 12)
  with pytest.raises(ValueError, match=r"(?s)incomplete: 12 of 20 examples.*"
                                       r"rrjax.cache build --config=<your config> --split=train`"):
    from_config.open_cache(config, "", LinearTeacher(),
                           sources.build_source(config.data, "train"), split="train")

  resumed = _cli("build", config_file)
  out = resumed.communicate(timeout=300)[0]
  assert resumed.returncode == 0, out
  report = _last_json(out)
  assert (report["chunks_already_done"], report["chunks_computed"],
          report["images_computed"]) == (1, 2, 12 * 2)

  config.cache.path = str(tmp_path / "uninterrupted")
  teacher, source = LinearTeacher(), sources.build_source(config.data, "train")
  from_config.build_from_config(config, "", teacher, source, split="train")
  reference = from_config.cache_path(config, "", "train", "train")
  resumed_files, reference_files = _files(path), _files(reference)
  assert sorted(resumed_files) == sorted(reference_files)
  for name in reference_files:
    assert resumed_files[name] == reference_files[name], name

  verify = _cli("verify", config_file, "--num_samples=10")
  out = verify.communicate(timeout=300)[0]
  assert verify.returncode == 0, out
  result = _last_json(out)
  assert result["ok"] and result["num_checked"] == 10


def test_config_fingerprint_names_what_changed(folder, tmp_path):
  config = _load_config(_write_config(tmp_path, folder, tmp_path / "caches"))
  teacher, source = LinearTeacher(), sources.build_source(config.data, "train")
  from_config.build_from_config(config, "", teacher, source, split="train", view_set="eval")
  cache = from_config.open_cache(config, "", teacher, source, split="train", view_set="eval")
  assert cache.views == (0,) and cache.fingerprint["dataset.root"] == folder
  assert store.build_hint(cache.fingerprint) == (
      "python -m rrjax.cache build --config=<your config> --split=train --views=eval")
  with pytest.raises(FileNotFoundError, match="No teacher cache"):  # train views not built
    from_config.open_cache(config, "", teacher, source, split="train")
  config.data.crop_scale = (0.5, 1.0)
  with pytest.raises(ValueError, match=r"preprocessing.scale: cache has \[0.08, 1.0\], "
                                       r"expected \[0.5, 1.0\]"):
    from_config.open_cache(config, "", teacher, source, split="train", view_set="eval")
  config.data.crop_scale = (0.08, 1.0)
  config.cache.dtype = "bfloat16"
  with pytest.raises(ValueError, match=r"dtype: cache has 'float16', expected 'bfloat16'"):
    from_config.open_cache(config, "", teacher, source, split="train", view_set="eval")
  # An image folder is identified by its file list too: one more file, another data set.
  extra = os.path.join(folder, "train", "class_000", "000099.jpg")
  os.link(os.path.join(folder, "train", "class_000", "000000.jpg"), extra)
  try:
    grown = sources.build_source(config.data, "train")
    assert (from_config.dataset_identity(config.data, "train", grown)["files_sha256"] !=
            cache.fingerprint["dataset.files_sha256"])
  finally:
    os.remove(extra)
  config.cache.path = ""
  assert from_config.cache_path(config, "/work/dir", "val", "eval") == (
      "/work/dir/teacher_cache/val/eval_views")
  with pytest.raises(ValueError, match="cache.path is empty and no workdir"):
    from_config.cache_path(config, "", "val", "eval")


def test_tiny_clip_cache_is_the_online_teacher_on_the_loader_crops(folder, tmp_path):
  """Online mode == cached mode: for the crops the training loader hands the student,
  the cached targets equal the teacher applied to those crops now (float16 rounding)."""
  from rrjax.teachers import build_teacher
  from rrjax.models.clip import create_tiny_clip
  clip = create_tiny_clip(str(tmp_path / "clip"), image_size=32)
  config = _load_config(_write_config(tmp_path, folder, tmp_path / "caches", kind="clip",
                                      name=clip, factory="", size=32))
  config.teacher.mode = "online"
  teacher, source = build_teacher(config.teacher), sources.build_source(config.data, "train")
  from_config.build_from_config(config, "", teacher, source, split="train")
  cache = from_config.open_cache(config, "", teacher, source, split="train")
  loader = TrainLoader(source, global_batch_size=8, view=ViewSpec.from_config(config.data),
                       num_views=config.cache.num_views, seed=config.seed, num_workers=2)
  try:
    for _ in range(2):
      batch = next(loader)
      online = np.asarray(teacher.embed(batch["image"]))
      cached = cache.lookup(batch["id"], batch["view"])
      scale = np.abs(online).max()
      np.testing.assert_allclose(cached, online, rtol=0, atol=2 ** -10 * scale)
  finally:
    loader.close()


def test_records_preparation_enters_the_dataset_identity(tmp_path):
  """Records of smaller stored images give other views: another cache fingerprint."""
  root = make_image_folder(str(tmp_path / "folder"), num_classes=2, per_class=2,
                                     size=40, seed=0, splits=("train",))
  folder = sources.ImageFolderSource(root, "train")
  identities = []
  for shorter_side in (0, 24):
    out = str(tmp_path / "records")  # The same data.root both times.
    prepare.write_records(folder, out, "train", shorter_side=shorter_side)
    data = config_lib.base_config().data
    data.update(dict(source="records", root=out, wnids=""))
    identities.append(from_config.dataset_identity(data, "train",
                                                   sources.RecordSource(out, "train")))
  assert identities[0] != identities[1]
  assert identities[1]["preparation"]["shorter_side"] == 24


class SignallingSource(ListSource):
  """Sends this process SIGTERM when example `at` is read (num_workers=0: the reads
  run in the builder's thread, between its batches)."""

  def __init__(self, at):
    super().__init__()
    self.at = at

  def __getitem__(self, i):
    if i == self.at:
      os.kill(os.getpid(), signal.SIGTERM)
    return super().__getitem__(i)


def test_sigterm_keeps_the_finished_chunks_and_the_rerun_completes_them(
    reference, teacher, source, tmp_path):
  path = tmp_path / "stopped"
  with pytest.raises(preemption.Stopped, match="stopped by SIGTERM; the teacher cache keeps"):
    _build(teacher, SignallingSource(at=9), path, chunk_rows=4)  # During chunk 2 of 5.
  partial = TeacherCache.open(str(path), require_complete=False)
  finished = partial.finished_ids()
  assert 0 < len(finished) < NUM_EXAMPLES and set(finished) <= set(range(12)), finished
  rest = _build(teacher, source, path)
  assert rest.chunks_already_done == len(finished) // 4
  np.testing.assert_array_equal(TeacherCache.open(str(path)).to_numpy(),
                                TeacherCache.open(str(reference[0])).to_numpy())

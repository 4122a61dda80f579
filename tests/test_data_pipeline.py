"""Multi-host loaders: exact-once evaluation, sharded training stream, resumable state."""

import hashlib
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from rrjax import sharding
from rrjax.data import pipeline, sources, synthetic, views, workers

NUM_EXAMPLES = 21  # 3 classes x 7: no batch size used below divides it.
VIEW = views.ViewSpec(size=8, resize_size=10)
SEED = 5


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  root = synthetic.make_image_folder(str(tmp_path_factory.mktemp("pipe")), num_classes=3,
                                     per_class=7, size=12, seed=3, splits=("train",),
                                     image_format="png")
  return sources.ImageFolderSource(root, "train")


def _expected_view(source, example_id, view_index):
  return views.make_view(source[example_id]["image"], seed=SEED, example_id=example_id,
                         view_index=view_index, size=8, resize_size=10)


@pytest.mark.parametrize("num_devices", [1, 3, 8])
def test_eval_sees_every_example_once_on_the_mesh(source, num_devices):
  mesh = sharding.make_mesh(jax.devices()[:num_devices])
  global_batch = 2 * num_devices
  batches = list(pipeline.eval_batches(source, global_batch_size=global_batch, view=VIEW,
                                       seed=SEED, num_workers=2))
  assert len(batches) == pipeline.num_eval_batches(NUM_EXAMPLES, global_batch)
  ids, valid_images = [], {}
  for batch in batches:
    on_mesh = sharding.shard_batch(batch, mesh)
    assert on_mesh["image"].sharding.mesh.devices.size == num_devices
    host = jax.tree.map(np.asarray, on_mesh)
    valid = host["valid"]
    assert host["image"].shape == (global_batch, 8, 8, 3)
    assert not host["image"][~valid].any() and not host["id"][~valid].any()
    for i, label, image in zip(host["id"][valid], host["label"][valid], host["image"][valid]):
      assert label == source.labels[i]
      valid_images[int(i)] = image
    ids.extend(host["id"][valid].tolist())
  assert sorted(ids) == list(range(NUM_EXAMPLES))
  for i in (0, 11, NUM_EXAMPLES - 1):
    np.testing.assert_array_equal(valid_images[i], _expected_view(source, i, 0))


@pytest.mark.parametrize("global_batch", [4, 6])
def test_eval_two_hosts_split_each_global_batch(source, global_batch):
  single = list(pipeline.eval_batches(source, global_batch_size=global_batch, view=VIEW,
                                      seed=SEED, process_index=0, process_count=1))
  hosts = [list(pipeline.eval_batches(source, global_batch_size=global_batch, view=VIEW,
                                      seed=SEED, process_index=p, process_count=2,
                                      num_workers=1)) for p in (0, 1)]
  assert len(hosts[0]) == len(hosts[1]) == len(single)
  union = []
  for whole, first, second in zip(single, *hosts):
    assert first["image"].shape[0] == second["image"].shape[0] == global_batch // 2
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[key])
    union.extend(first["id"][first["valid"]].tolist() + second["id"][second["valid"]].tolist())
  assert sorted(union) == list(range(NUM_EXAMPLES))


def test_eval_other_view_index(source):
  batch = next(pipeline.eval_batches(source, global_batch_size=4, view=VIEW, seed=SEED,
                                     view_index=3))
  assert batch["view"].tolist() == [3] * 4
  np.testing.assert_array_equal(batch["image"][2], _expected_view(source, 2, 3))


def _loader(source, **kwargs):
  args = dict(global_batch_size=6, view=VIEW, num_views=4, seed=SEED, num_workers=2,
              process_index=0, process_count=1)
  return pipeline.TrainLoader(source, **(args | kwargs))


def test_train_epochs_shuffle_drop_remainder_and_views(source):
  loader = _loader(source)
  assert loader.steps_per_epoch == NUM_EXAMPLES // 6 == 3
  epochs = [[next(loader) for _ in range(3)] for _ in range(2)]
  orders = []
  for epoch, batches in enumerate(epochs):
    ids = np.concatenate([b["id"] for b in batches])
    assert len(set(ids.tolist())) == 18  # each example at most once; 3 dropped
    np.testing.assert_array_equal(ids, pipeline.epoch_permutation(NUM_EXAMPLES, SEED, epoch)[:18])
    view_of = pipeline.epoch_views(NUM_EXAMPLES, SEED, epoch, 4)
    for b in batches:
      assert b["image"].dtype == np.uint8 and b["image"].shape == (6, 8, 8, 3)
      assert {k: v.dtype for k, v in b.items() if k != "image"} == {
          "label": np.int32, "id": np.int32, "view": np.int32}
      np.testing.assert_array_equal(b["view"], view_of[b["id"]])
      np.testing.assert_array_equal(b["label"], source.labels[b["id"]])
      assert b["view"].min() >= 1 and b["view"].max() <= 4
    orders.append(ids)
  assert not np.array_equal(orders[0], orders[1])
  b = epochs[1][2]
  np.testing.assert_array_equal(b["image"][1], _expected_view(source, b["id"][1], b["view"][1]))
  assert len(set(np.concatenate([pipeline.epoch_views(NUM_EXAMPLES, SEED, e, 4)
                                 for e in range(3)]).tolist())) == 4
  loader.close()


def test_train_two_hosts_concatenate_to_the_global_batch(source):
  single = _loader(source)
  hosts = [_loader(source, process_index=p, process_count=2, num_workers=1) for p in (0, 1)]
  for _ in range(4):
    whole, first, second = next(single), next(hosts[0]), next(hosts[1])
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[key])
  for loader in [single, *hosts]:
    loader.close()


def test_train_state_restore_reproduces_the_stream(source):
  loader = _loader(source, prefetch=3)
  for _ in range(2):
    next(loader)
  state = json.loads(json.dumps(loader.get_state()))
  assert (state["epoch"], state["step"]) == (0, 2)
  expected = [next(loader) for _ in range(4)]  # crosses into epoch 1
  assert (loader.get_state()["epoch"], loader.get_state()["step"]) == (2, 0)
  resumed = _loader(source)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  # Rewinding the same loader works too (prefetched batches are discarded).
  loader.set_state(state)
  np.testing.assert_array_equal(next(loader)["id"], expected[0]["id"])
  with pytest.raises(ValueError, match="batch"):
    _loader(source, global_batch_size=3).set_state(state)
  with pytest.raises(ValueError, match="step"):
    resumed.set_state(dict(state, step=3))
  loader.close()
  resumed.close()


def test_loader_settings_are_checked(source):
  with pytest.raises(ValueError, match="batch_size"):
    _loader(source, global_batch_size=5, process_count=2)
  with pytest.raises(ValueError, match="num_views"):
    _loader(source, num_views=0)
  with pytest.raises(ValueError, match="larger than the training set"):
    _loader(source, global_batch_size=24)
  with pytest.raises(ValueError, match="process_index"):
    list(pipeline.eval_batches(source, global_batch_size=4, view=VIEW, process_index=2,
                               process_count=2))


_STREAM_HASH_SCRIPT = """
import hashlib, sys
from rrjax.data import pipeline, sources, views
source = sources.ImageFolderSource(sys.argv[1], "train")
loader = pipeline.TrainLoader(source, global_batch_size=6, view=views.ViewSpec(size=8,
    resize_size=10), num_views=4, seed=5, num_workers=3, process_index=1, process_count=2)
h = hashlib.sha256()
for _ in range(4):
  batch = next(loader)
  for key in sorted(batch):
    h.update(batch[key].tobytes())
print(h.hexdigest())
"""


def test_training_stream_is_identical_in_another_process(source):
  loader = _loader(source, process_index=1, process_count=2, num_workers=1)
  h = hashlib.sha256()
  for _ in range(4):
    batch = next(loader)
    for key in sorted(batch):
      h.update(batch[key].tobytes())
  loader.close()
  out = subprocess.run([sys.executable, "-c", _STREAM_HASH_SCRIPT, source.root], check=True,
                       capture_output=True, text=True)
  assert out.stdout.strip() == h.hexdigest()


def test_worker_processes_cut_the_views_of_the_calling_thread(source, tmp_path):
  indices, view_indices = [4, 4, 0, 20, 9, 4], [1, 2, 0, 3, 1, 0]
  with workers.ViewCutter(source, VIEW, SEED, 0) as inline:
    expected = inline.collect(inline.submit(indices, view_indices))
  with workers.ViewCutter(source, VIEW, SEED, 2) as cutter:
    first = cutter.submit(indices, view_indices)
    dropped = cutter.submit(indices[:2], view_indices[:2])
    cutter.discard(dropped)  # Its buffer is reused only once the workers are done.
    again = cutter.submit(indices, view_indices)
    for batch in (cutter.collect(first), cutter.collect(again)):
      assert batch.keys() == expected.keys()
      for key in expected:
        np.testing.assert_array_equal(batch[key], expected[key])
    assert cutter.worker_cpu_seconds > 0
  for row, (i, v) in enumerate(zip(indices, view_indices)):
    np.testing.assert_array_equal(expected["image"][row], _expected_view(source, i, v))


def test_worker_errors_name_the_image_and_the_shared_memory_is_checked(tmp_path):
  root = synthetic.make_image_folder(str(tmp_path), num_classes=1, per_class=2, size=12,
                                     seed=3, splits=("train",), image_format="png")
  broken = sources.ImageFolderSource(root, "train")
  with open(broken.files[1], "wb") as f:
    f.write(b"not an image")
  with workers.ViewCutter(broken, VIEW, SEED, 1) as cutter:
    with pytest.raises(ValueError, match=r"cannot decode image .*000001\.png"):
      cutter.collect(cutter.submit([0, 1], [1, 1]))
  with pytest.raises(RuntimeError, match="--shm-size"):
    workers._check_shared_memory(2**62)

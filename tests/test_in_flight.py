"""Batches in flight (rrjax.in_flight): the helper keeps `depth` dispatched ahead of the
fetch, and evaluation, the L-BFGS probe's feature pass and the teacher-cache build give
bit-identical results with several batches in flight and with one at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rrjax import evaluate, in_flight, operators, sharding
from rrjax.stages import probe as probe_stage
from support import in_flight_spy


class FakeDevice:
  """A device function that logs when each item is pulled, dispatched and fetched."""

  def __init__(self):
    self.events = []

  def items(self, n):
    for i in range(n):
      self.events.append(("pull", i))
      yield i

  def dispatch(self, i):
    self.events.append(("dispatch", i))
    return {"handle": i}

  def fetch(self, handle):
    self.events.append(("fetch", handle["handle"]))
    return 10 * handle["handle"]


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("n", [0, 1, 2, 7])
def test_depth_items_are_dispatched_before_the_oldest_is_fetched(depth, n):
  device = FakeDevice()
  results = list(in_flight.pipelined(device.items(n), device.dispatch, fetch=device.fetch,
                                     depth=depth))
  assert results == [10 * i for i in range(n)]
  events = device.events
  position = {event: t for t, event in enumerate(events)}
  for k in range(n):
    # Item k is fetched only once the next depth-1 items (those there are) are dispatched,
    # and before any item further on is pulled.
    last_ahead = min(k + depth - 1, n - 1)
    assert position[("dispatch", last_ahead)] < position[("fetch", k)]
    if k + depth < n:
      assert position[("fetch", k)] < position[("pull", k + depth)]
  # Never more than `depth` dispatched and not yet fetched, and `depth` reached.
  dispatched = fetched = most = 0
  for kind, _ in events:
    dispatched += kind == "dispatch"
    fetched += kind == "fetch"
    most = max(most, dispatched - fetched)
  assert most == min(depth, n)
  assert [i for kind, i in events if kind == "fetch"] == list(range(n))


def test_a_consumer_that_stops_leaves_the_rest_unpulled():
  device = FakeDevice()
  results = in_flight.pipelined(device.items(10), device.dispatch, fetch=device.fetch, depth=3)
  assert next(results) == 0
  assert ("pull", 3) not in device.events and ("pull", 2) in device.events


def test_depth_below_one_is_refused():
  with pytest.raises(ValueError, match="depth=0 must be at least 1"):
    list(in_flight.pipelined([1], lambda x: x, depth=0))


def test_default_depth_runs_collectives_one_at_a_time_on_cpu_only(monkeypatch):
  assert jax.default_backend() == "cpu"
  assert in_flight.default_depth(collectives=True) == 1
  assert in_flight.default_depth(collectives=False) == in_flight.ACCELERATOR_DEPTH > 1
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert in_flight.default_depth(collectives=True) == in_flight.ACCELERATOR_DEPTH


def test_jax_programs_in_flight_give_a_sequential_loops_results():
  """Real asynchronous dispatch: the same values, bit for bit, in the same order."""
  step = jax.jit(lambda x, i: jnp.sin(x @ x.T + i))
  inputs = [np.random.default_rng(i).normal(size=(64, 64)).astype(np.float32)
            for i in range(6)]
  reference = [np.asarray(jax.device_get(step(x, np.int32(i)))) for i, x in enumerate(inputs)]
  got = list(in_flight.pipelined(enumerate(inputs), lambda ix: step(ix[1], np.int32(ix[0])),
                                 depth=3))
  assert len(got) == len(reference)
  for g, r in zip(got, reference):
    assert isinstance(g, np.ndarray)
    np.testing.assert_array_equal(g, r)


@pytest.fixture
def depths(monkeypatch):
  """The depths the code under test asks `pipelined` for, and a switch forcing depth 1
  everywhere (today's one-batch-at-a-time loops) for the reference run."""
  used = in_flight_spy.record_depths(monkeypatch)

  def one_at_a_time():
    monkeypatch.setattr(in_flight, "default_depth", lambda *, collectives: 1)

  return used, one_at_a_time


def _padded_batches(images, labels, batch_size):
  for start in range(0, len(images), batch_size):
    n = min(batch_size, len(images) - start)
    pad = batch_size - n
    yield {"image": np.concatenate([images[start:start + n],
                                    np.zeros((pad,) + images.shape[1:], np.uint8)]),
           "label": np.concatenate([labels[start:start + n], np.zeros(pad, np.int32)]),
           "id": np.concatenate([np.arange(start, start + n),
                                 np.zeros(pad, int)]).astype(np.int32),
           "valid": np.arange(batch_size) < n}


CHOICE = {"kind": "choice", "ops": [{"kind": "mask", "p": 0.5},
                                    {"kind": "noise", "sigma": 0.1}]}


def test_evaluation_is_bit_identical_with_batches_in_flight(depths):
  used, one_at_a_time = depths
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (21, 6, 6, 3), dtype=np.uint8)
  labels = rng.integers(0, 4, 21).astype(np.int32)
  output_fn = lambda variables, corrupted, batch: jnp.mean(corrupted, axis=(1, 2)) * variables
  # One device: no collective in the program, so several batches are in flight on CPU too.
  run = lambda: evaluate.collect_outputs(
      output_fn, jnp.float32(2.0), _padded_batches(images, labels, 4),
      mesh=sharding.make_mesh(jax.devices()[:1]), key=jax.random.key(0), repeats=2,
      operator=operators.build(CHOICE))
  ahead = run()
  one_at_a_time()
  sequential = run()
  assert used == [in_flight.ACCELERATOR_DEPTH, 1]
  for k in ("outputs", "label", "id"):
    np.testing.assert_array_equal(ahead[k], sequential[k])


def test_probe_features_are_bit_identical_with_batches_in_flight(depths):
  used, one_at_a_time = depths
  rng = np.random.default_rng(1)
  batches = [{"image": rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8),
              "label": rng.integers(0, 3, 4).astype(np.int32),
              "id": np.arange(4 * b, 4 * b + 4, dtype=np.int32)} for b in range(5)]
  features_fn = lambda variables, corrupted, batch: corrupted.reshape(4, -1)[:, :7] * variables
  run = lambda: probe_stage.corrupted_features(
      features_fn, jnp.float32(3.0), iter(batches), operator=operators.build(CHOICE),
      mesh=sharding.make_mesh(jax.devices()[:1]), key=jax.random.key(2))
  ahead = run()
  one_at_a_time()
  sequential = run()
  assert used == [in_flight.ACCELERATOR_DEPTH, 1]
  assert ahead[0].shape == (20, 7)
  for a, s in zip(ahead, sequential):
    np.testing.assert_array_equal(a, s)

"""The shared training loop: optimiser, sharded == single device, loss scaling, NaN stop,
resume from a checkpoint == uninterrupted run; per-device BatchNorm == per-shard runs."""

import json
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rrjax import losses, objectives, operators, preemption, sharding, train
from rrjax import writers as writers_lib

# Numerically sensitive: sharded against single-device steps, resume against uninterrupted runs.
# .ci/run runs these tests again with XLA's CPU code capped at AVX.
pytestmark = pytest.mark.numerics


class TinyStudent(nn.Module):
  """Conv + BatchNorm + Dense: enough to exercise batch statistics under sharding."""
  dim: int = 8

  @nn.compact
  def __call__(self, images01, *, train: bool):
    x = nn.Conv(4, (3, 3), strides=2, use_bias=False)(images01)  # BN follows
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    pooled = jnp.mean(nn.relu(x), axis=(1, 2))
    return nn.Dense(self.dim)(pooled), {"pre_logits": pooled}


class ListLoader:
  """The loader protocol of `train.fit`: iteration plus exact position save/restore."""

  def __init__(self, batches, fail_at=None):
    self.batches, self.position, self.fail_at = batches, 0, fail_at

  def __iter__(self):
    while True:
      if self.position == self.fail_at:
        raise KeyboardInterrupt("simulated crash")
      batch = self.batches[self.position % len(self.batches)]
      self.position += 1
      yield batch

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


def _batches(num, batch_size=16, size=8, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
           "target": rng.normal(size=(batch_size, dim)).astype(np.float32)}
          for _ in range(num)]


@pytest.fixture(scope="module")
def setup():
  model = TinyStudent()
  variables = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), train=False)
  loss_fn = objectives.student_loss(model, operators.build({"kind": "mask", "p": 0.5}),
                                    kind="student_teacher", temperature=0.1)
  tx = train.make_optimizer(learning_rate=1e-2, total_steps=6, weight_decay=1e-4)
  state = train.create_state(variables["params"], {"batch_stats": variables["batch_stats"]}, tx)
  return loss_fn, state


def _run_steps(state, loss_fn, batches, mesh):
  step = jax.jit(lambda s, b, k: train.train_step(s, b, k, None, loss_fn=loss_fn))
  losses = []
  for batch in batches:
    state, metrics = step(state, sharding.shard_batch(batch, mesh), jax.random.key(1))
    losses.append(float(metrics["loss"]))
  return state, losses


def test_sharded_steps_equal_single_device(setup):
  loss_fn, state = setup
  batches = _batches(3)
  single_mesh = sharding.make_mesh(jax.devices()[:1])
  full_mesh = sharding.make_mesh()
  assert full_mesh.devices.size == 8
  single_state, single_losses = _run_steps(
      jax.device_put(state, sharding.replicated(single_mesh)), loss_fn, batches, single_mesh)
  sharded_state, sharded_losses = _run_steps(
      jax.device_put(state, sharding.replicated(full_mesh)), loss_fn, batches, full_mesh)
  np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
  assert single_losses[-1] != single_losses[0]
  for got, want in zip(jax.tree.leaves((sharded_state.params, sharded_state.model_state)),
                       jax.tree.leaves((single_state.params, single_state.model_state))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_optimizer_is_per_step_cosine_with_decoupled_decay_on_kernels_only():
  total, lr = 10, 0.1
  tx = train.make_optimizer(learning_rate=lr, total_steps=total, weight_decay=0.5)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  opt_state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  for step in range(total):
    updates, opt_state = tx.update(zero, opt_state, params)
    expected_lr = lr * 0.5 * (1 + np.cos(np.pi * step / total))
    # With zero gradients Adam's step is 0: only decoupled decay lr * wd * param remains.
    np.testing.assert_allclose(updates["kernel"], -expected_lr * 0.5 * params["kernel"], rtol=1e-5)
    np.testing.assert_array_equal(updates["bias"], 0.0)
  warm = train.make_optimizer(learning_rate=lr, total_steps=total, warmup_steps=4)
  opt_state = warm.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  first, _ = warm.update(grads, opt_state, params)
  np.testing.assert_allclose(first["bias"], 0.0, atol=1e-8)  # warmup starts at lr 0


def test_dynamic_loss_scale_skips_overflowing_steps(setup):
  loss_fn, state = setup
  state = state.replace(loss_scale=jnp.float32(1e38))  # loss * scale overflows float32
  new_state, metrics = jax.jit(lambda s, b, k: train.train_step(
      s, b, k, None, loss_fn=loss_fn, dynamic_loss_scale=True))(
          state, _batches(1)[0], jax.random.key(0))
  assert int(new_state.step) == 1
  np.testing.assert_allclose(new_state.loss_scale, 5e37)
  for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(got, want)
  assert np.isfinite(metrics["loss"])


def _fit(state, loss_fn, workdir, loader, num_steps=6):
  return train.fit(state=state, loss_fn=loss_fn, loader=loader, num_steps=num_steps,
                   mesh=sharding.make_mesh(), key=jax.random.key(3), workdir=str(workdir),
                   checkpoint_every=2, log_every=1)


def test_resume_after_crash_equals_uninterrupted_run(setup, tmp_path):
  loss_fn, state = setup
  batches = _batches(5)
  full = _fit(state, loss_fn, tmp_path / "full", ListLoader(batches))
  with pytest.raises(KeyboardInterrupt):
    _fit(state, loss_fn, tmp_path / "crashed", ListLoader(batches, fail_at=5))
  resumed = _fit(state, loss_fn, tmp_path / "crashed", ListLoader(batches))
  assert resumed.resumed_from == 4
  assert int(resumed.state.step) == 6
  for got, want in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(full.state.params)):
    np.testing.assert_array_equal(got, want)
  # A finished run is not trained again.
  again = _fit(state, loss_fn, tmp_path / "full", ListLoader(batches))
  assert again.resumed_from == 6 and again.seconds < full.seconds


def test_nan_loss_stops_and_keeps_last_good_checkpoint(setup, tmp_path):
  _, state = setup

  def exploding_loss(params, model_state, batch, key, frozen):
    loss = jnp.sum(params["Dense_0"]["bias"]) * 0 + jnp.where(batch["bad"][0], jnp.nan, 1.0)
    return loss, (model_state, {})

  batches = [{"bad": np.zeros((8,), bool)}] * 2 + [{"bad": np.ones((8,), bool)}]
  with pytest.raises(FloatingPointError, match="step 3"):
    _fit(state, exploding_loss, tmp_path, ListLoader(batches))
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]


def test_sharded_parameters_give_the_replicated_run(setup, tmp_path, monkeypatch):
  loss_fn, state = setup
  monkeypatch.setattr(sharding, "SHARD_MIN_SIZE", 1)
  batches = _batches(3)
  run = lambda shard, directory: train.fit(
      state=state, loss_fn=loss_fn, loader=ListLoader(batches), num_steps=3,
      mesh=sharding.make_mesh(), key=jax.random.key(3), workdir=str(directory),
      checkpoint_every=3, log_every=1, shard_params=shard)
  replicated, split = run(False, tmp_path / "replicated"), run(True, tmp_path / "split")
  kernel = split.state.params["Dense_0"]["kernel"]  # [4, 8]: split along its 8 outputs
  assert kernel.sharding.spec == P(None, "data")
  assert split.state.opt_state[0].mu["Dense_0"]["kernel"].sharding.spec == P(None, "data")
  for got, want in zip(jax.tree.leaves(split.state), jax.tree.leaves(replicated.state)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _shards_apart(batch_size=16, num_shards=8, seed=5):
  """A batch whose 8 device shards have different statistics: shard i's pixels are drawn
  from [0, 32 * (i + 1)), so its mean and spread grow with i."""
  rng = np.random.default_rng(seed)
  bounds = np.repeat(32 * np.arange(1, num_shards + 1), batch_size // num_shards)
  images = (rng.random((batch_size, 8, 8, 3)) * bounds[:, None, None, None]).astype(np.uint8)
  return {"image": images, "target": rng.normal(size=(batch_size, 8)).astype(np.float32)}


def test_per_device_batch_norm_equals_one_single_device_run_per_shard(setup):
  """`per_device_mesh`: each device's shard normalised by its own statistics, as separate
  single-device forwards of the 8 shards (a Python loop, no shard_map) give them; the loss
  over the global batch, its gradient, and the running statistics averaged over shards."""
  _, state = setup
  model, mesh = TinyStudent(), sharding.make_mesh()
  identity = operators.build({"kind": "identity"})
  batch = _shards_apart()
  params, model_state = state.params, state.model_state
  loss_fn = objectives.student_loss(model, identity, kind="student_teacher", temperature=0.1,
                                    per_device_mesh=mesh)
  per_device = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, (new_state, _)), grads = per_device(
      params, model_state, sharding.shard_batch(batch, mesh), jax.random.key(0), None)
  embeddings, _ = jax.jit(objectives.training_forward(model, mesh))(
      {"params": params, **model_state},
      sharding.shard_batch(objectives.to_unit_range(batch["image"]), mesh))

  def reference(params):
    outputs, states = [], []
    for shard in np.split(objectives.to_unit_range(batch["image"]), 8):
      out, _, shard_state = objectives.apply_model(
          model, {"params": params, **model_state}, shard, train=True)
      outputs.append(out)
      states.append(shard_state)
    outputs = jnp.concatenate(outputs)
    loss = losses.contrastive_loss(outputs, batch["target"], kind="student_teacher",
                                   temperature=0.1)
    return loss, (outputs, jax.tree.map(lambda *s: jnp.mean(jnp.stack(s), 0), *states))

  (want_loss, (want_embeddings, want_state)), want_grads = jax.jit(
      jax.value_and_grad(reference, has_aux=True))(params)
  # float32 throughout; the same arithmetic per shard, so only the order of the reductions
  # (batch statistics, the loss, the gradient's sum over devices) can differ: a few ulps,
  # grown at most tenfold by the normalisation and the softmax.
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(embeddings, want_embeddings, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6),
               (new_state, grads), (want_state, want_grads))


def test_per_device_and_global_batch_norm_differ_when_the_shards_do(setup):
  """Not a no-op: on shards with different statistics each device's normalisation gives
  other embeddings than the global batch's. The running mean is the same either way (the
  mean of equal shards' means is the batch mean); the running variance is smaller, as
  each shard's spread leaves out the differences between shards."""
  _, state = setup
  model, mesh = TinyStudent(), sharding.make_mesh()
  variables = {"params": state.params, **state.model_state}
  images = sharding.shard_batch(objectives.to_unit_range(_shards_apart()["image"]), mesh)
  per_device, per_device_state = jax.jit(objectives.training_forward(model, mesh))(
      variables, images)
  whole, whole_state = jax.jit(objectives.training_forward(model))(variables, images)
  assert np.max(np.abs(per_device - whole)) > 0.1 * np.max(np.abs(whole))
  stats, whole_stats = (s["batch_stats"]["BatchNorm_0"] for s in (per_device_state,
                                                                  whole_state))
  np.testing.assert_allclose(stats["mean"], whole_stats["mean"], rtol=1e-5, atol=1e-7)
  assert np.all(stats["var"] < whole_stats["var"])


def test_per_device_batch_norm_with_split_parameters_and_resume(setup, tmp_path, monkeypatch):
  """Per-device BatchNorm in `fit`: with parameters split over the devices it gives the
  replicated run (the shard_map gathers them), and a crashed run resumes to exactly the
  uninterrupted one: the state keeps the layout of the global BatchNorm's."""
  _, state = setup
  monkeypatch.setattr(sharding, "SHARD_MIN_SIZE", 1)
  loss_fn = objectives.student_loss(TinyStudent(), operators.build({"kind": "mask", "p": 0.5}),
                                    kind="student_teacher", temperature=0.1,
                                    per_device_mesh=sharding.make_mesh())
  batches = [_shards_apart(seed=seed) for seed in range(5)]
  run = lambda directory, loader, shard=False: train.fit(
      state=state, loss_fn=loss_fn, loader=loader, num_steps=6, mesh=sharding.make_mesh(),
      key=jax.random.key(3), workdir=str(directory), checkpoint_every=2, log_every=1,
      shard_params=shard)
  full = run(tmp_path / "full", ListLoader(batches))
  assert jax.tree.structure(full.state) == jax.tree.structure(state)
  assert ([(x.shape, x.dtype) for x in jax.tree.leaves(full.state)]
          == [(x.shape, x.dtype) for x in jax.tree.leaves(state)])
  with pytest.raises(KeyboardInterrupt):
    run(tmp_path / "crashed", ListLoader(batches, fail_at=5))
  resumed = run(tmp_path / "crashed", ListLoader(batches))
  assert resumed.resumed_from == 4
  for got, want in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state)):
    np.testing.assert_array_equal(got, want)
  split = run(tmp_path / "split", ListLoader(batches), shard=True)
  assert split.state.params["Dense_0"]["kernel"].sharding.spec == P(None, "data")
  # As test_sharded_parameters_give_the_replicated_run: the same steps, summed in another
  # order where XLA splits the parameters' updates over the devices.
  for got, want in zip(jax.tree.leaves(split.state), jax.tree.leaves(full.state)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _logged(directory):
  return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def test_logged_metrics_are_window_means_with_throughput_and_input_wait(setup, tmp_path):
  loss_fn, state = setup
  batches = _batches(3)
  run = lambda log_every, directory, profile_steps=(): train.fit(
      state=state, loss_fn=loss_fn, loader=ListLoader(batches), num_steps=6,
      mesh=sharding.make_mesh(), key=jax.random.key(3), workdir=str(directory),
      checkpoint_every=6, log_every=log_every, writer=writers_lib.MetricWriter(str(directory)),
      name="tiny", profile_steps=profile_steps)
  every_step = run(1, tmp_path / "every_step")
  windowed = run(3, tmp_path / "windowed", profile_steps=(1, 3))
  assert list((tmp_path / "windowed" / "profile").rglob("*.xplane.pb"))
  assert not (tmp_path / "every_step" / "profile").exists()
  per_step = {r["step"]: r["tiny/loss"] for r in _logged(tmp_path / "every_step")}
  assert sorted(per_step) == [1, 2, 3, 4, 5, 6]
  records = _logged(tmp_path / "windowed")
  assert [r["step"] for r in records] == [3, 6]
  for record, steps in zip(records, ([1, 2, 3], [4, 5, 6])):
    np.testing.assert_allclose(record["tiny/loss"], np.mean([per_step[s] for s in steps]),
                               rtol=1e-6)
    assert record["tiny/steps_per_sec"] > 0
    np.testing.assert_allclose(record["tiny/images_per_sec"],
                               16 * record["tiny/steps_per_sec"], rtol=1e-6)
    assert 0 <= record["tiny/input_wait_fraction"] <= 1
    assert "tiny/mfu" not in record  # No peak FLOP/s is known for CPUs.
  assert windowed.last_metrics["loss"] == records[-1]["tiny/loss"]
  for got, want in zip(jax.tree.leaves(windowed.state), jax.tree.leaves(every_step.state)):
    np.testing.assert_array_equal(got, want)


class SignallingLoader(ListLoader):
  """Sends this process `signum` when it reads batch `at` (from the prefetch thread, as
  a cluster's SIGTERM would arrive at any moment)."""

  def __init__(self, batches, at, signum=signal.SIGTERM):
    super().__init__(batches)
    self.at, self.signum = at, signum

  def __iter__(self):
    for batch in super().__iter__():
      if self.position == self.at:
        os.kill(os.getpid(), self.signum)
      yield batch


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_checkpoints_the_step_and_the_rerun_equals_an_uninterrupted_run(
    setup, tmp_path, signum):
  loss_fn, state = setup
  batches = _batches(5)
  run = lambda loader, directory: train.fit(
      state=state, loss_fn=loss_fn, loader=loader, num_steps=8, mesh=sharding.make_mesh(),
      key=jax.random.key(3), workdir=str(directory), checkpoint_every=100, log_every=1)
  full = run(ListLoader(batches), tmp_path / "full")
  previous = signal.getsignal(signum)
  with pytest.raises(preemption.Stopped, match=f"stopped by {signum.name}; train saved step"):
    run(SignallingLoader(batches, at=3, signum=signum), tmp_path / "stopped")
  assert signal.getsignal(signum) is previous  # The usual handling is back.
  [saved] = [int(p.name) for p in (tmp_path / "stopped" / "checkpoints").iterdir()]
  assert 1 <= saved < 8  # The step in flight (the signal came with batch 3 prefetched).
  resumed = run(ListLoader(batches), tmp_path / "stopped")
  assert resumed.resumed_from == saved
  for got, want in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state)):
    np.testing.assert_array_equal(got, want)


def _damage(checkpoint, how):
  """Truncates the array data of a checkpoint's state (OCDBT's merged `state/d/` file, which
  restoring reads), or deletes it."""
  largest = max((checkpoint / "state" / "d").iterdir(), key=lambda p: p.stat().st_size)
  if how == "truncated":
    largest.write_bytes(largest.read_bytes()[:largest.stat().st_size // 2])
  else:
    largest.unlink()


@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_a_damaged_latest_checkpoint_resumes_from_the_one_before(setup, tmp_path, how, caplog):
  loss_fn, state = setup
  batches = _batches(5)
  full = _fit(state, loss_fn, tmp_path, ListLoader(batches))  # Checkpoints 2, 4 and 6.
  _damage(tmp_path / "checkpoints" / "6", how)
  with caplog.at_level("WARNING"):
    resumed = _fit(state, loss_fn, tmp_path, ListLoader(batches))
  assert resumed.resumed_from == 4
  assert "step 6 do not restore" in caplog.text and "resuming from step 4" in caplog.text
  [kept] = (tmp_path / "checkpoints.damaged").iterdir()  # Set aside, not deleted.
  assert kept.name.startswith("6.")
  for got, want in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state)):
    np.testing.assert_array_equal(got, want)
  # When no checkpoint restores, the run stops instead of starting from step 0.
  for step in ("2", "4", "6"):
    _damage(tmp_path / "checkpoints" / step, how)
  with pytest.raises(ValueError, match="no checkpoint in .* restores"):
    _fit(state, loss_fn, tmp_path, ListLoader(batches))
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4", "6"]

"""One training loop for everything that is trained: the student, linear probes and the
supervised baseline.

Each of them is a *loss function* `loss_fn(params, model_state, batch, key, frozen)`
returning `(loss, (new_model_state, metrics))`; `train_step` turns it into a jittable
update (corruption keys, gradients, optimiser, float16 loss scaling, norms), and `fit`
runs it under `jax.jit` on the data mesh with orbax checkpoints, resumable to the exact
parameters of an uninterrupted run.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import threading
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rrjax import checkpoints, console, in_flight, preemption, sharding
from rrjax import writers as writers_lib

LossFn = Callable[..., tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]]

# Dynamic float16 loss scaling: halve on overflow, double after this many good steps.
LOSS_SCALE_PERIOD = 2000

# Prepared batches `fit` keeps ready on the devices ahead of the step that uses them.
PREFETCH_DEPTH = 2

# Dense bf16 peak FLOP/s of one device, by jax `device_kind`: MFU is reported where the
# device is listed here (the benchmarks use this table too).
PEAK_FLOPS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12,
              "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12,
              "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12}


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  model_state: Any      # non-trainable collections, e.g. {"batch_stats": ...}; {} if none
  opt_state: Any
  loss_scale: jax.Array  # 1.0 unless float16 loss scaling is on
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def make_optimizer(*, learning_rate: float, total_steps: int, weight_decay: float = 0.0,
                   warmup_steps: int = 0, grad_clip_norm: float = 0.0
                   ) -> optax.GradientTransformation:
  """Adam with decoupled weight decay and a per-step cosine schedule (optional warmup).

  Weight decay skips biases and normalisation scales (parameters with fewer than 2
  dimensions), the usual practice that keeps BatchNorm/LayerNorm from shrinking.
  """
  if warmup_steps:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup_steps, max(total_steps, warmup_steps + 1))
  else:
    schedule = optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  tx = optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask)
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx


def create_state(params, model_state, tx: optax.GradientTransformation,
                 loss_scale: float = 0.0) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state=model_state or {}, opt_state=tx.init(params),
                    loss_scale=jnp.float32(loss_scale or 1.0), tx=tx)


def train_step(state: TrainState, batch, key: jax.Array, frozen, *, loss_fn: LossFn,
               dynamic_loss_scale: bool = False):
  """One update. `key` is the run's base key; the step's key is derived from the step
  number, so a resumed run draws exactly the corruptions an uninterrupted one draws."""
  step_key = jax.random.fold_in(key, state.step)

  def scaled_loss(params):
    loss, aux = loss_fn(params, state.model_state, batch, step_key, frozen)
    return loss * state.loss_scale, (loss, aux)

  grads, (loss, (model_state, metrics)) = jax.grad(scaled_loss, has_aux=True)(state.params)
  grads = jax.tree.map(lambda g: g / state.loss_scale, grads)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                            opt_state=opt_state)
  if dynamic_loss_scale:
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    # Overflow: keep the old state (skip the update, but count the step) and halve the scale.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                             new_state, state.replace(step=state.step + 1))
    grow = (state.step + 1) % LOSS_SCALE_PERIOD == 0
    new_state = new_state.replace(loss_scale=jnp.where(
        finite, jnp.where(grow, state.loss_scale * 2, state.loss_scale), state.loss_scale / 2))
    # An overflowing float16 step is expected, not an error: report the loss as finite.
    loss = jnp.where(finite, loss, 0.0)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                 param_norm=optax.tree.norm(params), loss_scale=new_state.loss_scale)
  return new_state, metrics


def jitted_step(loss_fn: LossFn, state_shardings, mesh, dynamic_loss_scale: bool = False):
  """The program `fit` runs each step, jitted: `(state, batch, key, frozen, stop) ->
  (state, metrics, stop_any)`. The state is donated and stays in `state_shardings`;
  `stop` holds each device's "was this process asked to stop" flag. Trace it under
  `jax.set_mesh(mesh)` (a choice operator groups each device's images there)."""
  replicated = sharding.replicated(mesh)

  def step_and_stop(s, b, k, f, stop):
    # Whether any process was asked to stop rides along with the step, so every process
    # reads the same answer after the same step, without a collective of its own.
    return (*train_step(s, b, k, f, loss_fn=loss_fn, dynamic_loss_scale=dynamic_loss_scale),
            jnp.any(stop))

  return jax.jit(step_and_stop, out_shardings=(state_shardings, replicated, replicated),
                 donate_argnums=0)


@dataclasses.dataclass
class FitResult:
  state: TrainState
  last_metrics: dict[str, float]
  seconds: float
  resumed_from: int


class _Prefetcher:
  """Reads, prepares and transfers the next batches in a background thread, at most
  `PREFETCH_DEPTH` ahead, so that the loop's critical path is the compiled step alone.

  Each batch comes with the loader's state after reading it: the position a checkpoint
  saves once a step has consumed that batch (the loader itself is already further on).
  An error in the thread (the loader's, a lookup's) is raised by `get` in its turn, after
  the batches read before it.
  """

  def __init__(self, loader, count: int, prepare: Callable):
    self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH_DEPTH)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(loader, count, prepare),
                                    name="rrjax-prefetch", daemon=True)
    self._thread.start()

  def _run(self, loader, count: int, prepare: Callable) -> None:
    try:
      iterator = iter(loader)
      for _ in range(count):
        batch = next(iterator)
        if not self._put((prepare(batch), loader.get_state())):
          return
    except BaseException as e:  # KeyboardInterrupt too: the loop decides what to do.
      self._put(e)

  def _put(self, item) -> bool:
    """Waits for room in the queue; False once `close` asked the thread to stop."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def get(self) -> tuple[Any, dict]:
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join()


def _step_flops(compiled) -> float | None:
  """FLOPs of one step on one device, as XLA counts them; None where it does not."""
  try:
    flops = (compiled.cost_analysis() or {}).get("flops", 0.0)
  except NotImplementedError:
    return None
  return float(flops) if flops > 0 else None


class _Window:
  """What the loop saw since the last log: each step's metrics (device arrays, fetched
  together when the window closes), the batches' images and the time spent waiting for
  the next prepared batch."""

  def __init__(self, first_step: int):
    self.first_step = first_step
    self.start = time.perf_counter()
    self.metrics: list[dict[str, jax.Array]] = []
    self.images = 0
    self.input_wait = 0.0

  def close(self, step_flops: float | None, peak_flops: float | None,
            ckpt_dir: str) -> dict[str, float]:
    """Window means of the step metrics, throughput and input wait (and MFU where the
    step's FLOPs and the device's peak are known); raises on a non-finite loss."""
    per_step = jax.device_get(self.metrics)  # Also waits for the window's last step.
    seconds = time.perf_counter() - self.start
    losses = np.array([m["loss"] for m in per_step])
    if not np.isfinite(losses).all():
      _raise_not_finite(losses, self.first_step, ckpt_dir)
    scalars = {k: float(np.mean([m[k] for m in per_step])) for k in per_step[0]}
    steps_per_sec = len(per_step) / seconds
    scalars.update(steps_per_sec=steps_per_sec, images_per_sec=self.images / seconds,
                   input_wait_fraction=self.input_wait / seconds)
    if step_flops and peak_flops:
      scalars["mfu"] = step_flops * steps_per_sec / peak_flops
    return scalars


def _raise_not_finite(losses: np.ndarray, first_step: int, directory: str) -> None:
  bad = int(np.argmin(np.isfinite(losses)))
  raise FloatingPointError(
      f"the loss became {losses[bad]} at step {first_step + bad}; training stopped. The last "
      f"good checkpoint is kept in {directory}. Lower the learning rate, enable "
      "optimizer.grad_clip_norm, or use float32/bfloat16 compute.")


def fit(*, state: TrainState, loss_fn: LossFn, loader, num_steps: int, mesh,
        key: jax.Array, frozen=None, workdir: str, prepare_batch=lambda batch: batch,
        checkpoint_every: int = 1000, keep_checkpoints: int = 3, log_every: int = 50,
        writer: writers_lib.MetricWriter | None = None, name: str = "train",
        dynamic_loss_scale: bool = False, shard_params: bool = False,
        profile_steps: tuple[int, ...] = ()) -> FitResult:
  """Trains `state` for `num_steps` steps of `loss_fn` on batches from `loader`.

  Batches are read, prepared and put on the devices by a background thread while steps
  run. Every `log_every` steps the window's mean metrics, `steps_per_sec`,
  `images_per_sec`, `input_wait_fraction` (share of the window's wall time the loop
  waited for a prepared batch) and, where the device's peak is in `PEAK_FLOPS`, `mfu` go
  to `writer` as `<name>/<metric>` and to the progress bar.

  Args:
    loader: yields host-local batches (dicts of numpy arrays) and has `get_state()` /
      `set_state(dict)` giving its exact position, saved with every checkpoint.
    prepare_batch: host-side hook adding what the step needs to a batch (e.g. cached
      teacher embeddings looked up by id and view); runs in the background thread.
    workdir: checkpoints go to `workdir/checkpoints`; an existing one is resumed.
    dynamic_loss_scale: float16 training; `state.loss_scale` is the initial scale.
    shard_params: split large parameters and optimiser moments over the data axis
      instead of replicating them (`sharding.place_state`); same results, less memory.
    profile_steps: `(start, stop)` writes a `jax.profiler` trace of steps start+1..stop
      to `workdir/profile`; `()` traces nothing.

  Raises:
    preemption.Stopped: after SIGTERM or SIGINT (on any process of the job), once the
      step in flight finished and was checkpointed.
  """
  writer = writer or writers_lib.MetricWriter(None)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  manager = checkpoints.manager(ckpt_dir, keep_checkpoints)
  # A copy: the step donates its input state, and the caller may still hold this one.
  state = sharding.place_state(jax.tree.map(jnp.copy, state), mesh, shard_params)
  frozen = sharding.replicate(frozen, mesh)
  resumed_from, restored, loader_state = checkpoints.resume(manager, state, name)
  if resumed_from:
    state = restored
    loader.set_state(loader_state)
    console.say(f"{name}: resumed from step {resumed_from} in {ckpt_dir}")

  step_fn = jitted_step(loss_fn, jax.tree.map(lambda x: x.sharding, state), mesh,
                        dynamic_loss_scale)
  key = sharding.replicate(key, mesh)
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  # Accelerators queue a few steps, so dispatch overlaps compute, while the batches they
  # hold on device stay bounded; CPU devices run one (the step's all-reduces, `in_flight`).
  steps_in_flight = in_flight.default_depth(collectives=True)
  peak_flops = PEAK_FLOPS.get(jax.devices()[0].device_kind)
  start = time.perf_counter()
  progress = writers_lib.Progress(name, total=num_steps, initial=resumed_from)
  host_metrics: dict[str, float] = {}
  compiled, step_flops, window, tracing = None, None, None, False
  stop_flags: collections.deque = collections.deque()  # Of the steps in flight, oldest first.
  step, stopped = resumed_from, False
  with preemption.stop_signals_deferred():
    # Deferred before the first read: the loader may take a while, and a signal then too
    # must stop the loop, not the process.
    prefetcher = _Prefetcher(loader, num_steps - resumed_from,
                             lambda batch: sharding.shard_batch(prepare_batch(batch), mesh))
    try:
      while step < num_steps:
        wait_start = time.perf_counter()
        batch, next_loader_state = prefetcher.get()
        stop = sharding.shard_batch(np.full(local_devices, preemption.requested() is not None),
                                    mesh)
        if compiled is None:
          # Traced under the mesh, so that a choice operator groups each device's images
          # (rrjax.operators.mixtures) instead of gathering the batch.
          with jax.set_mesh(mesh):
            compiled = step_fn.lower(state, batch, key, frozen, stop).compile()
          step_flops = _step_flops(compiled)
          window = _Window(step + 1)  # Opened after compiling: windows time the loop alone.
        else:
          window.input_wait += time.perf_counter() - wait_start
        if len(stop_flags) >= steps_in_flight and bool(stop_flags.popleft()):
          stopped = True  # Waited for the oldest step in flight; this batch is not used.
          break
        if profile_steps and step == profile_steps[0]:
          jax.profiler.start_trace(os.path.join(workdir, "profile"))
          tracing = True
        state, metrics, stop_any = compiled(state, batch, key, frozen, stop)
        loader_state = next_loader_state
        step += 1
        stop_flags.append(stop_any)
        window.metrics.append(metrics)
        window.images += jax.tree.leaves(batch)[0].shape[0]
        if tracing and step == profile_steps[1]:
          jax.block_until_ready(metrics)
          jax.profiler.stop_trace()
          tracing = False
        progress.update(step)
        if step % log_every == 0 or step == num_steps or step % checkpoint_every == 0:
          host_metrics = window.close(step_flops, peak_flops, ckpt_dir)
          writer.write_scalars(step, {f"{name}/{k}": v for k, v in host_metrics.items()})
          progress.set_postfix(host_metrics)
          window = _Window(step + 1)
        if step % checkpoint_every == 0 or step == num_steps:
          checkpoints.save(manager, step, state, loader_state)
      if stopped and step > resumed_from and manager.latest_step() != step:
        checkpoints.save(manager, step, state, loader_state)
    finally:
      prefetcher.close()
      if tracing:
        jax.profiler.stop_trace()
      manager.wait_until_finished()
      manager.close()
      progress.close()
  if stopped:
    preemption.stop(f"{name} saved step {step} of {num_steps} in {ckpt_dir}")
  return FitResult(state=state, last_metrics=host_metrics,
                   seconds=time.perf_counter() - start, resumed_from=resumed_from)

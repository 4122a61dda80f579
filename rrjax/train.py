"""One training loop for everything that is trained: the student, linear probes and the
supervised baseline.

Each of them is a *loss function* `loss_fn(params, model_state, batch, key, frozen)`
returning `(loss, (new_model_state, metrics))`; `train_step` turns it into a jittable
update (corruption keys, gradients, optimiser, float16 loss scaling, norms), and `fit`
runs it under `jax.jit` on the data mesh with orbax checkpoints, resumable to the exact
parameters of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from rrjax import sharding
from rrjax import writers as writers_lib

LossFn = Callable[..., tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]]

# Dynamic float16 loss scaling: halve on overflow, double after this many good steps.
LOSS_SCALE_PERIOD = 2000


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


@dataclasses.dataclass
class FitResult:
  state: TrainState
  last_metrics: dict[str, float]
  seconds: float
  resumed_from: int


def _checkpoint_manager(directory: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _restore(manager: ocp.CheckpointManager, step: int, like: TrainState, *,
             with_loader: bool):
  """(state, loader state or None) of checkpoint `step`, shaped and sharded like `like`."""
  items = {"state": ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                                          like))}
  if with_loader:
    items["loader"] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored.state, restored.get("loader")


def load_final_state(workdir: str, like: TrainState, mesh) -> TrainState:
  """The last checkpointed state of a run in `workdir` (e.g. a student trained by another
  experiment), restored onto `mesh`; FileNotFoundError if there is none."""
  ckpt_dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"no checkpoints in {ckpt_dir}; train that run first or fix the "
                            "path.")
  manager = ocp.CheckpointManager(ckpt_dir)
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no finished checkpoint in {ckpt_dir}.")
    like = sharding.replicate(like, mesh)
    return _restore(manager, step, like, with_loader=False)[0]
  finally:
    manager.close()


def _assert_finite(metrics: dict[str, float], step: int, directory: str) -> None:
  if not np.isfinite(metrics["loss"]):
    raise FloatingPointError(
        f"the loss became {metrics['loss']} at step {step}; training stopped. The last good "
        f"checkpoint is kept in {directory}. Lower the learning rate, enable "
        "optimizer.grad_clip_norm, or use float32/bfloat16 compute.")


def fit(*, state: TrainState, loss_fn: LossFn, loader, num_steps: int, mesh,
        key: jax.Array, frozen=None, workdir: str, prepare_batch=lambda batch: batch,
        checkpoint_every: int = 1000, keep_checkpoints: int = 3, log_every: int = 50,
        writer: writers_lib.MetricWriter | None = None, name: str = "train",
        dynamic_loss_scale: bool = False, shard_params: bool = False) -> FitResult:
  """Trains `state` for `num_steps` steps of `loss_fn` on batches from `loader`.

  Args:
    loader: yields host-local batches (dicts of numpy arrays) and has `get_state()` /
      `set_state(dict)` giving its exact position, saved with every checkpoint.
    prepare_batch: host-side hook adding what the step needs to a batch (e.g. cached
      teacher embeddings looked up by id and view).
    workdir: checkpoints go to `workdir/checkpoints`; an existing one is resumed.
    dynamic_loss_scale: float16 training; `state.loss_scale` is the initial scale.
    shard_params: split large parameters and optimiser moments over the data axis
      instead of replicating them (`sharding.place_state`); same results, less memory.
  """
  writer = writer or writers_lib.MetricWriter(None)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  manager = _checkpoint_manager(ckpt_dir, keep_checkpoints)
  replicated = sharding.replicated(mesh)
  # A copy: the step donates its input state, and the caller may still hold this one.
  state = sharding.place_state(jax.tree.map(jnp.copy, state), mesh, shard_params)
  frozen = sharding.replicate(frozen, mesh)
  resumed_from = manager.latest_step() or 0
  if resumed_from:
    state, loader_state = _restore(manager, resumed_from, state, with_loader=True)
    loader.set_state(loader_state)
    logging.info("%s: resumed from step %d in %s", name, resumed_from, ckpt_dir)

  step_fn = jax.jit(
      lambda s, b, k, f: train_step(s, b, k, f, loss_fn=loss_fn,
                                    dynamic_loss_scale=dynamic_loss_scale),
      out_shardings=(jax.tree.map(lambda x: x.sharding, state), replicated),
      donate_argnums=0)
  key = sharding.replicate(key, mesh)
  start = time.perf_counter()
  progress = writers_lib.Progress(name, total=num_steps, initial=resumed_from)
  metrics, host_metrics = None, {}
  iterator: Iterator = iter(loader)
  step = resumed_from
  try:
    while step < num_steps:
      batch = sharding.shard_batch(prepare_batch(next(iterator)), mesh)
      # One step in flight: the next batch is read and transferred while the previous
      # step runs, but two steps never run at once. (On CPU devices, two programs with
      # collectives running together can deadlock XLA's in-process rendezvous.)
      jax.block_until_ready(metrics)
      state, metrics = step_fn(state, batch, key, frozen)
      step += 1
      progress.update(step)
      if step % log_every == 0 or step == num_steps or step % checkpoint_every == 0:
        host_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _assert_finite(host_metrics, step, ckpt_dir)
        writer.write_scalars(step, {f"{name}/{k}": v for k, v in host_metrics.items()})
      if step % checkpoint_every == 0 or step == num_steps:
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), loader=ocp.args.JsonSave(loader.get_state())))
  finally:
    manager.wait_until_finished()
    manager.close()
    progress.close()
  return FitResult(state=state, last_metrics=host_metrics,
                   seconds=time.perf_counter() - start, resumed_from=resumed_from)

"""Training checkpoints: orbax checkpoints of a training state and its loader's position.

`resume` restores the newest checkpoint that reads back, setting damaged ones aside;
`load_final_state` gives another stage (or run) the last state a training stage saved.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from rrjax import sharding


def manager(directory: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _restore(manager: ocp.CheckpointManager, step: int, like, *,
             with_loader: bool):
  """(state, loader state or None) of checkpoint `step`, shaped and sharded like `like`."""
  items = {"state": ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                                          like))}
  if with_loader:
    items["loader"] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored.state, restored.get("loader")


def _all_processes_agree(ok: bool) -> bool:
  """True when `ok` holds on every process (each process may read other shards)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def resume(manager: ocp.CheckpointManager, like, name: str):
  """(step, state, loader state) of the newest checkpoint that restores; (0, None, None)
  when there is none. A newer checkpoint that fails while an older one restores is
  damaged (a file truncated or missing, say by a kill while the file system was still
  writing): it moves to `checkpoints.damaged/` with a warning and the run goes on from
  the older one. When none restores, nothing is moved and the run stops rather than
  silently starting from step 0."""
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      state, loader_state = _restore(manager, step, like, with_loader=True)
      restored = True
    except Exception as e:  # orbax and tensorstore raise many kinds for unreadable files.
      logging.info("%s: checkpoint %d does not restore", name, step, exc_info=True)
      failures.append((step, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
      restored = False
    if _all_processes_agree(restored):
      if failures:
        _set_aside([s for s, _ in failures], manager.directory, name, step)
        manager.reload()
      return step, state, loader_state
  if failures:
    raise ValueError(
        f"{name}: no checkpoint in {manager.directory} restores (newest, step "
        f"{failures[0][0]}: {failures[0][1]}); if they belong to another config, use another "
        "--workdir; move them away to start this stage from step 0.")
  return 0, None, None


def _set_aside(steps: list[int], directory, name: str, resumed: int) -> None:
  """Keeps damaged checkpoints out of the manager's way without deleting them."""
  damaged = f"{os.fspath(directory).rstrip('/')}.damaged"
  if jax.process_index() == 0:
    os.makedirs(damaged, exist_ok=True)
    for step in steps:
      shutil.move(os.path.join(os.fspath(directory), str(step)),
                  os.path.join(damaged, f"{step}.{int(time.time())}"))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"rrjax.checkpoints set aside {directory}")
  logging.warning("%s: the checkpoint(s) of step %s do not restore (damaged; moved to %s, "
                  "the error is in log.txt); resuming from step %d.", name,
                  ", ".join(map(str, steps)), damaged, resumed)


def load_final_state(workdir: str, like, mesh):
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


def save(manager: ocp.CheckpointManager, step: int, state, loader_state: dict) -> None:
  """Checkpoint `step`: the training state and the loader's position (asynchronously)."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), loader=ocp.args.JsonSave(loader_state)))

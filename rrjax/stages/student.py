"""Stage "student": trains S so that S(A(x)) matches R(x) (SPEC §1-§2).

Artifact: `WORKDIR/student/checkpoints` (orbax; the last one is the trained student) and
`WORKDIR/student/done.json`. `load` gives the trained student's variables, from this
workdir or from `student.restore_from` (another run's workdir, SPEC E4).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from rrjax import checkpoints, models, objectives, train
from rrjax.stages import artifacts
from rrjax.stages.context import Context

NAME = "student"


def model_config(config) -> ml_collections.ConfigDict:
  """`config.student` with `teacher_name` resolved ("" = the teacher's checkpoint)."""
  cfg = ml_collections.ConfigDict(config.student.to_dict())
  cfg.teacher_name = cfg.teacher_name or config.teacher.name
  return cfg


def model(ctx: Context):
  return models.build_model(model_config(ctx.config), ctx.teacher.dim)


def initial_variables(ctx: Context) -> dict:
  cfg = model_config(ctx.config)
  if _starts_as_the_teacher(ctx.config, cfg):
    # The teacher has read these very weights (float32): reading the checkpoint again
    # costs time and a second copy. A copy of its arrays, as training donates its state.
    return jax.tree.map(jnp.copy, ctx.teacher.params)
  return models.init_variables(cfg, model(ctx), ctx.init_key("student_init"),
                               ctx.config.data.image_size)


def _starts_as_the_teacher(config, cfg) -> bool:
  """Whether the student's initial variables are the teacher's image tower, as it holds
  them: a CLIP student from the teacher's own checkpoint, a float32 teacher."""
  return (cfg.model == "clip" and cfg.init == "teacher" and config.teacher.kind == "clip"
          and cfg.teacher_name == config.teacher.name and config.teacher.dtype == "float32")


def split_variables(variables: dict) -> tuple[Any, dict]:
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def initial_state(ctx: Context, total_steps: int) -> train.TrainState:
  return _state(ctx, initial_variables(ctx), total_steps)


def _state(ctx: Context, variables: dict, total_steps: int) -> train.TrainState:
  config = ctx.config
  params, model_state = split_variables(variables)
  tx = train.make_optimizer(
      learning_rate=config.optimizer.learning_rate, total_steps=total_steps,
      weight_decay=config.optimizer.weight_decay, warmup_steps=config.optimizer.warmup_steps,
      grad_clip_norm=config.optimizer.grad_clip_norm)
  float16 = config.student.dtype == "float16" and config.optimizer.loss_scale > 0
  return train.create_state(params, model_state, tx,
                            config.optimizer.loss_scale if float16 else 0.0)


def run(ctx: Context) -> dict:
  """Trains (or resumes) the student; returns the stage summary."""
  config = ctx.config
  if ctx.uses_cache():
    ctx.train_cache  # Fingerprint and completeness checked before anything compiles.
  loader = ctx.train_loader(ctx.train_source, config.batch_size)
  num_steps = config.num_epochs * loader.steps_per_epoch
  state = initial_state(ctx, num_steps)
  online = not ctx.uses_cache()
  loss_fn = objectives.student_loss(
      model(ctx), ctx.operator, kind=config.loss.kind, temperature=config.loss.temperature,
      online_teacher=objectives.teacher_on_uint8(ctx.teacher) if online else None,
      per_device_mesh=ctx.mesh if config.student.batch_norm == "per_device" else None)
  try:
    result = train.fit(
        state=state, loss_fn=loss_fn, loader=loader, num_steps=num_steps, mesh=ctx.mesh,
        key=ctx.key("student"), frozen=ctx.teacher.params if online else None,
        workdir=artifacts.stage_dir(ctx.workdir, NAME),
        prepare_batch=(lambda b: b) if online else ctx.with_targets,
        checkpoint_every=config.checkpoint_every_steps, keep_checkpoints=config.keep_checkpoints,
        log_every=config.log_every_steps, writer=ctx.writer, name=NAME,
        dynamic_loss_scale=bool(state.loss_scale != 1.0), shard_params=config.shard_params,
        profile_steps=tuple(config.profile_steps))
  finally:
    loader.close()
  return {"final_metrics": result.last_metrics, "resumed_from": result.resumed_from,
          "train_seconds": result.seconds}


def source_workdir(config, workdir: str) -> str:
  """The workdir whose student this run uses: `student.restore_from`, else its own."""
  return config.student.restore_from or workdir


def exists(config) -> bool:
  """Whether this run has a trained student to evaluate (trained here or restored)."""
  return NAME in config.stages or bool(config.student.restore_from)


def zero_variables(module, image_size: int) -> dict:
  """Variables shaped like `module`'s, all zeros: a restore target. Restoring overwrites
  every leaf, so no initial weights need reading (a teacher checkpoint, ImageNet
  weights) or computing."""
  shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def load(ctx: Context, needed_by: str) -> dict:
  """The trained student's variables (params and model state). The eval stage restores
  it once for all its evaluators (`rrjax.evaluators.common.RunModels`)."""
  workdir = source_workdir(ctx.config, ctx.workdir)
  artifacts.require(workdir, NAME, needed_by,
                    alternative="set student.restore_from to a finished run's workdir")
  target = _state(ctx, zero_variables(model(ctx), ctx.config.data.image_size), 1)
  state = checkpoints.load_final_state(artifacts.stage_dir(workdir, NAME), target, ctx.mesh)
  return {"params": state.params, **state.model_state}


def features(ctx: Context, needed_by: str) -> tuple[objectives.FeatureFn, dict]:
  """(features_fn, variables) of the trained student: its embeddings of A(x)."""
  return objectives.student_features(model(ctx)), load(ctx, needed_by)

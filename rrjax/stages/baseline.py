"""Stage "baseline": the supervised baseline of SPEC §5, a classifier (`config.baseline`)
fine-tuned end to end with cross-entropy on A(x).

Artifact: `WORKDIR/baseline/checkpoints` (the last one is the trained classifier) and
`WORKDIR/baseline/done.json`.
"""

from __future__ import annotations

from rrjax import checkpoints, models, objectives, train
from rrjax.stages import artifacts
from rrjax.stages import student as student_stage
from rrjax.stages.context import Context

NAME = "baseline"


def model(ctx: Context):
  return models.build_model(ctx.config.baseline, ctx.train_source.num_classes)


def initial_state(ctx: Context, total_steps: int) -> train.TrainState:
  return _state(ctx, models.init_variables(ctx.config.baseline, model(ctx),
                                           ctx.init_key("baseline_init"),
                                           ctx.config.data.image_size), total_steps)


def _state(ctx: Context, variables: dict, total_steps: int) -> train.TrainState:
  params, model_state = student_stage.split_variables(variables)
  tx = train.make_optimizer(learning_rate=ctx.config.baseline.learning_rate,
                            total_steps=total_steps)
  return train.create_state(params, model_state, tx)


def run(ctx: Context) -> dict:
  config = ctx.config
  loader = ctx.train_loader(ctx.train_source, config.baseline.batch_size)
  num_steps = config.baseline.num_epochs * loader.steps_per_epoch
  try:
    result = train.fit(
        state=initial_state(ctx, num_steps),
        loss_fn=objectives.classifier_loss(model(ctx), ctx.operator), loader=loader,
        num_steps=num_steps, mesh=ctx.mesh, key=ctx.key(NAME),
        workdir=artifacts.stage_dir(ctx.workdir, NAME),
        checkpoint_every=config.checkpoint_every_steps, keep_checkpoints=config.keep_checkpoints,
        log_every=config.log_every_steps, writer=ctx.writer, name=NAME,
        shard_params=config.shard_params, profile_steps=tuple(config.profile_steps))
  finally:
    loader.close()
  return {"final_metrics": result.last_metrics, "train_seconds": result.seconds}


def load(ctx: Context, needed_by: str) -> dict:
  """The trained classifier's variables (params and model state)."""
  artifacts.require(ctx.workdir, NAME, needed_by)
  target = _state(ctx, student_stage.zero_variables(model(ctx), ctx.config.data.image_size), 1)
  state = checkpoints.load_final_state(artifacts.stage_dir(ctx.workdir, NAME), target, ctx.mesh)
  return {"params": state.params, **state.model_state}

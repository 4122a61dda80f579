"""Every jitted program rrjax runs, lowered for GPUs and TPUs from this CPU machine.

`jax.export` lowers for a named platform without its device, so the suite checks what
an accelerator would be given: each program lowers for `cuda` and `tpu`, calls nothing
on the host and no CPU-only library, and computes every convolution's kernel gradient as
a convolution (the CPU's shifted-matmul form, `rrjax.models.convolutions`, stays on CPU).
Lowering compiles nothing: RN101-sized students cost a few seconds each.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import pytest

from rrjax import evaluate, logistic_probe, objectives, operators, sharding, train
from rrjax.benchmark import run as benchmark_run
from rrjax.cache.build import TeacherForward
from rrjax.evaluators import adversarial as adversarial_evaluator
from rrjax.models import clip, resnet
from rrjax.stages import probe as probe_stage
from rrjax.teachers import tflite_mobilenet
from rrjax.teachers.clip import CLIPTeacher

ACCELERATORS = ("cuda", "tpu")
BATCH = 8  # One image per simulated device.
# What jax itself emits to place shards; anything else (a host callback, a LAPACK call,
# a CPU runtime routine) would tie the program to the host or to a CPU.
PORTABLE_CUSTOM_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh()


def _abstract(tree, placement):
  """ShapeDtypeStructs of `tree`'s leaves (arrays or shapes) with `placement`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement),
                      tree)


def _images(mesh, size: int, batch: int = BATCH):
  return jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8,
                              sharding=sharding.data_sharding(mesh))


def lower(fn, args, mesh, platform: str) -> str:
  """The StableHLO text of `fn(*args)` exported for `platform`, traced under the mesh
  as `train.fit` and the evaluations trace it."""
  with jax.set_mesh(mesh):
    return jax.export.export(fn, platforms=[platform])(*args).mlir_module()


def check_portable(fn, args, mesh) -> dict[str, str]:
  """Lowers `fn` for each accelerator; asserts no host callback or CPU-only call."""
  programs = {}
  for platform in ACCELERATORS:
    text = lower(fn, args, mesh, platform)
    calls = set(re.findall(r"stablehlo\.custom_call @([\w.]+)", text))
    assert calls <= PORTABLE_CUSTOM_CALLS, (platform, calls - PORTABLE_CUSTOM_CALLS)
    assert "callback" not in text, platform
    programs[platform] = text
  return programs


def convolutions(text: str) -> int:
  return text.count("stablehlo.convolution")


def conv_layers(variables) -> int:
  """The module's convolutions: its 4-D ("kernel" [k, k, C, D]) parameters."""
  return sum(x.ndim == 4 for x in jax.tree.leaves(variables["params"]))


def student_step(module, variables, operator, mesh, image_size: int, dim: int,
                 batch_norm: str = "global"):
  """`train.fit`'s program for the paper's student loss, and its abstract arguments."""
  params, model_state = variables["params"], {k: v for k, v in variables.items()
                                              if k != "params"}
  tx = train.make_optimizer(learning_rate=1e-4, total_steps=10, weight_decay=1e-4)
  state = jax.eval_shape(lambda: train.create_state(params, model_state, tx))
  replicated = sharding.replicated(mesh)
  loss_fn = objectives.student_loss(module, operator, kind="student_teacher", temperature=0.1,
                                    per_device_mesh=mesh if batch_norm == "per_device" else None)
  step = train.jitted_step(loss_fn, jax.tree.map(lambda _: replicated, state), mesh)
  batch = {"image": _images(mesh, image_size),
           "target": jax.ShapeDtypeStruct((BATCH, dim), jnp.float32,
                                          sharding=sharding.data_sharding(mesh))}
  stop = jax.ShapeDtypeStruct((BATCH,), jnp.bool_, sharding=sharding.data_sharding(mesh))
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
  return step, (_abstract(state, replicated), batch, key, None, stop)


def _shapes(module, image_size: int):
  return jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0),
                        jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))


CLIP_RN101 = clip.CLIPSpec(embed_dim=512, text=None, vision=clip.VisionSpec(
    kind="resnet", image_size=64, width=64, layers=(3, 4, 23, 3), heads=32))


@pytest.mark.parametrize("name", ["resnet101", "clip_rn101"])
def test_rn101_students_compute_every_kernel_gradient_as_a_convolution(name, mesh):
  """The training step of both paper-sized students: on accelerators each of the F
  convolutions appears 3 times (forward, kernel gradient, input gradient) but for the
  stem's input gradient, which nothing needs (the images are not differentiated); on
  CPU the 1x1 convolutions are matmuls and the stride-1 kernel gradients shifted
  matmuls, as before."""
  module = (resnet.resnet(name, 512) if name == "resnet101"
            else clip.CLIPImageEncoder(CLIP_RN101))
  variables = _shapes(module, 64)
  layers = conv_layers(variables)
  assert layers == {"resnet101": 104, "clip_rn101": 106}[name]
  step, args = student_step(module, variables, operators.build({"kind": "mask", "p": 0.9}),
                            mesh, 64, 512)
  programs = check_portable(step, args, mesh)
  for platform in ACCELERATORS:
    assert convolutions(programs[platform]) == 3 * layers - 1 >= 100, platform
  assert convolutions(lower(step, args, mesh, "cpu")) < layers


@pytest.mark.parametrize("vision, operator", [
    ("vit", {"kind": "mask", "p": 0.9}),
    # A choice groups each device's images inside shard_map, and per-device BatchNorm
    # runs the ResNet in one: both must lower too.
    ("resnet", {"kind": "choice", "ops": [{"kind": "mask", "p": 0.5},
                                          {"kind": "noise", "sigma": 0.1}]})])
def test_tiny_clip_student_steps_lower_for_accelerators(vision, operator, mesh):
  spec = clip.tiny_spec(vision, 32)
  module = clip.CLIPImageEncoder(spec)
  variables = _shapes(module, 32)
  step, args = student_step(module, variables, operators.build(operator), mesh, 32,
                            spec.embed_dim, "per_device" if vision == "resnet" else "global")
  for text in check_portable(step, args, mesh).values():
    assert convolutions(text) == 3 * conv_layers(variables) - 1


def test_resnet_student_and_probe_steps_lower_for_accelerators(mesh):
  """A ResNet student's step (bfloat16 compute, the accelerators' default), and the probe
  stage's Adam step and L-BFGS feature pass on its frozen features."""
  module = resnet.ResNet(stage_sizes=(1, 1), block="bottleneck", num_outputs=16, width=8,
                         dtype=jnp.bfloat16)
  variables = _shapes(module, 32)
  mask = operators.build({"kind": "mask", "p": 0.9})
  step, args = student_step(module, variables, mask, mesh, 32, 16)
  for text in check_portable(step, args, mesh).values():
    assert convolutions(text) == 3 * conv_layers(variables) - 1
    assert "bf16" in text

  replicated = sharding.replicated(mesh)
  head = jax.eval_shape(lambda: objectives.linear_head(10).init(
      jax.random.key(0), jnp.zeros((1, 16)))["params"])
  tx = train.make_optimizer(learning_rate=1e-3, total_steps=10)
  state = jax.eval_shape(lambda: train.create_state(head, {}, tx))
  loss_fn = objectives.probe_loss(objectives.student_features(module), mask, 10)
  probe_step = train.jitted_step(loss_fn, jax.tree.map(lambda _: replicated, state), mesh)
  batch = {"image": _images(mesh, 32),
           "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32,
                                         sharding=sharding.data_sharding(mesh))}
  stop = jax.ShapeDtypeStruct((BATCH,), jnp.bool_, sharding=sharding.data_sharding(mesh))
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
  frozen = _abstract(variables, replicated)
  check_portable(probe_step, (_abstract(state, replicated), batch, key, frozen, stop), mesh)
  # The converged (L-BFGS) probe's feature pass on the same features.
  features = probe_stage._compiled_features(objectives.student_features(module), mask,
                                            replicated)
  check_portable(features, (frozen, dict(batch, id=batch["label"]), key,
                            jax.ShapeDtypeStruct((), jnp.int32)), mesh)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
  return CLIPTeacher(clip.create_tiny_clip(str(tmp_path_factory.mktemp("tiny_rn")),
                                           vision="resnet", image_size=32))


def _eval_batch(mesh, size: int):
  data = sharding.data_sharding(mesh)
  return {"image": _images(mesh, size),
          "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32, sharding=data),
          "id": jax.ShapeDtypeStruct((BATCH,), jnp.int32, sharding=data),
          "valid": jax.ShapeDtypeStruct((BATCH,), jnp.bool_, sharding=data)}


def test_teacher_forward_and_evaluations_lower_for_accelerators(tiny_teacher, mesh):
  """The cache's teacher forward, the eval stage's R-draw forward (here of the zero-shot
  benchmark's logits), the benchmark's APGD-CE + APGD-T and the eval stage's APGD."""
  replicated = sharding.replicated(mesh)
  params = _abstract(tiny_teacher.params, replicated)
  forward = TeacherForward(tiny_teacher, mesh)
  check_portable(forward._apply, (params, _images(mesh, 32)), mesh)

  logits, output_fn = benchmark_run._functions(
      lambda v, images01: tiny_teacher.encoder.apply(v, images01)[0])
  variables = {"image": params, "scale": jax.ShapeDtypeStruct((), jnp.float32),
               "text": jax.ShapeDtypeStruct((10, tiny_teacher.dim), jnp.float32)}
  variables = _abstract(variables, replicated)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
  index = jax.ShapeDtypeStruct((), jnp.int32)
  mask = operators.build({"kind": "mask", "p": 0.9})
  draws = evaluate._compiled_draws(output_fn, mask.program, 2, replicated)
  check_portable(draws, (variables, _eval_batch(mesh, 32), key,
                         jax.ShapeDtypeStruct((), jnp.float32)), mesh)

  attack = benchmark_run._compiled_attack(logits, 2, 3, replicated)
  check_portable(attack, (variables, _eval_batch(mesh, 32), key, index,
                          jax.ShapeDtypeStruct((), jnp.float32)), mesh)

  attack = adversarial_evaluator._compiled_attack(
      lambda v, images01, batch: logits(v, images01), 2, ("ce", "dlr"), "linf", replicated)
  check_portable(attack, (variables, _eval_batch(mesh, 32), key, index,
                          jax.ShapeDtypeStruct((2,), jnp.float32)), mesh)


def test_lbfgs_probe_solver_lowers_for_accelerators(mesh):
  """The converged probe's L-BFGS loop (one compilation for every l2 and weighting)."""
  features, classes, rows = 16, 10, 64
  params = {"kernel": jax.ShapeDtypeStruct((features, classes), jnp.float32),
            "bias": jax.ShapeDtypeStruct((classes,), jnp.float32)}
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)
  check_portable(logistic_probe._minimise, (
      params, jax.ShapeDtypeStruct((rows, features), jnp.float32),
      jax.ShapeDtypeStruct((rows,), jnp.int32), jax.ShapeDtypeStruct((rows,), jnp.float32),
      scalar(jnp.float32), scalar(jnp.int32), scalar(jnp.float32)), mesh)


def test_mobilenet_plug_in_teacher_lowers_for_accelerators(mesh):
  """The .tflite MobileNet v1 teacher's forward (rrjax.teachers.tflite_mobilenet, no file
  needed for its shapes): every depthwise convolution is one convolution op on an
  accelerator; on CPU they are shifted multiply-adds."""
  module = tflite_mobilenet.MobileNetV1()
  variables = jax.eval_shape(module.init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.uint8))
  forward = jax.jit(module.apply, out_shardings=sharding.data_sharding(mesh))
  args = (_abstract(variables, sharding.replicated(mesh)), _images(mesh, 224))
  layers = 1 + 2 * len(tflite_mobilenet.MOBILENET_V1_BLOCKS)
  for text in check_portable(forward, args, mesh).values():
    assert convolutions(text) == layers
  assert convolutions(lower(forward, args, mesh, "cpu")) == layers - len(
      tflite_mobilenet.MOBILENET_V1_BLOCKS)

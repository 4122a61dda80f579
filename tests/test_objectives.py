"""Stage objectives and feature functions against direct numpy computations, and the
metric writer's files."""

import json
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rrjax import evaluate, objectives, operators, sharding, writers

# Numerically sensitive: sharded objectives against single-device references.
# .ci/run runs these tests again with XLA's CPU code capped at AVX.
pytestmark = pytest.mark.numerics


class TinyNet(nn.Module):
  @nn.compact
  def __call__(self, images01, *, train: bool):
    x = jnp.mean(images01, axis=(1, 2))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    return nn.Dense(3)(x), {"pre_logits": x}


@pytest.fixture(scope="module")
def net():
  model = TinyNet()
  return model, model.init(jax.random.key(0), jnp.zeros((2, 4, 4, 3)), train=False)


def _batch(n=6):
  rng = np.random.default_rng(0)
  return {"image": rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8),
          "label": rng.integers(0, 3, n).astype(np.int32),
          "target": rng.normal(size=(n, 3)).astype(np.float32)}


def test_to_uint8_clips_and_rounds():
  got = objectives.to_uint8(jnp.array([-0.2, 0.0, 0.5, 0.999, 1.7]))
  np.testing.assert_array_equal(got, [0, 0, 128, 255, 255])
  assert got.dtype == jnp.uint8
  np.testing.assert_allclose(objectives.to_unit_range(jnp.array([0, 255], jnp.uint8)), [0, 1])


def test_apply_model_updates_state_only_in_training(net):
  model, variables = net
  images = objectives.to_unit_range(_batch()["image"])
  _, aux, new_state = objectives.apply_model(model, variables, images, train=True)
  assert not np.allclose(new_state["batch_stats"]["BatchNorm_0"]["mean"],
                         variables["batch_stats"]["BatchNorm_0"]["mean"])
  _, _, same = objectives.apply_model(model, variables, images, train=False)
  np.testing.assert_array_equal(same["batch_stats"]["BatchNorm_0"]["mean"],
                                variables["batch_stats"]["BatchNorm_0"]["mean"])
  features = objectives.pre_logits_features(model)(variables, images, {})
  np.testing.assert_allclose(features, objectives.apply_model(model, variables, images,
                                                              train=False)[1]["pre_logits"])


class StatelessNet(nn.Module):
  @nn.compact
  def __call__(self, images01, *, train: bool):
    return nn.Dense(3)(jnp.mean(images01, axis=(1, 2))), {}


def test_apply_model_without_state_in_training():
  """A model with parameters only (a CLIP ViT student) trains like one with state."""
  model = StatelessNet()
  variables = model.init(jax.random.key(0), jnp.zeros((2, 4, 4, 3)), train=False)
  images = objectives.to_unit_range(_batch()["image"])
  outputs, _, state = objectives.apply_model(model, variables, images, train=True)
  assert outputs.shape == (6, 3) and state == {}


def test_probe_loss_is_cross_entropy_of_a_linear_map_on_normalised_features(net):
  model, variables = net
  batch = _batch()
  head = objectives.linear_head(3).init(jax.random.key(1), jnp.zeros((1, 3)))["params"]
  identity = operators.build({"kind": "identity"})
  loss, (_, metrics) = objectives.probe_loss(objectives.cached_clean_teacher_features,
                                             identity, 3)(head, {}, batch, jax.random.key(0),
                                                          None)
  features = batch["target"] / np.linalg.norm(batch["target"], axis=1, keepdims=True)
  logits = features @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
  log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(loss, -np.mean(log_probs[np.arange(6), batch["label"]]), rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"],
                             np.mean(np.argmax(logits, 1) == batch["label"]))


def test_student_loss_uses_cache_targets_or_the_online_teacher(net):
  model, variables = net
  batch = _batch()
  identity = operators.build({"kind": "identity"})
  params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
  cached = objectives.student_loss(model, identity, kind="mse", temperature=0.1)
  teacher_apply = lambda p, images: images.astype(jnp.float32).mean((1, 2)) * p
  online = objectives.student_loss(model, identity, kind="mse", temperature=0.1,
                                   online_teacher=teacher_apply)
  loss_cached = cached(params, state, dict(batch, target=teacher_apply(2.0, batch["image"])),
                       jax.random.key(0), None)[0]
  loss_online = online(params, state, batch, jax.random.key(0), 2.0)[0]
  np.testing.assert_allclose(loss_cached, loss_online, rtol=1e-6)


def test_classifier_loss_corrupts_then_classifies(net):
  model, variables = net
  batch = _batch()
  mask_all = operators.build({"kind": "mask", "p": 1.0})
  params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
  loss, (new_state, _) = objectives.classifier_loss(model, mask_all)(
      params, state, batch, jax.random.key(0), None)
  # Every pixel masked: the network sees only zeros, so its logits are the same for all.
  logits, _, _ = objectives.apply_model(model, variables, jnp.zeros((6, 4, 4, 3)), train=True)
  log_probs = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(loss, -np.mean(log_probs[np.arange(6), batch["label"]]), rtol=1e-5)
  assert "batch_stats" in new_state


def test_metric_writer_writes_jsonl_and_tensorboard(tmp_path):
  writer = writers.MetricWriter(str(tmp_path))
  writer.write_scalars(3, {"student/loss": 1.5})
  writer.write_scalars(4, {"student/loss": 1.25})
  writer.close()
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["student/loss"]) for r in records] == [(3, 1.5), (4, 1.25)]
  assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())
  writers.MetricWriter(None).write_scalars(0, {"x": 1.0})  # Inactive: writes nothing.


class EmbedOnlyTeacher:
  """A plug-in teacher with `embed` only (no params/apply), in numpy with float64 output,
  as `rrjax.teachers.plugin` allows for a cached teacher."""
  image_size, dim, fingerprint = 4, 5, "embed-only"

  def __init__(self):
    self.projection = np.random.default_rng(0).normal(size=(3, self.dim))

  def embed(self, images):
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8
    return images.mean(axis=(1, 2)) @ self.projection


def _context(teacher, probe_features, stages=("cache", "probe", "eval")):
  from rrjax import config as config_lib
  config = config_lib.base_config()
  config.probe.features, config.stages = probe_features, stages
  return SimpleNamespace(config=config, teacher=teacher)


def test_embed_only_plugin_teacher_features_under_jit():
  """probe.features='teacher' (SPEC E11) and the clean-teacher probe evaluated without a
  student (E7) work with a plug-in that has only `embed`: its features, under jit and
  inside the probe's gradient step, are `embed` of the corrupted images as uint8."""
  from rrjax.evaluators import common
  from rrjax.stages import probe as probe_stage
  teacher = EmbedOnlyTeacher()
  features_fn, variables = probe_stage.features(_context(teacher, "teacher"))
  assert variables is None
  same_fn, _ = common.RunModels(_context(teacher, "clean_teacher")).probe_features(
      "classification")
  batch = _batch()
  mask = operators.build({"kind": "mask", "p": 0.5})
  corrupted = mask(jax.random.key(1), objectives.to_unit_range(batch["image"]))
  expected = teacher.embed(np.asarray(objectives.to_uint8(corrupted)))
  for fn in (features_fn, same_fn):
    got = jax.jit(fn)(variables, corrupted, batch)
    assert got.dtype == jnp.float32 and got.shape == (6, teacher.dim)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

  # The probe's loss and gradient: the head is trained on exactly these features.
  head = objectives.linear_head(3).init(jax.random.key(2), jnp.zeros((1, teacher.dim)))["params"]
  loss_fn = objectives.probe_loss(features_fn, mask, 3)
  loss, grads = jax.jit(jax.value_and_grad(lambda h: loss_fn(h, {}, batch, jax.random.key(1),
                                                             None)[0]))(head)
  logits = objectives.probe_logits(head, jnp.asarray(expected, jnp.float32), 3)
  np.testing.assert_allclose(loss, optax.softmax_cross_entropy_with_integer_labels(
      logits, batch["label"]).mean(), rtol=1e-5)
  assert np.all(np.isfinite(grads["kernel"])) and np.any(grads["kernel"] != 0)


def test_embed_only_plugin_teacher_in_a_sharded_evaluation():
  """In `collect_outputs` on 8 devices (batches sharded over the mesh), as evaluations run."""
  teacher = EmbedOnlyTeacher()
  features_fn, variables = objectives.teacher_features(teacher)
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (16, 4, 4, 3), dtype=np.uint8)
  batches = [{"image": images[s:s + 8], "label": np.zeros(8, np.int32),
              "id": np.arange(s, s + 8, dtype=np.int32), "valid": np.ones(8, bool)}
             for s in (0, 8)]
  outputs = evaluate.collect_outputs(
      features_fn, variables, batches, mesh=sharding.make_mesh(jax.devices()),
      key=jax.random.key(0), repeats=2, operator=operators.build({"kind": "identity"}))
  assert outputs["outputs"].shape == (2, 16, teacher.dim)
  for draw in outputs["outputs"]:
    np.testing.assert_allclose(draw, teacher.embed(images), rtol=1e-5, atol=1e-5)


def test_teacher_features_resize_views_to_the_teachers_size():
  """A student trained at a lower resolution: the teacher sees its views resized on
  device to its own input size (antialiased bilinear, jax.image.resize)."""
  class Linear:
    image_size, dim = 8, 3
    params = np.arange(8 * 8 * 3 * 3, dtype=np.float32).reshape(192, 3) / 1e3

    def apply(self, params, images):
      return images.reshape(images.shape[0], -1).astype(jnp.float32) @ params

  teacher = Linear()
  images01 = np.random.default_rng(0).random((2, 6, 6, 3)).astype(np.float32)
  features_fn, variables = objectives.teacher_features(teacher)
  resized = jax.image.resize(images01, (2, 8, 8, 3), "linear", antialias=True)
  expected = teacher.apply(teacher.params, objectives.to_uint8(resized))
  np.testing.assert_allclose(jax.jit(features_fn)(variables, images01, {}), expected, rtol=1e-6)
  uint8 = objectives.to_uint8(images01)
  np.testing.assert_allclose(
      objectives.teacher_on_uint8(teacher)(teacher.params, uint8),
      teacher.apply(teacher.params, objectives.to_uint8(jax.image.resize(
          objectives.to_unit_range(uint8), (2, 8, 8, 3), "linear", antialias=True))),
      rtol=1e-6)

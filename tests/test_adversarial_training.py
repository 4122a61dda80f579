"""Adversarial training (operator kind "pgd" inside the student's loss) and the
"adversarial" evaluator, on a tiny conv student with BatchNorm and 8 x 8 images.

XLA compilation dominates on CPU, so the module compiles five programs: the training
step on 1 and on 8 devices (the attacked images are read out of it with
`jax.debug.callback`), one program holding every reference value, one with the losses
of a contrastive attack, and the evaluator's attack.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rrjax import adversarial, config as config_lib, evaluate, losses, objectives
from rrjax import operators, results, sharding, train
from rrjax.evaluators import adversarial as adversarial_evaluator

# Numerically sensitive: attacks inside sharded steps against references.
# .ci/run runs these tests again with XLA's CPU code capped at AVX.
pytestmark = pytest.mark.numerics


EPS, STEPS, STEP_SIZE = 4 / 255, 3, 2 / 255
PGD = {"kind": "pgd", "eps": EPS, "steps": STEPS, "step_size": STEP_SIZE, "norm": "linf"}
MASK = {"kind": "mask", "p": 0.5}
KEY = jax.random.key(1)
STEP_KEY = jax.random.fold_in(KEY, 0)  # What `train.train_step` hands the loss at step 0.


class TinyStudent(nn.Module):
  momentum: float = 0.9

  @nn.compact
  def __call__(self, images01, *, train: bool):
    x = nn.Conv(4, (3, 3), strides=2, use_bias=False)(images01)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x)
    return nn.Dense(8)(jnp.mean(nn.relu(x), axis=(1, 2))), {}


MODEL = TinyStudent()


@jax.jit
def _init(images01, noise):
  variables = MODEL.init(jax.random.key(0), images01, train=False)
  # BatchNorm statistics of this batch (momentum 0), as a trained student's would be: the
  # attack's inference-mode student is then the training-mode one.
  variables = {"params": variables["params"], **TinyStudent(momentum=0.0).apply(
      variables, images01, train=True, mutable=["batch_stats"])[1]}
  # Targets near the student's own clean embeddings, as when FARE starts from the teacher.
  return variables, MODEL.apply(variables, images01, train=False)[0] + 0.05 * noise


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  variables, targets = _init(objectives.to_unit_range(images),
                             rng.normal(size=(16, 8)).astype(np.float32))
  tx = train.make_optimizer(learning_rate=1e-2, total_steps=4)
  state = train.create_state(variables["params"], {"batch_stats": variables["batch_stats"]}, tx)
  return state, {"image": images, "target": np.asarray(targets)}


def _fare(variables, targets):
  """FARE's per-image loss, written out: the student in inference mode, float32."""
  return lambda x: losses.per_example_loss(MODEL.apply(variables, x, train=False)[0],
                                           targets, kind="mse")


def _train_step(mesh, state, batch):
  """One FARE step (attack loss "mse", loss.kind "mse") on `mesh`: (new state, loss,
  (clean, attacked) images as the operator saw and returned them)."""
  seen = []
  op = operators.build(PGD)

  def spy(rng, images, loss_fn=None):
    out = op(rng, images, loss_fn)
    jax.debug.callback(lambda i, o: seen.append((np.asarray(i), np.asarray(o))), images, out)
    return out

  loss_fn = objectives.student_loss(MODEL, spy, kind="mse", temperature=0.1)
  step = jax.jit(lambda s, b, k: train.train_step(s, b, k, None, loss_fn=loss_fn))
  new_state, metrics = step(jax.device_put(state, sharding.replicated(mesh)),
                            sharding.shard_batch(batch, mesh), KEY)
  jax.block_until_ready(new_state)
  return new_state, float(metrics["loss"]), seen[-1]


@pytest.fixture(scope="module")
def fare_steps(setup):
  state, batch = setup
  return {n: _train_step(sharding.make_mesh(jax.devices()[:n]), state, batch) for n in (1, 8)}


@pytest.fixture(scope="module")
def reference(setup):
  """Every value the tests compare with, from direct calls, in one compiled program."""
  state, batch = setup

  @jax.jit
  def run(state, batch):
    variables = {"params": state.params, **state.model_state}
    images = objectives.to_unit_range(batch["image"])
    fare = _fare(variables, batch["target"])
    clean_loss = objectives.student_loss(MODEL, operators.build({"kind": "identity"}),
                                         kind="mse", temperature=0.1)
    attacked = adversarial.pgd(fare, images, STEP_KEY, eps=EPS, steps=STEPS,
                               step_size=STEP_SIZE, norm="linf")
    trained = MODEL.apply(variables, attacked, train=True, mutable=["batch_stats"])[0][0]
    # compose(mask, pgd): stage j gets split(key)[j]; the attack gets the masked images.
    mask_key, attack_key = jax.random.split(STEP_KEY)
    masked = operators.build(MASK)(mask_key, images)
    return {"attacked": attacked,
            "attacked_loss": losses.contrastive_loss(trained, batch["target"], kind="mse"),
            "clean_loss": clean_loss(state.params, state.model_state, batch, STEP_KEY, None)[0],
            "masked": masked,
            "masked_attacked": adversarial.pgd(fare, masked, attack_key, eps=EPS,
                                               steps=STEPS, step_size=STEP_SIZE),
            "composed": operators.build({"kind": "compose", "ops": [MASK, PGD]})(
                STEP_KEY, images, lambda x, loss: fare(x))}

  return jax.device_get(run(state, batch))


def test_pgd_operator_raises_the_loss_and_is_a_direct_pgd_call(fare_steps, reference):
  _, loss, (_, attacked) = fare_steps[1]
  assert loss > 1.5 * reference["clean_loss"]
  np.testing.assert_allclose(attacked, reference["attacked"], atol=1e-6)
  np.testing.assert_allclose(loss, reference["attacked_loss"], rtol=1e-5)


def test_the_contrastive_attack_raises_the_contrastive_loss(setup):
  """loss "train": the attack maximises the run's own (contrastive) loss."""
  state, batch = setup

  @jax.jit
  def run(state, batch):
    return [objectives.student_loss(MODEL, operators.build(spec), kind="student_teacher",
                                    temperature=0.1)(
        state.params, state.model_state, batch, STEP_KEY, None)[0]
            for spec in ({"kind": "identity"}, dict(PGD, loss="train"))]

  clean, attacked = run(state, batch)
  assert attacked > clean + 0.05


def test_attacked_images_stay_in_the_ball_and_in_the_unit_range(fare_steps):
  for _, _, (clean, attacked) in fare_steps.values():
    delta = attacked.astype(np.float64) - clean
    assert np.max(np.abs(delta)) <= EPS + 1e-6
    assert np.max(np.abs(delta)) > EPS / 2  # The attack moved the images.
    assert attacked.min() >= 0 and attacked.max() <= 1


def test_sharded_step_equals_single_device(fare_steps):
  (state1, loss1, (_, images1)), (state8, loss8, (_, images8)) = fare_steps[1], fare_steps[8]
  np.testing.assert_allclose(images8, images1, atol=1e-6)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  for got, want in zip(jax.tree.leaves((state8.params, state8.model_state)),
                       jax.tree.leaves((state1.params, state1.model_state))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_compose_masks_first_then_attacks_the_masked_image(setup, reference):
  clean = np.asarray(objectives.to_unit_range(setup[1]["image"]))
  masked, composed = reference["masked"], reference["composed"]
  zeroed = (masked == 0) & (clean > 0)
  assert zeroed.mean() > 0.3
  # Masked pixels were attacked from 0, so they lie in [0, eps]; every pixel within eps.
  assert np.all(composed[zeroed] <= EPS + 1e-6) and composed[zeroed].max() > 0
  assert np.max(np.abs(composed - masked)) <= EPS + 1e-6
  np.testing.assert_allclose(composed, reference["masked_attacked"], atol=1e-6)


def test_pgd_where_no_model_is_trained_raises_naming_the_field(setup):
  state, batch = setup
  images = objectives.to_unit_range(batch["image"])
  with pytest.raises(ValueError, match=r"'operator.kind' is 'pgd'"):
    operators.build(PGD)(KEY, images)
  with pytest.raises(ValueError, match=r"'operator.ops\[1\].kind' is 'pgd'"):
    operators.build({"kind": "compose", "ops": [MASK, PGD]})(KEY, images)
  features = objectives.student_features(MODEL)
  variables = {"params": state.params, **state.model_state}
  head = {"kernel": np.zeros((8, 3), np.float32), "bias": np.zeros(3, np.float32)}
  probe = objectives.probe_loss(features, operators.build(PGD), 3)
  with pytest.raises(ValueError, match="'operator.kind' is 'pgd'"):
    probe(head, {}, dict(batch, label=np.zeros(16, np.int32)), KEY, variables)
  eval_batch = {"image": batch["image"], "label": np.zeros(16, np.int32),
                "id": np.arange(16, dtype=np.int32), "valid": np.ones(16, bool)}
  with pytest.raises(ValueError, match="'operator.kind' is 'pgd'"):
    evaluate.collect_outputs(features, variables, [eval_batch],
                             mesh=sharding.make_mesh(jax.devices()[:1]), key=KEY, repeats=1,
                             operator=operators.build(PGD))
  # The config check names the field before anything runs.
  config = config_lib.base_config()
  config.eval.operators = ({"kind": "identity"}, PGD)
  with pytest.raises(ValueError, match=r"eval.operators\[1\] \(pgd linf eps=4/255"):
    config_lib.check_config(config, 1)
  config.eval.operators = ({"kind": "identity"},)
  config.operator = {"kind": "compose", "ops": [MASK, PGD]}
  with pytest.raises(ValueError, match=r"operator.ops\[1\] is an attack.*\['probe'\]"):
    config_lib.check_config(config, 1)
  config.stages = ("cache", "student", "eval")
  config_lib.check_config(config, 1)


# ------------------------------------------------------------------- the evaluator

CLASSES, PIXELS = 3, 4 * 4 * 3
_W = np.random.default_rng(2).normal(size=(PIXELS, CLASSES)).astype(np.float32)


def _linear_logits(variables, images01, batch):
  return images01.reshape(images01.shape[0], -1) @ variables


def _eval_batches(n=20, batch_size=8):
  """Padded global batches; the labels are the classifier's clean predictions except for
  every fifth image (clean accuracy 80%)."""
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
  labels = np.argmax(images.reshape(n, -1) / 255 @ _W, -1).astype(np.int32)
  labels[::5] = (labels[::5] + 1) % CLASSES
  batches = []
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    valid = rows < n
    rows = np.where(valid, rows, 0)
    batches.append({"image": np.where(valid[:, None, None, None], images[rows], 0),
                    "label": np.where(valid, labels[rows], 0).astype(np.int32),
                    "id": rows.astype(np.int32), "valid": valid})
  return batches


def test_adversarial_evaluator_rows():
  eps = (1 / 255, 4 / 255, 1.0)
  accuracy = adversarial_evaluator.robust_accuracy(
      _linear_logits, jnp.asarray(_W), _eval_batches(), mesh=sharding.make_mesh(), key=KEY,
      eps=eps, steps=10, losses=("ce", "dlr"), norm="linf")
  assert accuracy["num_images"] == 20 and accuracy["clean"] == pytest.approx(80.0)
  robust = accuracy["robust"]
  assert all(r <= accuracy["clean"] for r in robust)
  assert robust[1] < accuracy["clean"] and robust[2] == 0.0  # eps = 1: any image at all.

  model = adversarial_evaluator.Model("student_probe", 0.1, "adam", _linear_logits, _W,
                                      "student_probe")
  rows = adversarial_evaluator.rows_of("adv", "adversarial", model, accuracy, eps=eps,
                                       steps=10, norm="linf")
  want_keys = set(results.row(evaluator="", type="", method="", spec={"kind": "identity"},
                              metrics={}, describe=operators.describe))
  assert all(set(row) == want_keys | {"top1"} for row in rows)
  assert [row["operator"] for row in rows] == [
      "identity", "pgd linf eps=1/255 steps=10", "pgd linf eps=4/255 steps=10",
      "pgd linf eps=1 steps=10"]
  assert [row["top1"]["mean"] for row in rows] == [accuracy["clean"], *robust]
  assert {(row["method"], row["label_fraction"], row["solver"], row["evaluator"],
           row["type"]) for row in rows} == {("student_probe", 0.1, "adam", "adv",
                                              "adversarial")}
  assert "### adv (adversarial)" in results.results_markdown(rows)

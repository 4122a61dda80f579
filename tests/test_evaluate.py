"""Evaluation metrics against direct computations, and the R-draw protocol's independence
from batch size and device count."""

import collections
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rrjax import evaluate, operators, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_classification_metrics_match_direct_counts():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 50, 7))
  labels = rng.integers(0, 7, 50)
  got = evaluate.classification_metrics(logits, labels)
  top1 = [100 * np.mean([np.argmax(l) == y for l, y in zip(r, labels)]) for r in logits]
  top5 = [100 * np.mean([y in np.argsort(l)[-5:] for l, y in zip(r, labels)]) for r in logits]
  assert got["top1"]["mean"] == pytest.approx(np.mean(top1))
  assert got["top1"]["std"] == pytest.approx(np.std(top1, ddof=1))
  assert got["top1"]["sem"] == pytest.approx(np.std(top1, ddof=1) / np.sqrt(3))
  assert got["top5"]["mean"] == pytest.approx(np.mean(top5))
  assert "auc" not in got


def test_binary_auc_matches_mann_whitney():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 80)
  scores = np.round(rng.normal(size=80) + labels, 1)  # rounding makes ties
  u = stats.mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
  want = u / (np.sum(labels == 1) * np.sum(labels == 0))
  assert evaluate.binary_auc(scores, labels) == pytest.approx(want)
  logits = np.stack([np.zeros(80), scores], -1)[None]
  assert evaluate.classification_metrics(logits, labels)["auc"]["mean"] == pytest.approx(want)


def test_agreement_metrics():
  rng = np.random.default_rng(2)
  teacher = rng.normal(size=(20, 6))
  assert evaluate.agreement_metrics(3 * teacher, teacher) == pytest.approx(
      {"cosine": 1.0, "retrieval_at_1": 1.0})
  shuffled = evaluate.agreement_metrics(teacher[::-1], teacher)
  assert shuffled["retrieval_at_1"] == 0.0 and shuffled["cosine"] < 0.5


def test_severity_is_declared_once_per_kind():
  assert operators.with_severity({"kind": "mask", "p": 0.9}, 0.99) == {"kind": "mask", "p": 0.99}
  assert operators.with_severity({"kind": "blur", "kernel_size": 21, "sigma": 5.0}, 9.0)[
      "sigma"] == 9.0
  assert [operators.severity(s) for s in ({"kind": "noise", "sigma": 0.3},
                                          {"kind": "mask", "p": (0.5, 0.9)},
                                          {"kind": "identity"})] == [0.3, None, None]
  assert set(operators.SEVERITY_FIELDS) <= set(operators.SCHEMA)
  for kind, field in operators.SEVERITY_FIELDS.items():
    assert field in operators.SCHEMA[kind]
  with pytest.raises(ValueError, match="eval.levels"):
    operators.with_severity({"kind": "identity"}, 0.5)


def _padded_batches(images, labels, batch_size):
  """Global batches padded to `batch_size` with a validity mask (one host)."""
  for start in range(0, len(images), batch_size):
    n = min(batch_size, len(images) - start)
    pad = batch_size - n
    yield {"image": np.concatenate([images[start:start + n], np.zeros((pad,) + images.shape[1:],
                                                                       np.uint8)]),
           "label": np.concatenate([labels[start:start + n], np.zeros(pad, np.int32)]),
           "id": np.concatenate([np.arange(start, start + n), np.zeros(pad, int)]).astype(np.int32),
           "valid": np.arange(batch_size) < n}


def test_draws_do_not_depend_on_batch_size_or_devices():
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (21, 6, 6, 3), dtype=np.uint8)
  labels = rng.integers(0, 4, 21).astype(np.int32)
  operator = operators.build({"kind": "mask", "p": 0.5})
  output_fn = lambda variables, corrupted, batch: jnp.mean(corrupted, axis=(1, 2)) * variables
  run = lambda batch_size, devices: evaluate.collect_outputs(
      output_fn, jnp.float32(2.0), _padded_batches(images, labels, batch_size),
      mesh=sharding.make_mesh(devices), key=jax.random.key(0), repeats=3, operator=operator)
  single = run(4, jax.devices()[:1])
  sharded = run(16, jax.devices())
  np.testing.assert_array_equal(single["id"], np.arange(21))
  np.testing.assert_array_equal(sharded["label"], labels)
  assert single["outputs"].shape == (3, 21, 3)
  np.testing.assert_allclose(sharded["outputs"], single["outputs"], rtol=1e-6)
  # Repeats are independent draws; each equals the operator applied with the example's key.
  assert not np.allclose(single["outputs"][0], single["outputs"][1])
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 2), 5)
  want = 2 * np.mean(operator(key, images[5:6] / 255.0)[0], axis=(0, 1))
  np.testing.assert_allclose(single["outputs"][2, 5], want, rtol=1e-6)


def test_lbfgs_rows_carry_the_chosen_l2_and_held_out_accuracy():
  from rrjax import results
  mask = {"kind": "mask", "p": 0.9}
  top1 = {"top1": {"mean": 60.0, "std": 0.0, "sem": 0.0}}
  row = lambda solver, selection: results.row(
      evaluator="classification", type="classification", method="student_probe", spec=mask,
      metrics=top1, describe=operators.describe, label_fraction=1.0, solver=solver,
      selection=selection)
  lbfgs = row("lbfgs", {"l2": 3.16e-4, "holdout_accuracy": 0.625})
  adam = row("adam", {})
  assert (lbfgs["l2"], lbfgs["holdout_top1"]) == (3.16e-4, 62.5)
  assert adam["l2"] is None and adam["holdout_top1"] is None and set(adam) == set(lbfgs)
  text = results.results_markdown([lbfgs, adam])
  assert "| method | labels | solver | operator | top-1 (%) | l2 | held-out top-1 (%) |" in text
  assert "| ours | 1 | lbfgs | mask p=0.9 | 60.00 ± 0.00 | 0.000316 | 62.50 |" in text
  assert "| ours | 1 | adam | mask p=0.9 | 60.00 ± 0.00 | – | – |" in text
  # Tables without an lbfgs row keep their columns.
  assert "l2" not in results.results_markdown([adam])


def test_eval_stage_loads_the_student_and_builds_the_text_classifier_once(tmp_path,
                                                                          monkeypatch):
  """One smoke run whose zero-shot and agreement evaluators both use the student: one
  restore, one text classifier (the text tower run on 4 classes x 80 prompts once), one
  read of the teacher's checkpoint (the student starts as the teacher, whose weights it
  takes). A later eval stage's zero-shot and adversarial evaluators share one restore
  and read the classifier the first run stored. (The attacks themselves are left to
  tests/test_adversarial_training.py: compiling APGD would double this test's time.)"""
  from rrjax import config as config_lib
  from rrjax import checkpoints, stages, zero_shot
  from rrjax.evaluators import RunModels
  from rrjax.evaluators import adversarial as adversarial_evaluator
  from rrjax.evaluators import zero_shot as zero_shot_evaluator
  from rrjax.models.clip import checkpoint
  from rrjax.teachers import clip as clip_teacher

  monkeypatch.setenv("RRJAX_SMOKE_DIR", str(tmp_path / "assets"))
  config = config_lib.load_config(os.path.join(REPO, "configs", "mask.py") + ":smoke")
  config.unlock()
  config.stages = ("cache", "student", "eval")
  config.num_epochs, config.eval.repeats = 1, 1
  config.evals = config_lib.evals("zero_shot", "agreement")
  counts = collections.Counter()

  def counting(name, fn, amount=lambda *args: 1):
    def wrapped(*args, **kwargs):
      counts[name] += amount(*args)
      return fn(*args, **kwargs)
    return wrapped

  monkeypatch.setattr(checkpoints, "load_final_state",
                      counting("restores", checkpoints.load_final_state))
  monkeypatch.setattr(zero_shot, "classifier", counting("classifiers", zero_shot.classifier))
  monkeypatch.setattr(checkpoint.Checkpoint, "variables",
                      counting("checkpoint_reads", checkpoint.Checkpoint.variables))
  monkeypatch.setattr(clip_teacher.CLIPTeacher, "embed_text",
                      counting("prompts", clip_teacher.CLIPTeacher.embed_text,
                               lambda teacher, prompts: len(prompts)))
  mesh = sharding.make_mesh(jax.devices()[:1])
  workdir = str(tmp_path / "run")
  stages.run_stages(config, workdir, mesh=mesh)
  rows = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
  assert {r["evaluator"] for r in rows} == {"zero_shot", "agreement"}
  one_classifier = 2 * 256  # 320 prompts in batches of 256, the last one padded.
  assert counts == {"restores": 1, "classifiers": 1, "checkpoint_reads": 1,
                    "prompts": one_classifier}

  ctx = stages.Context(config=config, workdir=workdir, mesh=mesh)
  loaded = RunModels(ctx)
  options = config_lib.evaluator_options("zero_shot", config.evals.zero_shot)
  text = zero_shot_evaluator.text_classifier(ctx, loaded, "zero_shot", options)
  adversarial = config_lib.evaluator_options("adversarial", {"type": "adversarial"})
  attacked = adversarial_evaluator.models(ctx, loaded, "adversarial", adversarial)
  assert [m.method for m in attacked] == ["zero_shot", "zero_shot_teacher"]
  assert all(m.variables["text"] is text for m in attacked)
  assert counts["restores"] == 2 and counts["classifiers"] == 1
  assert counts["prompts"] == one_classifier
  # What was stored is the classifier itself.
  np.testing.assert_array_equal(text, zero_shot.classifier(
      ctx.teacher.embed_text, zero_shot_evaluator.class_names(ctx, options),
      zero_shot.templates()))
  ctx.close()

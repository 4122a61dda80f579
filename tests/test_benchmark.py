"""`python -m rrjax.benchmark`: two models (a tiny random CLIP in the open_clip layout and an
rrjax smoke workdir) on three tfds datasets under their real builder names (mock data),
clean, one corruption and APGD at eps 2/255, end to end through the CLI: records, table,
plot, resume; the metrics, the preprocessing and the flag parsing against independent
references; bad input refused in a few lines with exit status 2.

The end-to-end run is a subprocess (tfds mock data entered there) on 2 devices at XLA's
lowest backend optimisation level: its compiles are most of its time. The three datasets
all have 10 classes, so each model compiles each condition once.
"""

import json
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from flax.traverse_util import flatten_dict

from rrjax import config as config_lib, export, main as rrjax_main, sharding, stages, zero_shot
from rrjax.benchmark import __main__ as cli, datasets, models, prompts, records, run
from rrjax.teachers import clip as clip_teacher
from rrjax.data import synthetic
from rrjax.models import clip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "mask.py") + ":smoke"
DATASETS = ("cifar10", "eurosat", "stl10")
NUM_EXAMPLES = 6
ATTACK = "apgd-ce+apgd-t linf eps=2/255 steps=1"
CONDITIONS = ("clean", ATTACK, "mask p=0.5")
_SCRIPT = """
import sys
import tensorflow_datasets as tfds
from rrjax.benchmark.__main__ import main
with tfds.testing.mock_data(num_examples={n}, policy=tfds.testing.MockPolicy.USE_CODE):
  main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
  return clip.create_tiny_clip(str(tmp_path_factory.mktemp("tiny_clip")), image_size=32, seed=1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A finished smoke run: the tiny ModifiedResNet teacher and its CLIP student, one epoch
  with the online teacher, student stage only."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("RRJAX_SMOKE_DIR", str(tmp_path_factory.mktemp("smoke")))
    config = config_lib.load_config(SMOKE)
  config.unlock()
  config.teacher.mode, config.stages, config.num_epochs = "online", ("student",), 1
  config.checkpoint_every_steps = 100
  path = str(tmp_path_factory.mktemp("run"))
  rrjax_main.write_run_info(config, path)
  stages.run_stages(config, path, mesh=sharding.make_mesh(jax.devices()[:1]))
  return path


def _benchmark(out, *models, extra=()):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [REPO, *filter(None, [os.environ.get("PYTHONPATH")])]), XLA_FLAGS=" ".join([
      os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", ""),
      "--xla_force_host_platform_device_count=2", "--xla_backend_optimization_level=0"]))
  command = [sys.executable, "-c", _SCRIPT.format(n=NUM_EXAMPLES),
             *[f"--model={m}" for m in models], f"--datasets={','.join(DATASETS)}",
             "--attack=apgd", "--eps=2", "--steps=1", "--corruptions=mask:p=0.5",
             "--batch_size=4", f"--out={out}", *extra]
  return subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO,
                        timeout=600)


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory, tiny_clip, workdir):
  out = str(tmp_path_factory.mktemp("bench"))
  done = _benchmark(out, tiny_clip, workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return out, (tiny_clip, workdir), done


def test_records_table_and_plot(benchmark):
  out, models, _ = benchmark
  found = records.read(out)
  assert len(found) == len(models) * len(DATASETS) * len(CONDITIONS)
  assert {(r["model"], r["dataset"], r["condition"]) for r in found} == {
      (m, d, c) for m in models for d in DATASETS for c in CONDITIONS}
  for r in found:
    assert r["task"] == "zeroshot_classification"
    assert set(r["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert 0 <= r["metrics"]["acc1"] <= 1 and r["num_images"] == NUM_EXAMPLES
    # Top-5 exists for 10 classes, not under attack (only the top-1 is attacked).
    assert (r["metrics"]["acc5"] is None) == (r["condition"] == ATTACK)
  by_key = {(r["model"], r["dataset"], r["condition"]): r["metrics"]["acc1"] for r in found}
  for m in models:
    for d in DATASETS:  # An attacked image counts only if it was right clean.
      assert by_key[m, d, ATTACK] <= by_key[m, d, "clean"]
  lines = open(os.path.join(out, records.TABLE)).read().splitlines()
  for condition in CONDITIONS:
    start = lines.index(f"### {condition}")
    assert lines[start + 2] == "| model | " + " | ".join(DATASETS) + " | average |"
    for m, row in zip(models, lines[start + 4:start + 6]):
      values = [by_key[m, d, condition] for d in DATASETS]
      expected = [f"{100 * v:.1f}" for v in values] + [f"{100 * np.mean(values):.1f}"]
      assert row == "| " + " | ".join([m, *expected]) + " |"
  assert os.path.getsize(os.path.join(out, records.PLOT)) > 0
  # One classifier per (text tower, dataset), kept: the two models' teachers differ.
  kept = os.listdir(os.path.join(out, "classifiers"))
  assert len(kept) == len(models) * len(DATASETS) and all(k.endswith(".npy") for k in kept)
  assert os.path.isfile(os.path.join(out, "log.txt"))


def test_clean_records_match_a_single_device_reference(benchmark):
  """The CLI's sharded, batched, padded pipeline (2 devices, batches of 4 over 6 images)
  against the model applied to all images at once on one device; the mock examples are
  the same in every process (seeded by index). The tiny CLIP only: the workdir's model is
  the same code on the student's weights (test_workdir_and_its_export_...)."""
  out, models_run, _ = benchmark
  found = {(r["model"], r["dataset"]): r for r in records.read(out) if r["condition"] == "clean"}
  for name in models_run[:1]:
    model = models.load(models.describe(name))
    for dataset in DATASETS:
      with tfds.testing.mock_data(num_examples=NUM_EXAMPLES,
                                  policy=tfds.testing.MockPolicy.USE_CODE):
        data = datasets.open_dataset(dataset)
        examples = [data.source[i] for i in range(len(data))]
      images = np.stack([datasets.preprocess(e["image"], 32, "bicubic", "shortest")
                         for e in examples]).astype(np.float32) / 255
      labels = np.array([e["label"] for e in examples])
      text = zero_shot.classifier(model.embed_text, data.class_names, data.templates)
      embeddings = np.asarray(jax.jit(model.image_fn, device=jax.devices()[0])(
          model.image_variables, images), np.float64)
      unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
      logits = model.logit_scale * unit @ text.T.astype(np.float64)
      # Counts of correct images: equal unless two classes tie to float32 rounding.
      assert found[name, dataset]["metrics"] == pytest.approx(
          records.logits_metrics(logits, labels))


def test_rerun_skips_finished_records(benchmark):
  out, models, _ = benchmark
  before = open(os.path.join(out, records.RESULTS)).read()
  done = _benchmark(out, *models)
  assert done.returncode == 0, done.stderr[-3000:]
  assert open(os.path.join(out, records.RESULTS)).read() == before
  assert "top-1" not in done.stdout  # Nothing evaluated again.


def _orbax_student(workdir):
  """The final student's params, straight from the orbax checkpoint (not via rrjax)."""
  directory = os.path.join(workdir, "student", "checkpoints")
  last = max(int(name) for name in os.listdir(directory) if name.isdigit())
  return ocp.PyTreeCheckpointer().restore(os.path.join(directory, str(last), "state"))["params"]


@pytest.mark.numerics
def test_workdir_and_its_export_are_the_student_with_the_teachers_text(workdir, tmp_path):
  config = export.read_config(workdir)
  teacher = clip_teacher.CLIPTeacher(config.teacher.name)
  export_dir = export.export(workdir, "rrjax", str(tmp_path / "export"))
  student = _orbax_student(workdir)
  prompts = ["a photo of a dog.", "a photo of a cat."]
  reference_text = np.asarray(teacher.embed_text(prompts))
  images = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
  embeddings = []
  for name, kind in ((workdir, "workdir"), (export_dir, "rrjax_export")):
    ref = models.describe(name)
    assert (ref.kind, ref.image_size, ref.interpolation) == (kind, 32, "bicubic")
    model = models.load(ref)
    for path, value in flatten_dict(model.image_variables["params"]).items():
      np.testing.assert_array_equal(value, flatten_dict(student)[path])
    # The same text tower, compiled apart: equal up to float32 rounding of its sums.
    np.testing.assert_allclose(model.embed_text(prompts), reference_text, rtol=1e-5, atol=1e-6)
    assert model.logit_scale == pytest.approx(1 / 0.07, rel=1e-6)  # random_variables' init.
    embeddings.append(np.asarray(model.image_fn(model.image_variables, images)))
    classes = np.eye(embeddings[-1].shape[1], 3, dtype=np.float32).T  # Unit rows.
    logits = run.logits_fn(model.image_fn)(
        {"image": model.image_variables, "text": classes, "scale": 2.0}, images)
    unit = embeddings[-1] / np.linalg.norm(embeddings[-1], axis=1, keepdims=True)
    # The scale times the cosine; float32 norms and products: a few ulps.
    np.testing.assert_allclose(logits, 2.0 * unit[:, :3], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(embeddings[0], embeddings[1], rtol=1e-6, atol=1e-6)


def _reference_metrics(logits, labels):
  """CLIP_benchmark's definitions, element by element."""
  n, k = logits.shape
  order = [sorted(range(k), key=lambda c: -logits[i, c]) for i in range(n)]
  acc1 = sum(order[i][0] == labels[i] for i in range(n)) / n
  acc5 = sum(labels[i] in order[i][:5] for i in range(n)) / n
  recalls = []
  for c in sorted(set(labels.tolist())):
    members = [i for i in range(n) if labels[i] == c]
    recalls.append(sum(order[i][0] == c for i in members) / len(members))
  return acc1, acc5, sum(recalls) / len(recalls)


def test_metrics_match_clip_benchmarks_definitions():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(50, 7))
  labels = rng.choice([0, 2, 3, 6], size=50)  # Some classes absent: not in the mean.
  found = records.logits_metrics(logits, labels)
  # Exact: both count the same integers; the float sums differ at most in the last bit.
  np.testing.assert_allclose([found["acc1"], found["acc5"], found["mean_per_class_recall"]],
                             _reference_metrics(logits, labels), rtol=1e-12)
  assert records.logits_metrics(logits[:, :4], labels % 4)["acc5"] is None


@pytest.mark.parametrize("shape", [(50, 70), (90, 40), (32, 32)])
def test_preprocessing_matches_transformers_clip_processor(shape):
  """Shorter side to 32 (bicubic, PIL), centre crop: transformers' PIL CLIP processor."""
  from transformers import CLIPImageProcessor
  image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, resample=3,
                                   crop_size={"height": 32, "width": 32},
                                   do_normalize=False, do_rescale=False)
    reference = processor(images=image, return_tensors="np")["pixel_values"][0]
  ours = datasets.preprocess(image, 32, "bicubic", "shortest")
  np.testing.assert_array_equal(ours, reference.transpose(1, 2, 0))  # Same PIL calls.


def test_imagenet_r_labels_become_positions_in_its_200_classes():
  """tfds labels ImageNet-R with ImageNet-1k indices; its classifier has 200 rows."""
  subset = prompts.class_subset("imagenet_r")
  names, _ = prompts.load("imagenet_r")
  assert len(subset) == len(names) == 200
  imagenet_labels = [subset[0], subset[57], subset[199]]
  source = datasets.SubsetLabels([{"image": None, "label": l, "id": i}
                                  for i, l in enumerate(imagenet_labels)], subset)
  assert source.num_classes == 200 and len(source) == 3
  assert [source[i]["label"] for i in range(3)] == [0, 57, 199]


def test_condition_labels():
  labels = [c.label for c in run.conditions([{"kind": "mask", "p": 0.9}],
                                            cli.parse_eps("2,4,0.5"), 100)]
  assert labels == ["clean", "apgd-ce+apgd-t linf eps=2/255 steps=100",
                    "apgd-ce+apgd-t linf eps=4/255 steps=100",
                    "apgd-ce+apgd-t linf eps=0.5/255 steps=100", "mask p=0.9"]


def test_corruption_specs_parse():
  assert cli.parse_corruptions(
      'mask:p=0.9; imagenet_c:corruption=fog,severity=3;'
      'compose:ops=[{"kind":"mask","p":0.5},{"kind":"noise","sigma":0.1}]') == [
          {"kind": "mask", "p": 0.9}, {"kind": "imagenet_c", "corruption": "fog", "severity": 3},
          {"kind": "compose", "ops": [{"kind": "mask", "p": 0.5},
                                      {"kind": "noise", "sigma": 0.1}]}]
  assert cli.parse_eps("2,4") == [2 / 255, 4 / 255]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("folder"))
  synthetic.make_image_folder(root, num_classes=4, per_class=2, splits=("val",), size=40, seed=0)
  return os.path.join(root, "val")


@pytest.mark.parametrize("args,flag", [
    (["--datasets=no_such_set"], "--datasets"),
    (["--model=/no/such/dir"], "--model"),
    (["--corruptions=smudge:p=1"], "--corruptions"),
    (["--corruptions=mask:p"], "--corruptions"),
    (["--attack=apgd", "--eps=two"], "--eps"),
    (["--batch_size=12"], "--batch_size"),
    (["--bogus"], "--help"),
])
def test_bad_input_is_a_short_message(tmp_path, tiny_clip, folder, capsys, args, flag):
  """Each refused in the preflight (nothing compiled): exit 2, at most 3 lines."""
  defaults = {"--model": tiny_clip, "--datasets": folder, "--out": str(tmp_path)}
  given = {a.split("=")[0] for a in args}
  argv = args + [f"{k}={v}" for k, v in defaults.items() if k not in given]
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert 1 <= len(err) <= 3 and err[0].startswith("error: ") and flag in "\n".join(err)


def test_prompts_command(capsys):
  cli.main(["prompts", "cifar10"])
  printed = json.loads(capsys.readouterr().out)
  assert (printed["classnames"], printed["templates"]) == tuple(map(list, prompts.load("cifar10")))

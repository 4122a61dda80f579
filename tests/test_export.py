"""`python -m rrjax.export`: a finished run's student loads in transformers, open_clip and
rrjax and gives rrjax's embeddings of it; bad requests are refused by name.

One tiny run (a ViT CLIP student of a tiny random ViT teacher in the transformers layout,
one epoch on generated images, online teacher) is trained once; its student is read
back from the orbax checkpoint independently of rrjax.export as the reference. Nothing
is downloaded.
"""

import functools
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from rrjax import config as config_lib
from rrjax import export, main as rrjax_main, models, operators, results, sharding, stages
from rrjax.models import clip
from rrjax.teachers import clip as clip_teacher
from support.open_clip_ref import import_open_clip

# Numerically sensitive: exports loaded back by PyTorch, transformers and open_clip.
# .ci/run runs these tests again with XLA's CPU code capped at AVX.
pytestmark = pytest.mark.numerics


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "mask.py") + ":smoke"
PROMPTS = ["a photo of a tench.", "a photo of a church.", "a blurry photo of a french horn."]


def _relative_error(ours, reference):
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return np.abs(ours - reference).max() / np.abs(reference).max()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A finished run: only the student stage, 6 steps, against a tiny ViT CLIP (HF layout)."""
  with pytest.MonkeyPatch.context() as patch:  # Smoke assets in this test's directory.
    patch.setenv("RRJAX_SMOKE_DIR", str(tmp_path_factory.mktemp("smoke")))
    config = config_lib.load_config(SMOKE)
  config.unlock()
  config.teacher.name = clip.create_tiny_clip(str(tmp_path_factory.mktemp("teacher")),
                                              vision="vit", layout="hf")
  config.teacher.mode, config.stages, config.num_epochs = "online", ("student",), 1
  config.checkpoint_every_steps = 100  # One save, of the final step.
  path = str(tmp_path_factory.mktemp("run"))
  rrjax_main.write_run_info(config, path)
  # One device: the step compiles several times faster than on the 8-device mesh.
  stages.run_stages(config, path, mesh=sharding.make_mesh(jax.devices()[:1]))
  return path


@pytest.fixture(scope="module")
def teacher(workdir):
  return clip_teacher.CLIPTeacher(export.read_config(workdir).teacher.name)


@pytest.fixture(scope="module")
def student(workdir):
  """The final student's variables, straight from the orbax checkpoint."""
  directory = os.path.join(workdir, "student", "checkpoints")
  last = max(int(name) for name in os.listdir(directory) if name.isdigit())
  restored = ocp.PyTreeCheckpointer().restore(os.path.join(directory, str(last), "state"))
  return {"params": restored["params"]}


@pytest.fixture(scope="module")
def images(teacher):
  size = teacher.image_size
  return np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)


@functools.cache
def _embedder(encoder):
  """rrjax's image embeddings of uint8 images, compiled once per (equal) encoder."""
  return jax.jit(lambda variables, images: encoder.apply(variables, images / np.float32(255))[0])


def _embed(spec, variables, images):
  """The reference every export must reproduce."""
  return np.asarray(_embedder(clip.CLIPImageEncoder(spec))(variables, images))


def _torch_pixels(images, spec):
  """What CLIPImageEncoder normalises internally, as NCHW torch pixels."""
  p = spec.preprocess
  x = (torch.tensor(images / np.float32(255)) - torch.tensor(p.mean)) / torch.tensor(p.std)
  return x.permute(0, 3, 1, 2).float()


def _features(output):
  """transformers 5 returns an output object from get_*_features; 4.x a tensor."""
  return getattr(output, "pooler_output", output).numpy()


@pytest.fixture(scope="module")
def student_embeddings(teacher, student, images):
  embeddings = _embed(teacher.checkpoint.spec, student, images)
  # The run trained: the export must hold the student, not the teacher it started from.
  assert _relative_error(embeddings, _embed(teacher.checkpoint.spec, teacher.params,
                                            images)) > 1e-2
  return embeddings


@pytest.fixture(scope="module")
def teacher_text(teacher):
  return teacher.embed_text(PROMPTS)


def test_hf_export_loads_in_transformers(workdir, teacher, teacher_text, images,
                                         student_embeddings, tmp_path):
  from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer
  out = str(tmp_path / "hf")
  export.main([workdir, "--format", "hf", "--out", out])
  model = CLIPModel.from_pretrained(out).eval()
  CLIPProcessor.from_pretrained(out)  # As the model card says to load it.
  spec = teacher.checkpoint.spec
  with torch.no_grad():
    image = _features(model.get_image_features(pixel_values=_torch_pixels(images, spec)))
    # transformers pads with the end token; the feature is read at the first one.
    ids = CLIPTokenizer.from_pretrained(out)(
        PROMPTS, padding="max_length", max_length=spec.text.context_length,
        return_tensors="pt").input_ids
    text = _features(model.get_text_features(input_ids=ids))
  assert _relative_error(image, student_embeddings) < 1e-4
  assert _relative_error(text, teacher_text) < 1e-4
  for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
               "README.md"):
    assert os.path.isfile(os.path.join(out, name)), name


def test_open_clip_export_of_the_run(workdir, teacher, teacher_text, images, student_embeddings,
                                     tmp_path):
  open_clip = import_open_clip()
  out = str(tmp_path / "open_clip")
  export.main([workdir, "--format", "open_clip", "--out", out])
  model = open_clip.create_model("local-dir:" + out).eval()
  ids = open_clip.get_tokenizer("local-dir:" + out)(PROMPTS)
  with torch.no_grad():
    image = model.encode_image(_torch_pixels(images, teacher.checkpoint.spec)).numpy()
    text = model.encode_text(ids).numpy()
  assert _relative_error(image, student_embeddings) < 1e-4
  assert _relative_error(text, teacher_text) < 1e-4


def test_open_clip_export_of_a_modified_resnet(tmp_path):
  """The CLI's writer, without a run: a perturbed RN image tower in its checkpoint."""
  open_clip = import_open_clip()
  checkpoint = clip.open_checkpoint(clip.create_tiny_clip(str(tmp_path / "rn")))
  rng = np.random.default_rng(1)
  image = jax.tree.map(lambda x: x * (1 + 0.2 * rng.standard_normal(x.shape, np.float32)),
                       clip.image_variables(checkpoint.variables()))
  export.save_clip(str(tmp_path / "out"), checkpoint, image, "open_clip")
  model = open_clip.create_model("local-dir:" + str(tmp_path / "out")).eval()
  size = checkpoint.spec.vision.image_size
  images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
  with torch.no_grad():
    embeddings = model.encode_image(_torch_pixels(images, checkpoint.spec)).numpy()
  assert _relative_error(embeddings, _embed(checkpoint.spec, image, images)) < 1e-4
  assert _relative_error(embeddings, _embed(
      checkpoint.spec, clip.image_variables(checkpoint.variables()), images)) > 1e-2


def test_rrjax_export_round_trips_exactly(workdir, teacher, student, images,
                                          student_embeddings, tmp_path):
  out = str(tmp_path / "rrjax")
  export.main([workdir, "--format", "rrjax", "--out", out])
  module, variables = export.load(out)
  flat, reference = (ocp.tree.to_flat_dict(v) for v in (variables, student))
  assert flat.keys() == reference.keys()
  for key in flat:
    np.testing.assert_array_equal(flat[key], reference[key], err_msg=str(key))
  assert module == clip.CLIPImageEncoder(teacher.checkpoint.spec)
  np.testing.assert_array_equal(_embedder(module)(variables, images), student_embeddings)
  card = open(os.path.join(out, "README.md")).read()
  assert "rrjax.export import load" in card
  assert "No evaluation was run" in card


def test_rrjax_export_of_a_resnet_student(workdir, tmp_path):
  """The CLI's writer for a torchvision-layout ResNet student (BatchNorm statistics too);
  random variables of the right shapes, nothing compiled."""
  config = export.read_config(workdir)
  config.student.model, config.student.width, config.student.init = "resnet18", 8, "random"
  module = models.build_model(config.student, 16)
  shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32), shapes)
  export.save_rrjax(str(tmp_path), config, 16, variables)
  loaded_module, loaded = export.load(str(tmp_path))
  assert loaded_module == module
  flat, reference = (ocp.tree.to_flat_dict(v) for v in (loaded, variables))
  assert flat.keys() == reference.keys() and any("batch_stats" in key for key in flat)
  for key in flat:
    np.testing.assert_array_equal(flat[key], reference[key], err_msg=str(key))


def test_model_card_names_the_run_and_its_results(workdir):
  config = export.read_config(workdir)
  rows = [results.row(evaluator="classification", type="classification",
                      method="student_probe", label_fraction=1.0, solver="adam",
                      spec={"kind": "mask", "p": 0.9}, describe=operators.describe,
                      metrics={"top1": {"mean": 50.0, "std": 1.0, "sem": 1.0}})]
  results_md = os.path.join(workdir, "results.md")
  with open(results_md, "w") as f:
    f.write(results.results_markdown(rows))
  try:
    card = export.model_card(config, workdir, "hf", "/models/robust", 6)
  finally:
    os.remove(results_md)
  assert config.teacher.name in card and "mask p=0.9" in card
  assert "6 steps, 1 epoch(s), global batch 16" in card
  assert "| ours | 1 | adam | mask p=0.9 | 50.00 ± 1.00 |" in card
  assert "CLIPModel.from_pretrained('/models/robust')" in card


@pytest.fixture
def unfinished(workdir, tmp_path):
  os.makedirs(tmp_path / "run" / "student")
  shutil.copy(os.path.join(workdir, "config.json"), tmp_path / "run")
  return str(tmp_path / "run")


def test_refusals_name_the_fix(workdir, unfinished, tmp_path):
  out = str(tmp_path / "out")
  with pytest.raises(SystemExit, match="student stage .* has not finished.*run it first"):
    export.main([unfinished, "--format", "rrjax", "--out", out])
  with pytest.raises(FileNotFoundError, match="config.json does not exist"):
    export.export(str(tmp_path), "rrjax", out)
  with pytest.raises(FileNotFoundError, match="not a directory"):
    export.export(str(tmp_path / "nowhere"), "rrjax", out)
  with pytest.raises(ValueError, match="--format='onnx'; choose one of hf, open_clip, rrjax"):
    export.export(workdir, "onnx", out)
  os.makedirs(out)
  with open(os.path.join(out, "saved.txt"), "w") as f:
    f.write("keep")
  with pytest.raises(SystemExit, match="--out=.*never overwrites"):
    export.main([workdir, "--format", "rrjax", "--out", out])
  assert os.listdir(out) == ["saved.txt"]


def test_unknown_format_on_the_command_line(capsys, tmp_path):
  with pytest.raises(SystemExit):
    export.main([str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "out")])
  assert "invalid choice: 'onnx'" in capsys.readouterr().err


def test_formats_the_student_cannot_take(workdir, tmp_path):
  config = export.read_config(workdir)
  config.teacher.name = clip.create_tiny_clip(str(tmp_path / "rn"), vision="resnet")
  with pytest.raises(ValueError, match="--format=hf .*ModifiedResNet.*open_clip format"):
    export.check_request(config, workdir, "hf", str(tmp_path / "out"))
  export.check_request(config, workdir, "open_clip", str(tmp_path / "out"))
  config.student.model = "resnet18"
  for fmt in ("hf", "open_clip"):
    with pytest.raises(ValueError, match=f"--format={fmt} needs a CLIP student.*--format rrjax"):
      export.check_request(config, workdir, fmt, str(tmp_path / "out"))
  export.check_request(config, workdir, "rrjax", str(tmp_path / "out"))

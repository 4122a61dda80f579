"""The CLIP-ViT student: teacher initialisation, precision, export to a Hugging Face
CLIP checkpoint and reload with transformers' FlaxCLIPModel."""

import functools
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from transformers import AutoTokenizer, CLIPImageProcessor, FlaxCLIPModel

from rrjax import models
from rrjax.models import clip_vit
from rrjax.teachers import hf_clip

DIM = 16  # The tiny CLIP's projection dim.


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  return hf_clip.create_tiny_clip(str(tmp_path_factory.mktemp("tiny_clip")))


@pytest.fixture(scope="module")
def teacher(clip_dir):
  return hf_clip.HFCLIPTeacher(clip_dir)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


def student_config(clip_dir, **overrides):
  fields = dict(model="clip_vit", init="teacher", dtype="float32", teacher_name=clip_dir)
  return ml_collections.ConfigDict({**fields, **overrides})


def as01(images):
  return images.astype(np.float32) / np.float32(255)


def run(module, variables, images, train=False):
  return jax.jit(functools.partial(module.apply, train=train))(variables, as01(images))


@pytest.fixture(scope="module")
def student(clip_dir):
  cfg = student_config(clip_dir)
  module = models.build_model(cfg, DIM)
  return module, models.init_variables(cfg, module, jax.random.PRNGKey(0), 32)


def test_teacher_init_is_the_teacher(student, teacher, images):
  module, variables = student
  outputs, aux = run(module, variables, images)
  assert outputs.shape == (4, DIM) and outputs.dtype == np.float32
  # Same function; only XLA's fusion of the 1/255 scaling may differ in the last bit.
  np.testing.assert_allclose(outputs, teacher.embed(images), rtol=1e-5, atol=1e-5)
  # pre_logits are the pooled features the visual projection maps to the outputs.
  kernel = np.asarray(variables["params"]["visual_projection"]["kernel"])
  assert aux["pre_logits"].shape == (4, 32)
  np.testing.assert_allclose(np.asarray(aux["pre_logits"]) @ kernel, outputs, atol=1e-5)
  # No dropout in CLIP: training mode computes the same function.
  np.testing.assert_allclose(run(module, variables, images, train=True)[0], outputs, atol=1e-5)


def test_random_init_has_the_teacher_shapes(student, clip_dir):
  cfg = student_config(clip_dir, init="random")
  module = models.build_model(cfg, DIM)
  variables = models.init_variables(cfg, module, jax.random.PRNGKey(1), 32)
  shapes = lambda tree: jax.tree.map(np.shape, tree)
  assert shapes(variables) == shapes(student[1])
  first = lambda v: np.asarray(v["params"]["visual_projection"]["kernel"])
  assert not np.allclose(first(variables), first(student[1]))


def test_bfloat16_student_is_close_to_float32(student, clip_dir, images):
  module = models.build_model(student_config(clip_dir, dtype="bfloat16"), DIM)
  variables = student[1]
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(variables))
  half, _ = run(module, variables, images)
  full, _ = run(student[0], variables, images)
  assert half.dtype == np.float32
  cosine = (half * full).sum(-1) / np.linalg.norm(half, axis=-1) / np.linalg.norm(full, axis=-1)
  assert cosine.min() > 0.995
  assert not np.array_equal(half, full)


def perturbed(variables, seed):
  """A 'trained' student: every parameter moved, so export must carry the new values."""
  leaves, tree = jax.tree.flatten(variables)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [np.asarray(x) + 0.05 * rng.standard_normal(x.shape)
                                   .astype(np.float32) for x in leaves])


def test_export_reloads_as_a_hugging_face_clip(student, teacher, clip_dir, images, tmp_path):
  module, variables = student
  trained = perturbed(variables, seed=2)
  out_dir = clip_vit.export_hf_clip(trained, clip_dir, str(tmp_path / "robust_clip"))
  outputs, _ = run(module, trained, images)
  assert not np.allclose(outputs, teacher.embed(images), atol=1e-3)

  exported, exported_params = FlaxCLIPModel.from_pretrained(out_dir, _do_init=False)
  _, original_params = FlaxCLIPModel.from_pretrained(clip_dir, _do_init=False)
  pixels = CLIPImageProcessor.from_pretrained(out_dir)(list(images), return_tensors="np")[
      "pixel_values"]
  image_features = jax.jit(lambda p, x: exported.get_image_features(x, params=p))
  np.testing.assert_allclose(image_features(exported_params, pixels), outputs,
                             rtol=1e-5, atol=1e-5)

  prompts = hf_clip.class_prompts(["tench", "church"])
  tokens = AutoTokenizer.from_pretrained(out_dir)(prompts, padding=True, return_tensors="np")
  text_features = jax.jit(lambda p, ids, mask: exported.get_text_features(ids, mask, params=p))
  np.testing.assert_array_equal(
      text_features(exported_params, tokens["input_ids"], tokens["attention_mask"]),
      text_features(original_params, tokens["input_ids"], tokens["attention_mask"]))
  # The export is a drop-in teacher: the robust image tower with the original text.
  robust = hf_clip.HFCLIPTeacher(out_dir)
  np.testing.assert_allclose(robust.embed(images), outputs, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(robust.embed_text(prompts), teacher.embed_text(prompts),
                             rtol=1e-5, atol=1e-5)


def test_export_without_processor_writes_one_and_checks_shapes(student, clip_dir, tmp_path):
  bare = tmp_path / "bare"
  shutil.copytree(clip_dir, bare)
  os.remove(bare / "preprocessor_config.json")
  out_dir = clip_vit.export_hf_clip(student[1], str(bare), str(tmp_path / "out"))
  processor = json.load(open(os.path.join(out_dir, "preprocessor_config.json")))
  assert processor["crop_size"] == {"height": 32, "width": 32}
  np.testing.assert_allclose(processor["image_mean"], [0.48145466, 0.4578275, 0.40821073])
  other = hf_clip.create_tiny_clip(str(tmp_path / "bigger"), image_size=48)
  with pytest.raises(ValueError, match="do not have the shapes"):
    clip_vit.export_hf_clip(student[1], other, str(tmp_path / "wrong"))


def test_build_rejects_bad_config(clip_dir, student):
  with pytest.raises(ValueError, match="num_outputs=10 must equal the projection dim 16"):
    models.build_model(student_config(clip_dir), 10)
  with pytest.raises(ValueError, match="student.init='imagenet:x'"):
    models.build_model(student_config(clip_dir, init="imagenet:x"), DIM)
  with pytest.raises(ValueError, match="student.teacher_name"):
    models.build_model(student_config(None), DIM)
  with pytest.raises(ValueError, match="student.dtype"):
    models.build_model(student_config(clip_dir, dtype="float64"), DIM)
  module, variables = student
  with pytest.raises(ValueError, match=r"\[B, 32, 32, 3\]"):
    module.apply(variables, np.zeros((1, 16, 16, 3), np.float32))

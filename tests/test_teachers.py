"""Teachers: the HF Flax CLIP teacher against transformers' own FlaxCLIPModel, plug-ins.

A tiny random CLIP is created and saved with save_pretrained in the test; nothing
touches the network.
"""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import save_file
from transformers import AutoTokenizer, CLIPImageProcessor, FlaxCLIPModel

from rrjax import sharding
from rrjax.teachers import build_teacher, hf_clip, validate_teacher

CLASS_NAMES = ["tench", "golden retriever", "cassette player", "French horn"]


def teacher_config(**overrides):
  fields = dict(kind="hf_clip", name="", factory="", mode="cached", dtype="float32",
                from_pt=False)
  return ml_collections.ConfigDict({**fields, **overrides})


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  return hf_clip.create_tiny_clip(str(tmp_path_factory.mktemp("tiny_clip")))


@pytest.fixture(scope="module")
def reference(clip_dir):
  """transformers' own model, parameters and jitted feature functions."""
  model, params = FlaxCLIPModel.from_pretrained(clip_dir, _do_init=False)
  image_features = jax.jit(lambda p, pixels: model.get_image_features(pixels, params=p))
  text_features = jax.jit(lambda p, ids, mask: model.get_text_features(ids, mask, params=p))
  return params, image_features, text_features


@pytest.fixture(scope="module")
def teacher(clip_dir):
  return build_teacher(teacher_config(name=clip_dir, mode="online"))


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)


def processor_pixels(name, images):
  return CLIPImageProcessor.from_pretrained(name)(list(images), return_tensors="np")[
      "pixel_values"]


def test_tiny_clip_has_working_tokenizer_and_processor(clip_dir):
  model, _ = FlaxCLIPModel.from_pretrained(clip_dir, _do_init=False)
  assert model.config.projection_dim == 16
  assert model.config.vision_config.image_size == 32
  processor = CLIPImageProcessor.from_pretrained(clip_dir)
  assert processor.crop_size == {"height": 32, "width": 32}
  assert processor.size == {"shortest_edge": 32}
  tokenizer = AutoTokenizer.from_pretrained(clip_dir)
  eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
  # CLIP reads text features at the end-of-text token, found by argmax of the ids.
  assert eos == model.config.text_config.eos_token_id == len(tokenizer) - 1
  for prompt in hf_clip.class_prompts(CLASS_NAMES):
    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|startoftext|>")
    assert ids[-1] == eos and eos not in ids[:-1]  # Unknown tokens would map to eos.
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == prompt.lower().replace(" ", "")


def test_tiny_clip_is_seeded(clip_dir, tmp_path):
  same = hf_clip.create_tiny_clip(str(tmp_path / "same"), seed=0)
  other = hf_clip.create_tiny_clip(str(tmp_path / "other"), image_size=16, seed=1)
  read = lambda d: open(os.path.join(d, "flax_model.msgpack"), "rb").read()
  assert read(same) == read(clip_dir)
  assert read(other) != read(clip_dir)
  assert CLIPImageProcessor.from_pretrained(other).crop_size == {"height": 16, "width": 16}
  with pytest.raises(ValueError, match="multiple of the patch size"):
    hf_clip.create_tiny_clip(str(tmp_path / "bad"), image_size=20)


def test_image_embeddings_match_transformers(teacher, reference, clip_dir, images):
  params, image_features, _ = reference
  expected = image_features(params, processor_pixels(clip_dir, images))
  got = teacher.embed(images)
  assert got.shape == (8, 16) and got.dtype == np.float32
  assert (teacher.image_size, teacher.dim) == (32, 16)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # Joint space before normalisation: CLIP's features are not unit vectors.
  assert np.abs(np.linalg.norm(got, axis=-1) - 1).max() > 0.01
  np.testing.assert_array_equal(jax.jit(teacher.apply)(teacher.params, images), got)


def test_text_embeddings_match_transformers(teacher, reference, clip_dir):
  params, _, text_features = reference
  prompts = hf_clip.class_prompts(CLASS_NAMES)
  # The reference pads only to the longest prompt; the teacher pads to the full length.
  tokens = AutoTokenizer.from_pretrained(clip_dir)(prompts, padding=True, return_tensors="np")
  expected = text_features(params, tokens["input_ids"], tokens["attention_mask"])
  got = teacher.embed_text(prompts)
  assert got.shape == (4, 16)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_class_prompts():
  assert hf_clip.class_prompts(["cat", "sea lion"]) == ["a photo of a cat.",
                                                        "a photo of a sea lion."]
  assert hf_clip.class_prompts(["cat"], template="{} photo") == ["cat photo"]
  with pytest.raises(ValueError, match="template"):
    hf_clip.class_prompts(["cat"], template="a photo")


def test_embed_compiles_once_per_shape_and_checks_input(teacher, images):
  compiled = teacher._embed._cache_size
  teacher.embed(images[:3])
  before = compiled()
  teacher.embed(images[3:6])
  assert compiled() == before
  with pytest.raises(ValueError, match="uint8"):
    teacher.embed(images.astype(np.float32))
  with pytest.raises(ValueError, match=r"\[B, 32, 32, 3\]"):
    teacher.embed(images[:, :16])


def test_apply_under_a_sharded_batch(teacher, images):
  mesh = sharding.make_mesh()
  sharded = sharding.shard_batch(images, mesh)
  params = sharding.replicate(teacher.params, mesh)
  got = jax.jit(teacher.apply)(params, sharded)
  np.testing.assert_allclose(got, teacher.embed(images), rtol=1e-5, atol=1e-5)


def test_fingerprint(teacher, clip_dir, tmp_path):
  again = build_teacher(teacher_config(name=clip_dir))
  assert again.fingerprint == teacher.fingerprint
  other_model = hf_clip.create_tiny_clip(str(tmp_path / "other"), seed=1)
  assert build_teacher(teacher_config(name=other_model)).fingerprint != teacher.fingerprint
  half = build_teacher(teacher_config(name=clip_dir, dtype="bfloat16"))
  assert half.fingerprint != teacher.fingerprint


def write_processor(src, dst, **fields):
  shutil.copytree(src, dst)
  path = os.path.join(dst, "preprocessor_config.json")
  config = json.load(open(path))
  json.dump({**config, **fields}, open(path, "w"))
  return str(dst)


def test_preprocessing_constants_come_from_the_checkpoint(
    teacher, reference, clip_dir, images, tmp_path):
  mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
  custom = build_teacher(teacher_config(
      name=write_processor(clip_dir, tmp_path / "custom", image_mean=mean, image_std=std)))
  assert custom.mean == tuple(mean) and custom.std == tuple(std)
  assert custom.fingerprint != teacher.fingerprint
  params, image_features, _ = reference
  pixels = ((images / 255.0 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)
  np.testing.assert_allclose(custom.embed(images[:3]), image_features(params, pixels[:3]),
                             rtol=1e-5, atol=1e-5)
  # Without a processor config: CLIP's standard constants and the model's image size.
  bare = tmp_path / "bare"
  shutil.copytree(clip_dir, bare)
  os.remove(bare / "preprocessor_config.json")
  fallback = build_teacher(teacher_config(name=str(bare)))
  assert fallback.image_size == 32
  np.testing.assert_allclose(fallback.mean, [0.48145466, 0.4578275, 0.40821073])
  np.testing.assert_allclose(fallback.std, [0.26862954, 0.26130258, 0.27577711])
  unnormalised = build_teacher(teacher_config(
      name=write_processor(clip_dir, tmp_path / "plain", do_normalize=False)))
  assert unnormalised.mean == (0, 0, 0) and unnormalised.std == (1, 1, 1)
  for i, crop_size in enumerate([{"height": 48, "width": 48}, 48]):
    with pytest.raises(ValueError, match="crop_size"):
      build_teacher(teacher_config(
          name=write_processor(clip_dir, tmp_path / f"crop{i}", crop_size=crop_size)))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_is_close_to_float32(teacher, clip_dir, images, dtype):
  half = build_teacher(teacher_config(name=clip_dir, dtype=dtype))
  assert all(p.dtype == dtype for p in jax.tree.leaves(half.params))
  got, expected = np.asarray(half.embed(images)), np.asarray(teacher.embed(images))
  assert got.dtype == np.float32
  cosine = (got * expected).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(
      expected, axis=-1)
  assert cosine.min() > 0.995
  assert not np.array_equal(got, expected)  # It really ran in half precision.


def to_pytorch_names(params):
  """Flax CLIP parameters under PyTorch names and layouts (as a PyTorch save writes)."""
  tensors = {}
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [k.key for k in path]
    value = np.asarray(value)
    if keys[-1] == "kernel" and value.ndim == 4:
      keys[-1], value = "weight", value.transpose(3, 2, 0, 1)
    elif keys[-1] == "kernel":
      keys[-1], value = "weight", value.T
    elif keys[-1] in ("scale", "embedding"):
      keys[-1] = "weight"
    tensors[".".join(keys)] = np.array(value, order="C")  # Keeps 0-d logit_scale 0-d.
  return tensors


def test_from_pt_loads_pytorch_weights(teacher, reference, clip_dir, images, tmp_path):
  pt_dir = tmp_path / "pt"
  shutil.copytree(clip_dir, pt_dir)
  os.remove(pt_dir / "flax_model.msgpack")
  save_file(to_pytorch_names(reference[0]), str(pt_dir / "model.safetensors"),
            metadata={"format": "pt"})
  loaded = build_teacher(teacher_config(name=str(pt_dir), from_pt=True))
  np.testing.assert_array_equal(loaded.embed(images), teacher.embed(images))
  assert loaded.fingerprint != teacher.fingerprint  # Different weight files.
  # PyTorch-only checkpoints (common on the hub) load without from_pt too.
  np.testing.assert_array_equal(build_teacher(teacher_config(name=str(pt_dir))).params[
      "visual_projection"]["kernel"], teacher.params["visual_projection"]["kernel"])
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    build_teacher(teacher_config(name=clip_dir, from_pt=True))


def test_build_teacher_rejects_bad_config(tmp_path):
  with pytest.raises(ValueError, match=r"teacher.kind='clip'.*\['hf_clip', 'python'\]"):
    build_teacher(teacher_config(kind="clip"))
  with pytest.raises(ValueError, match="teacher.mode"):
    build_teacher(teacher_config(mode="live"))
  with pytest.raises(ValueError, match="teacher.name"):
    build_teacher(teacher_config(name=""))
  with pytest.raises(FileNotFoundError, match="no such directory"):
    build_teacher(teacher_config(name=str(tmp_path / "missing")))


# --- Plug-in teachers -----------------------------------------------------------------

class MeanColourTeacher:
  """A plug-in teacher: the mean colour of the image in [0, 1]."""
  image_size = 8
  dim = 3
  fingerprint = "mean-colour-v1"
  params = {"scale": np.float32(1 / 255)}

  def apply(self, params, images):
    return images.astype(np.float32).mean(axis=(1, 2)) * params["scale"]

  def embed(self, images):
    return self.apply(self.params, images)


class Incomplete:
  image_size = True  # A bool is not a size.
  fingerprint = "x"


def make_mean_colour_teacher(cfg):
  assert cfg.kind == "python"  # The factory receives the teacher config.
  return MeanColourTeacher()


def make_incomplete(cfg):
  return Incomplete()


NOT_CALLABLE = 3


def plugin_config(factory, **overrides):
  return teacher_config(kind="python", factory=factory, **overrides)


def test_plugin_teacher_end_to_end():
  teacher = build_teacher(plugin_config(f"{__name__}:make_mean_colour_teacher", mode="online"))
  images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  expected = [[images[b, :, :, c].mean() / 255 for c in range(3)] for b in range(2)]
  np.testing.assert_allclose(teacher.embed(images), expected, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(teacher.apply)(teacher.params, images), expected,
                             rtol=1e-6)
  assert (teacher.image_size, teacher.dim, teacher.fingerprint) == (8, 3, "mean-colour-v1")


@pytest.mark.parametrize("factory, message", [
    ("no_colon_here", "must look like 'package.module:function'"),
    ("rrjax_no_such_module:make", "cannot import module 'rrjax_no_such_module'"),
    (f"{__name__}:missing_function", "has no attribute 'missing_function'"),
    (f"{__name__}:NOT_CALLABLE", "not a callable"),
    (f"{__name__}:make_incomplete",
     r"Incomplete that lacks the teacher interface: missing or invalid image_size.*dim.*embed"),
])
def test_broken_factories_get_clear_errors(factory, message):
  with pytest.raises(ValueError, match=message) as error:
    build_teacher(plugin_config(factory))
  assert f"teacher.factory={factory!r}" in str(error.value)


def test_factory_module_that_fails_to_import(tmp_path, monkeypatch):
  (tmp_path / "rrjax_broken_plugin.py").write_text("import rrjax_missing_dependency\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(ValueError, match="cannot import .*rrjax_missing_dependency"):
    build_teacher(plugin_config("rrjax_broken_plugin:make"))


def test_online_mode_needs_params_and_apply():
  class CachedOnly:
    image_size, dim, fingerprint = 8, 3, "cached-only"

    def embed(self, images):
      return images

  assert validate_teacher(CachedOnly(), "test") is not None
  with pytest.raises(ValueError, match="teacher.mode='online'"):
    validate_teacher(CachedOnly(), "test", online=True)

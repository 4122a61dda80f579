"""Teachers: the CLIP teacher's interface (embeddings against rrjax's towers, whose parity
with open_clip and transformers is tests/test_clip.py), fingerprints, preprocessing from
the checkpoint, precision, and plug-ins. Tiny random CLIPs are saved in the real on-disk
layouts in the test; nothing touches the network.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rrjax import sharding
from rrjax.models import clip
from rrjax.teachers import build_teacher, validate_teacher
from rrjax.teachers import clip as clip_teacher

# Numerically sensitive: teacher embeddings against PyTorch/open_clip references.
# .ci/run runs these tests again with XLA's CPU code capped at AVX.
pytestmark = pytest.mark.numerics


def teacher_config(**overrides):
  fields = dict(kind="clip", name="", factory="", mode="cached", dtype="float32")
  return ml_collections.ConfigDict({**fields, **overrides})


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  return clip.create_tiny_clip(str(tmp_path_factory.mktemp("tiny_vit")), vision="vit",
                               layout="hf")


@pytest.fixture(scope="module")
def teacher(clip_dir):
  return build_teacher(teacher_config(name=clip_dir, mode="online"))


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)


def test_embeddings_are_the_image_tower_in_joint_space(teacher, clip_dir, images):
  checkpoint = clip.open_checkpoint(clip_dir)
  expected, _ = clip.CLIPImageEncoder(checkpoint.spec).apply(
      clip.image_variables(checkpoint.variables()), jnp.asarray(images / np.float32(255)))
  got = teacher.embed(images)
  assert got.shape == (8, 16) and got.dtype == np.float32
  assert (teacher.image_size, teacher.dim) == (32, 16)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # Joint space before normalisation: CLIP's features are not unit vectors.
  assert np.abs(np.linalg.norm(got, axis=-1) - 1).max() > 0.01
  np.testing.assert_array_equal(jax.jit(teacher.apply)(teacher.params, images), got)
  # Different images embed to clearly different directions (not a degenerate teacher).
  unit = got / np.linalg.norm(got, axis=-1, keepdims=True)
  assert (unit @ unit.T)[~np.eye(8, dtype=bool)].max() < 0.95


def test_text_embeddings_use_the_checkpoint_tokenizer(teacher, clip_dir):
  """The tiny checkpoint's tokenizer files hold CLIP's standard vocabulary: the teacher's
  text embeddings are the text tower on those ids, at the checkpoint's context length."""
  prompts = clip_teacher.class_prompts(["tench", "church"])
  got = teacher.embed_text(prompts)
  checkpoint = clip.open_checkpoint(clip_dir)
  ids = clip.tokenizer.standard(checkpoint.spec.text.context_length)(prompts)
  expected = clip.CLIPText(checkpoint.spec.text, checkpoint.spec.embed_dim).apply(
      {"params": clip.text_params(checkpoint.variables())}, jnp.asarray(ids))
  assert got.shape == (2, 16) and not np.allclose(got[0], got[1])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_class_prompts():
  assert clip_teacher.class_prompts(["cat", "sea lion"]) == ["a photo of a cat.",
                                                             "a photo of a sea lion."]
  assert clip_teacher.class_prompts(["cat"], template="{} photo") == ["cat photo"]
  with pytest.raises(ValueError, match="template"):
    clip_teacher.class_prompts(["cat"], template="a photo")


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
  other_model = clip.create_tiny_clip(str(tmp_path / "other"), vision="vit", layout="hf", seed=1)
  assert build_teacher(teacher_config(name=other_model)).fingerprint != teacher.fingerprint
  half = build_teacher(teacher_config(name=clip_dir, dtype="bfloat16"))
  assert half.fingerprint != teacher.fingerprint


def edit_json(src, dst, filename, **fields):
  shutil.copytree(src, dst)
  path = os.path.join(dst, filename)
  with open(path) as f:
    config = json.load(f)
  for key, value in fields.items():
    if isinstance(value, dict) and isinstance(config.get(key), dict):
      value = {**config[key], **value}
    config[key] = value
  with open(path, "w") as f:
    json.dump(config, f)
  return str(dst)


def _as_if_normalised_with(images, teacher, mean, std):
  """Float images that the teacher's own normalisation maps to (x - mean) / std."""
  spec = teacher.checkpoint.spec.preprocess
  x = (images / 255.0 - np.asarray(mean)) / np.asarray(std)
  return (x * np.asarray(spec.std) + np.asarray(spec.mean)).astype(np.float32)


@pytest.mark.parametrize("layout", ["hf", "open_clip"])
def test_preprocessing_constants_come_from_the_checkpoint(teacher, clip_dir, images, tmp_path,
                                                          layout):
  mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
  if layout == "hf":
    custom_dir = edit_json(clip_dir, tmp_path / "custom", "preprocessor_config.json",
                           image_mean=mean, image_std=std)
  else:
    source = clip.create_tiny_clip(str(tmp_path / "oc"), vision="vit", layout="open_clip")
    custom_dir = edit_json(source, tmp_path / "custom", "open_clip_config.json",
                           preprocess_cfg={"mean": mean, "std": std})
    teacher = build_teacher(teacher_config(name=source))
  custom = build_teacher(teacher_config(name=custom_dir))
  assert custom.checkpoint.spec.preprocess.mean == tuple(mean)
  assert custom.fingerprint != teacher.fingerprint
  expected = teacher.encoder.apply(teacher.params, jnp.asarray(
      _as_if_normalised_with(images[:3], teacher, mean, std)))[0]
  np.testing.assert_allclose(custom.embed(images[:3]), expected, rtol=1e-4, atol=1e-4)


def test_processor_config_fallbacks_and_conflicts(clip_dir, tmp_path):
  bare = tmp_path / "bare"
  shutil.copytree(clip_dir, bare)
  os.remove(bare / "preprocessor_config.json")
  spec = build_teacher(teacher_config(name=str(bare))).checkpoint.spec
  assert spec.vision.image_size == 32
  np.testing.assert_allclose(spec.preprocess.mean, [0.48145466, 0.4578275, 0.40821073])
  np.testing.assert_allclose(spec.preprocess.std, [0.26862954, 0.26130258, 0.27577711])
  plain = clip.open_checkpoint(edit_json(clip_dir, tmp_path / "plain", "preprocessor_config.json",
                                         do_normalize=False))
  assert plain.spec.preprocess.mean == (0, 0, 0) and plain.spec.preprocess.std == (1, 1, 1)
  for i, crop_size in enumerate([{"height": 48, "width": 48}, 48]):
    with pytest.raises(ValueError, match="crop_size"):
      clip.open_checkpoint(edit_json(clip_dir, tmp_path / f"crop{i}", "preprocessor_config.json",
                                     crop_size=crop_size))


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


def test_build_teacher_rejects_bad_config(tmp_path):
  with pytest.raises(ValueError, match=r"teacher.kind='hf_clip'.*\['clip', 'python'\]"):
    build_teacher(teacher_config(kind="hf_clip"))
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

"""rrjax's own CLIP against independent implementations, with the same random weights.

References: open_clip's PyTorch models (`create_model("RN101")`, `"ViT-B-32"`, tiny
configs) saved in the open_clip layout (safetensors and torch.save), transformers 5.x's
PyTorch `CLIPModel` saved with `save_pretrained`, and transformers 4.57's
`FlaxCLIPModel` (a checked-in `flax_model.msgpack` with its own outputs, see
tests/fixtures/README.md). Nothing is downloaded.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rrjax import models, objectives
from rrjax.models import clip
from rrjax.models.clip import spec as spec_lib
from rrjax.teachers import clip as clip_teacher
from support.open_clip_ref import import_open_clip

# Numerically sensitive: the Flax CLIP against open_clip and transformers on the same weights.
# .ci/run runs these tests again with XLA's CPU code capped at AVX.
pytestmark = pytest.mark.numerics


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
PROMPTS = ["a photo of a tench.", "a photo of a church.", "a blurry photo of a french horn."]
TINY_VIT = dict(embed_dim=16, quick_gelu=False,
                vision_cfg=dict(image_size=32, layers=2, width=32, head_width=8, patch_size=8),
                text_cfg=dict(context_length=16, width=32, heads=4, layers=2))
TINY_RESNET = dict(embed_dim=16, quick_gelu=True,
                   vision_cfg=dict(image_size=64, layers=[1, 2, 1, 1], width=8, head_width=16),
                   text_cfg=dict(context_length=16, width=32, heads=4, layers=2))


def _relative_error(ours, reference):
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return np.abs(ours - reference).max() / np.abs(reference).max()


def _images(size, n=2, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _randomise_batch_norm(model):
  """Running statistics and affines away from 0/1, so a swapped or dropped one shows."""
  generator = torch.Generator().manual_seed(1)
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      with torch.no_grad():
        module.running_mean.normal_(0, 0.1, generator=generator)
        module.running_var.uniform_(0.5, 1.5, generator=generator)
        module.weight.normal_(1, 0.1, generator=generator)
        module.bias.normal_(0, 0.1, generator=generator)


def _open_clip_model(model_cfg):
  open_clip = import_open_clip()
  torch.manual_seed(0)
  if isinstance(model_cfg, str):
    model = open_clip.create_model(model_cfg, pretrained=None)
    model_cfg = open_clip.get_model_config(model_cfg)
  else:
    model = open_clip.CLIP(**model_cfg)
  _randomise_batch_norm(model)
  return model.eval(), model_cfg


def _save_open_clip(model, model_cfg, directory, binary=False):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "open_clip_config.json"), "w") as f:
    json.dump({"model_cfg": model_cfg, "preprocess_cfg": {}}, f)
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  if binary:
    torch.save(state, os.path.join(directory, "open_clip_pytorch_model.bin"))
  else:
    save_file(state, os.path.join(directory, "open_clip_model.safetensors"))
  return str(directory)


def _torch_pixels(images, spec):
  p = spec.preprocess
  x = (torch.tensor(images / np.float32(255)) - torch.tensor(p.mean)) / torch.tensor(p.std)
  return x.permute(0, 3, 1, 2).float()


def _check_open_clip_parity(model, teacher, text=True):
  images = _images(teacher.image_size)
  with torch.no_grad():
    reference = model.encode_image(_torch_pixels(images, teacher.checkpoint.spec)).numpy()
  assert _relative_error(teacher.embed(images), reference) < 1e-4
  if text:
    context = teacher.checkpoint.spec.text.context_length
    open_clip = import_open_clip()
    ids = open_clip.get_tokenizer("ViT-B-32", context_length=context)(PROMPTS)
    with torch.no_grad():
      reference = model.encode_text(ids).numpy()
    assert _relative_error(teacher.embed_text(PROMPTS), reference) < 1e-4


@pytest.mark.parametrize("name", ["RN101", "ViT-B-32"])
def test_full_size_open_clip_models(name, tmp_path):
  """The paper's RN101 and ViT-B/32 at full size: image embeddings (text for the ViT;
  the text tower is the same transformer in both)."""
  model, model_cfg = _open_clip_model(name)
  teacher = clip_teacher.CLIPTeacher(_save_open_clip(model, model_cfg, tmp_path / name))
  assert teacher.image_size == 224 and teacher.dim == 512
  _check_open_clip_parity(model, teacher, text=name == "ViT-B-32")


@pytest.mark.parametrize("model_cfg", [TINY_VIT, TINY_RESNET], ids=["vit", "resnet"])
@pytest.mark.parametrize("binary", [False, True], ids=["safetensors", "torch_bin"])
def test_tiny_open_clip_models_both_weight_files(model_cfg, binary, tmp_path):
  model, model_cfg = _open_clip_model(model_cfg)
  teacher = clip_teacher.CLIPTeacher(_save_open_clip(model, model_cfg, tmp_path, binary))
  _check_open_clip_parity(model, teacher)


@pytest.fixture(scope="module")
def hf_model():
  from transformers import CLIPConfig, CLIPModel
  torch.manual_seed(0)
  tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
  config = CLIPConfig(text_config=dict(tower, max_position_embeddings=16, hidden_act="gelu"),
                      vision_config=dict(tower, image_size=32, patch_size=8),
                      projection_dim=16)
  model = CLIPModel(config).eval()
  with torch.no_grad():  # Non-trivial norms, so a dropped or swapped one shows.
    for name, parameter in model.named_parameters():
      if "norm" in name:
        parameter.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
  return model


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_bin"])
def test_transformers_pytorch_checkpoint(hf_model, tmp_path, safe):
  hf_model.save_pretrained(tmp_path, safe_serialization=safe)
  teacher = clip_teacher.CLIPTeacher(str(tmp_path))
  assert teacher.checkpoint.layout == "hf"
  images = _images(32)
  with torch.no_grad():
    reference = hf_model.get_image_features(pixel_values=_torch_pixels(
        images, teacher.checkpoint.spec))
    reference = getattr(reference, "pooler_output", reference).numpy()
  assert _relative_error(teacher.embed(images), reference) < 1e-4
  ids = clip.tokenizer.standard(16)(PROMPTS)
  from rrjax.models.clip.modules import CLIPText
  spec = teacher.checkpoint.spec
  ours = CLIPText(spec.text, spec.embed_dim).apply(
      {"params": clip.text_params(teacher.checkpoint.variables())}, jnp.asarray(ids))
  with torch.no_grad():
    reference = hf_model.get_text_features(input_ids=torch.tensor(ids, dtype=torch.long))
    reference = getattr(reference, "pooler_output", reference).numpy()
  assert _relative_error(ours, reference) < 1e-4


def test_transformers_flax_msgpack_fixture():
  """transformers 4.57's FlaxCLIPModel checkpoint loads without renaming and gives
  FlaxCLIPModel's own image and text features."""
  directory = os.path.join(FIXTURES, "flax_clip")
  reference = np.load(os.path.join(directory, "reference.npz"))
  checkpoint = clip.open_checkpoint(directory)
  assert checkpoint.weights_path.endswith("flax_model.msgpack")
  variables = checkpoint.variables()
  spec = checkpoint.spec
  images = jnp.asarray(reference["images01"])
  ours, _ = clip.CLIPImageEncoder(spec).apply(clip.image_variables(variables), images)
  assert _relative_error(ours, reference["image_embeds"]) < 1e-4
  text = clip.CLIPText(spec.text, spec.embed_dim).apply(
      {"params": clip.text_params(variables)}, jnp.asarray(reference["input_ids"]))
  assert _relative_error(text, reference["text_embeds"]) < 1e-4


# ------------------------------------------------------------- the paper's setting


@pytest.fixture(scope="module")
def tiny_rn(tmp_path_factory):
  return clip.create_tiny_clip(str(tmp_path_factory.mktemp("tiny_rn")))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_student_initialised_from_teacher_is_the_teacher(tiny_rn, dtype):
  """SPEC §5: the RN student starts as the teacher, bit for bit, in either precision."""
  teacher = clip_teacher.CLIPTeacher(tiny_rn, dtype=dtype)
  cfg = ml_collections.ConfigDict(dict(model="clip", init="teacher", dtype=dtype,
                                       teacher_name=tiny_rn))
  module = models.build_model(cfg, teacher.dim)
  variables = models.init_variables(cfg, module, jax.random.key(0), teacher.image_size)
  images = _images(32, n=4)
  # The student sees what the trainer gives it: the same [0,1] conversion as the teacher.
  student, aux = jax.jit(lambda v, x: module.apply(v, objectives.to_unit_range(x)))(
      jax.tree.map(lambda x: x.astype(dtype), variables), images)
  np.testing.assert_array_equal(np.asarray(student), np.asarray(teacher.embed(images)))
  assert aux["pre_logits"].shape == (4, 256)


def test_resnet_student_trains_batch_norm(tiny_rn):
  cfg = ml_collections.ConfigDict(dict(model="clip", init="teacher", dtype="float32",
                                       teacher_name=tiny_rn))
  module = models.build_model(cfg, 16)
  variables = models.init_variables(cfg, module, jax.random.key(0), 32)
  _, updates = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, jnp.asarray(_images(32, n=4) / 255.0))
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_random_init_and_bad_student_configs(tiny_rn):
  cfg = ml_collections.ConfigDict(dict(model="clip", init="random", dtype="float32",
                                       teacher_name=tiny_rn))
  module = models.build_model(cfg, 16)
  # "rbg" keys as the trainer uses for initialisation: threefry's init compiles far slower.
  variables = models.init_variables(cfg, module, jax.random.key(0, impl="rbg"), 32)
  teacher_variables = clip.image_variables(clip.open_checkpoint(tiny_rn).variables())
  assert jax.tree.structure(variables) == jax.tree.structure(teacher_variables)
  with pytest.raises(ValueError, match="no extra head.*16"):
    models.build_model(cfg, 10)
  cfg.init = "imagenet:microsoft/resnet-101"
  with pytest.raises(ValueError, match="student.init=.*'teacher', 'random'"):
    models.build_model(cfg, 16)


# ------------------------------------------------------------------- bad checkpoints


def test_not_a_clip_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="teacher.name=.*neither open_clip_config.json"):
    clip.open_checkpoint(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="teacher.name=.*no such directory"):
    clip.open_checkpoint(str(tmp_path / "missing"))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
  with pytest.raises(ValueError, match="model_type 'resnet', not 'clip'"):
    clip.open_checkpoint(str(tmp_path))


def test_unsupported_open_clip_option_is_named():
  config = {"model_cfg": {**TINY_VIT, "vision_cfg": {**TINY_VIT["vision_cfg"],
                                                     "attentional_pool": True}}}
  with pytest.raises(ValueError, match="attentional_pool=True is not supported"):
    spec_lib.from_open_clip_config(config, "test")


def test_weights_of_another_architecture(tmp_path):
  model, model_cfg = _open_clip_model(TINY_VIT)
  directory = _save_open_clip(model, {**model_cfg, "vision_cfg": {
      **model_cfg["vision_cfg"], "layers": 3}}, tmp_path)
  with pytest.raises(ValueError, match="do not fit the architecture.*resblocks.2"):
    clip.open_checkpoint(directory).variables()


def test_configs_round_trip():
  for config in (TINY_VIT, TINY_RESNET):
    spec = spec_lib.from_open_clip_config({"model_cfg": config}, "test")
    assert spec_lib.from_open_clip_config(spec_lib.to_open_clip_config(spec), "again") == spec
  spec = spec_lib.from_open_clip_config({"model_cfg": TINY_VIT}, "test")
  hf_config, processor = spec_lib.to_hf_config(spec)
  assert spec_lib.from_hf_config(hf_config, processor, "again") == spec
  with pytest.raises(ValueError, match="open_clip format"):
    spec_lib.to_hf_config(spec_lib.from_open_clip_config({"model_cfg": TINY_RESNET}, "test"))

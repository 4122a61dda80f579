"""ResNet students (rrjax.models.resnet), their 1x1 convolutions (rrjax.models.convolutions)
and ImageNet initialisation (rrjax.models.pretrained).

References: torchvision's parameter counts, transformers' own PyTorch ResNets on tiny
random checkpoints saved to disk, FlaxResNetModel's features recorded with the Flax
checkpoints of tests/fixtures (transformers 4), and a single-device run for the sharded
batch.
"""

from __future__ import annotations

import functools
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import flax.linen as nn
from flax.core import unfreeze
from flax.traverse_util import flatten_dict

from rrjax import config as config_lib
from rrjax import models, sharding
from rrjax.models import pretrained, resnet
from rrjax.models.convolutions import PointwiseConv, SameConv

# Numerically sensitive: the Flax ResNets and convolutions against PyTorch and numpy references.
# .ci/run runs these tests again with XLA's CPU code capped at AVX.
pytestmark = pytest.mark.numerics


# Tiny architectures: a projection shortcut with stride 1 and 2, identity shortcuts,
# several blocks per stage, both block kinds. Names are the HF `layer_type`.
TINY = {
    "bottleneck": dict(stage_sizes=(2, 1, 1), width=8),
    "basic": dict(stage_sizes=(1, 2), width=8),
}
NUM_OUTPUTS = 6
BATCH = 8  # One shape everywhere, so compiled functions are shared; 1 per device when sharded.


def _tiny(block, dtype=jnp.float32, num_outputs=NUM_OUTPUTS):
  return resnet.ResNet(block=block, num_outputs=num_outputs, dtype=dtype, **TINY[block])


def _images(n=BATCH, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, 32, 32, 3), jnp.float32)


def student_config(**overrides):
  return ml_collections.ConfigDict(
      {"model": "resnet50", "init": "random", "dtype": "float32", **overrides})


@functools.partial(jax.jit, static_argnames=("module", "train"))
def _apply(module, variables, images, train):
  if train:
    return module.apply(variables, images, train=True, mutable=["batch_stats"])
  return module.apply(variables, images, train=False)


def _fill(shapes, seed):
  """Random values for a tree of variable shapes, without compiling an init: He-scaled
  kernels, and BN affines and statistics away from their 1/0 initial values so that a
  swapped or dropped entry changes the features."""
  rng = np.random.default_rng(seed)

  def value(path, shape):
    leaf = path[-1].key
    if leaf == "kernel":
      return rng.normal(0.0, np.sqrt(2.0 / np.prod(shape.shape[:-1])), shape.shape)
    if leaf in ("scale", "var"):
      return rng.uniform(0.5, 1.5, shape.shape)
    return rng.normal(0.0, 0.2, shape.shape)  # bias, mean

  return jax.tree_util.tree_map_with_path(
      lambda path, shape: value(path, shape).astype(np.float32), unfreeze(shapes))


def _shapes(module):
  return jax.eval_shape(lambda: module.init(jax.random.key(0), _images(1), train=False))


def _random_variables(module, seed=1):
  return _fill(_shapes(module), seed)


@pytest.fixture(scope="module")
def tiny_variables():
  return _random_variables(_tiny("bottleneck"))


# --- architecture -------------------------------------------------------------------

# torchvision's total parameter counts minus the fc layer (512 or 2048 inputs, 1000 classes).
@pytest.mark.parametrize("name,total,fc_in", [
    ("resnet18", 11_689_512, 512), ("resnet34", 21_797_672, 512),
    ("resnet50", 25_557_032, 2048), ("resnet101", 44_549_160, 2048),
    ("resnet152", 60_192_808, 2048)])
def test_backbone_parameter_counts_match_torchvision(name, total, fc_in):
  module = resnet.resnet(name, 1000)
  params = dict(_shapes(module)["params"])
  head = params.pop("head")
  backbone_count = sum(x.size for x in jax.tree.leaves(params))
  assert backbone_count == total - (fc_in * 1000 + 1000)
  assert head["kernel"].shape == (fc_in, 1000) and module.num_features == fc_in
  assert name != "resnet101" or backbone_count == 42_500_160
  assert name != "resnet50" or backbone_count == 23_508_032


@pytest.mark.parametrize("strides, size", [(1, 5), (2, 5), (2, 6)])
def test_pointwise_conv_is_the_1x1_convolution(strides, size):
  """Checkpoints see flax's 1x1 nn.Conv (same parameter, same initial values from the same
  key); the output is the numpy product over channels of the pixels a stride-s 1x1
  convolution reads (odd and even sizes: torchvision's ceil(size / 2) outputs)."""
  init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  x = np.random.default_rng(0).normal(size=(2, size, size, 12)).astype(np.float32)
  ours = PointwiseConv(20, strides, kernel_init=init)
  conv = nn.Conv(20, (1, 1), strides=strides, padding=0, use_bias=False, kernel_init=init)
  variables = ours.init(jax.random.key(3), x)
  reference_variables = conv.init(jax.random.key(3), x)
  np.testing.assert_array_equal(variables["params"]["kernel"],
                                reference_variables["params"]["kernel"])
  kernel = np.asarray(variables["params"]["kernel"], np.float64)
  expected = np.einsum("bhwc,cd->bhwd", x[:, ::strides, ::strides].astype(np.float64),
                       kernel[0, 0])
  assert expected.shape[1] == -(-size // strides)
  # float32 sums of 12 products of magnitude ~1: rounding well below 1e-5.
  np.testing.assert_allclose(ours.apply(variables, x), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(conv.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_same_conv_is_the_stride_1_convolution(kernel_size):
  """SameConv is flax's stride-1 nn.Conv with padding k // 2 (same parameter and initial
  values); its hand-written kernel gradient is the numpy sum over output pixels of the
  shifted, zero-padded input times the output gradient, and its input gradient nn.Conv's."""
  init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 6, 7, 4)).astype(np.float32)
  cotangent = rng.normal(size=(2, 6, 7, 5)).astype(np.float32)
  ours = SameConv(5, kernel_size, kernel_init=init)
  pad = kernel_size // 2
  conv = nn.Conv(5, (kernel_size, kernel_size), padding=pad, use_bias=False, kernel_init=init)
  variables = ours.init(jax.random.key(3), x)
  np.testing.assert_array_equal(variables["params"]["kernel"],
                                conv.init(jax.random.key(3), x)["params"]["kernel"])
  output, vjp = jax.vjp(ours.apply, variables, x)
  reference_output, reference_vjp = jax.vjp(conv.apply, variables, x)
  kernel_grad, input_grad = vjp(cotangent)
  _, reference_input_grad = reference_vjp(cotangent)
  padded = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  expected = np.zeros((kernel_size, kernel_size, 4, 5))
  for i in range(kernel_size):
    for j in range(kernel_size):
      expected[i, j] = np.einsum("bhwc,bhwd->cd", padded[:, i:i + 6, j:j + 7], cotangent)
  # float32 sums of at most 84 products of magnitude ~1: rounding well below 1e-4.
  np.testing.assert_allclose(output, reference_output, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(kernel_grad["params"]["kernel"], expected, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(input_grad, reference_input_grad, rtol=1e-5, atol=1e-5)
  # Forward mode too: the tangent is nn.Conv's (the convolution is bilinear, so its JVP
  # is conv(dx, K) + conv(x, dK)), within the same rounding.
  tangents = jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape), v.dtype),
                          (variables, x))
  _, tangent_out = jax.jvp(ours.apply, (variables, x), tangents)
  _, reference_tangent = jax.jvp(conv.apply, (variables, x), tangents)
  np.testing.assert_allclose(tangent_out, reference_tangent, rtol=1e-5, atol=1e-4)


def test_outputs_aux_and_head(tiny_variables):
  module = _tiny("bottleneck")
  images = _images()
  outputs, aux = _apply(module, tiny_variables, images, False)
  assert outputs.shape == (BATCH, NUM_OUTPUTS) and outputs.dtype == jnp.float32
  assert set(aux) == {"stem", "stage1", "stage2", "stage3", "pre_logits"}
  assert aux["stem"].shape == (BATCH, 16, 16, 8)  # 7x7/2 stem; the max-pool halves again.
  assert aux["stage1"].shape == (BATCH, 8, 8, 32)
  assert aux["stage3"].shape == (BATCH, 2, 2, 128)
  # pre_logits is the global average of the last stage; the head a Dense on it.
  np.testing.assert_allclose(aux["pre_logits"], aux["stage3"].mean(axis=(1, 2)), rtol=1e-6)
  head = tiny_variables["params"]["head"]
  np.testing.assert_allclose(outputs, aux["pre_logits"] @ head["kernel"] + head["bias"],
                             rtol=1e-5, atol=1e-6)


def test_input_normalisation_is_imagenet_statistics(tiny_variables):
  # An image equal to the ImageNet mean is zero after normalisation, so the (bias-free)
  # stem conv gives zero and the stem BN in eval mode gives relu(bias - mean * scale /
  # sqrt(var + eps)) everywhere. One standard deviation more must change that.
  module = _tiny("bottleneck")
  mean, std = jnp.asarray(resnet.IMAGENET_MEAN), jnp.asarray(resnet.IMAGENET_STD)
  images = jnp.concatenate([jnp.broadcast_to(mean, (BATCH - 1, 32, 32, 3)),
                            jnp.broadcast_to(mean + std, (1, 32, 32, 3))])
  _, aux = _apply(module, tiny_variables, images, False)
  bn, stats = tiny_variables["params"]["stem_bn"], tiny_variables["batch_stats"]["stem_bn"]
  expected = jax.nn.relu(bn["bias"] - stats["mean"] * bn["scale"] / np.sqrt(stats["var"] + 1e-5))
  np.testing.assert_allclose(aux["stem"][:-1], jnp.broadcast_to(expected, aux["stem"][:-1].shape),
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(aux["stem"][-1], aux["stem"][0], atol=1e-3)


def test_eval_mode_is_frozen_and_per_example(tiny_variables):
  module = _tiny("bottleneck")
  images = _images()
  # The same first image among other images.
  others = images.at[1:].set(_images(seed=9)[1:])
  outputs, _ = _apply(module, tiny_variables, images, False)
  outputs_others, _ = _apply(module, tiny_variables, others, False)
  np.testing.assert_allclose(outputs[0], outputs_others[0], rtol=1e-5, atol=1e-6)
  # Train mode: batch statistics (the output of an example depends on its batch) and
  # the running averages move.
  (train_outputs, _), state = _apply(module, tiny_variables, images, True)
  (train_others, _), _ = _apply(module, tiny_variables, others, True)
  assert not np.allclose(train_outputs[0], train_others[0], atol=1e-3)
  assert not np.allclose(train_outputs[0], outputs[0], atol=1e-3)
  old = tiny_variables["batch_stats"]["stem_bn"]["mean"]
  assert not np.allclose(state["batch_stats"]["stem_bn"]["mean"], old)


def test_train_mode_batch_norm_over_global_sharded_batch(tiny_variables):
  """8 devices, one image per device: same outputs and running statistics as one device
  with the whole batch, i.e. BatchNorm statistics are global-batch (per-device statistics
  of a single image would be wildly different)."""
  assert jax.device_count() == BATCH
  module = _tiny("bottleneck")
  images = _images(seed=3)
  (reference_outputs, _), reference_state = _apply(module, tiny_variables, images, True)

  mesh = sharding.make_mesh()
  sharded_images = sharding.shard_batch(images, mesh)
  (sharded_outputs, _), sharded_state = _apply(
      module, sharding.replicate(tiny_variables, mesh), sharded_images, True)
  assert len(sharded_images.sharding.device_set) == BATCH
  np.testing.assert_allclose(sharded_outputs, reference_outputs, rtol=1e-5, atol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
               sharded_state, reference_state)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_close_to_float32(tiny_variables, dtype):
  images = _images()
  reference, _ = _apply(_tiny("bottleneck"), tiny_variables, images, False)
  half_module = _tiny("bottleneck", dtype=dtype)
  outputs, aux = _apply(half_module, tiny_variables, images, False)
  assert outputs.dtype == jnp.float32 and aux["pre_logits"].dtype == jnp.float32
  assert aux["stage1"].dtype == dtype
  relative_error = jnp.linalg.norm(outputs - reference) / jnp.linalg.norm(reference)
  assert relative_error < 3e-2
  # Parameters a half-precision module creates are float32 too.
  assert {x.dtype for x in jax.tree.leaves(_shapes(half_module))} == {jnp.dtype(jnp.float32)}


def test_build_model_maps_config():
  module = models.build_model(student_config(model="resnet101", dtype="bfloat16"), 512)
  assert isinstance(module, resnet.ResNet)
  assert module.stage_sizes == (3, 4, 23, 3) and module.block == "bottleneck"
  assert module.num_outputs == 512 and module.dtype == jnp.bfloat16
  module = models.build_model(student_config(model="resnet18", dtype="float16",
                                           init="imagenet:microsoft/resnet-18"), 10)
  assert module.block == "basic" and module.dtype == jnp.float16


@pytest.mark.parametrize("backend, expected", [("cpu", jnp.float32), ("gpu", jnp.bfloat16),
                                               ("tpu", jnp.bfloat16)])
def test_auto_dtype_is_bfloat16_on_accelerators_only(monkeypatch, backend, expected):
  """The default compute dtype: bfloat16 where matrix units run it natively, float32 on
  CPUs (where XLA emulates bfloat16); the module's parameters stay float32 either way."""
  assert config_lib.base_config().student.dtype == "auto"
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  module = models.build_model(student_config(model="resnet18", dtype="auto"), 10)
  assert module.dtype == expected
  assert {x.dtype for x in jax.tree.leaves(_shapes(module))} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("overrides,match", [
    (dict(model="resnet200"), r"student.model='resnet200'.*resnet18.*resnet152.*'clip'"),
    (dict(dtype="float64"), r"student.dtype='float64'.*bfloat16"),
    (dict(init="imagenet:"), r"student.init='imagenet:'"),
    (dict(init="teacher"), r"student.model='clip'"),
])
def test_build_model_rejects_bad_config(overrides, match):
  with pytest.raises(ValueError, match=match):
    models.build_model(student_config(**overrides), 10)


def test_build_model_rejects_bad_num_outputs():
  with pytest.raises(ValueError, match="num_outputs"):
    models.build_model(student_config(), 0)


# --- ImageNet initialisation from Hugging Face checkpoints ----------------------------
#
# References: transformers 5's PyTorch ResNets (random tiny checkpoints written by
# save_pretrained, and by torch.save as transformers 4 wrote pytorch_model.bin), and for
# the Flax layouts, which only transformers 4 could write, the checked-in
# tests/fixtures/flax_resnet_* with FlaxResNetModel's own features on them.

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# Per block: the PyTorch class the checkpoint comes from (the unprefixed backbone, and
# the "resnet."-prefixed classifier that microsoft/resnet-* are).
TORCH_CLASSES = {"bottleneck": "ResNetModel", "basic": "ResNetForImageClassification"}


def _hf_config(block, **overrides):
  from transformers import ResNetConfig
  tiny = TINY[block]
  expansion = resnet.BLOCKS[block].expansion
  return ResNetConfig(
      embedding_size=tiny["width"], depths=list(tiny["stage_sizes"]), layer_type=block,
      hidden_sizes=[tiny["width"] * 2**i * expansion for i in range(len(tiny["stage_sizes"]))],
      **overrides)


def _random_torch_model(block, seed):
  """A tiny transformers ResNet in eval mode with every tensor random: He-scaled conv
  kernels, and BN affines and running statistics away from 1/0, so that a swapped or
  dropped entry changes the features."""
  import torch
  import transformers
  model = getattr(transformers, TORCH_CLASSES[block])(_hf_config(block, num_labels=3)).eval()
  rng = np.random.default_rng(seed)
  state = {}
  for name, tensor in model.state_dict().items():
    shape, leaf = tuple(tensor.shape), name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
      value = np.array(10)
    elif leaf == "weight" and len(shape) == 4:
      value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
    elif leaf in ("running_var",) or (leaf == "weight" and "normalization" in name):
      value = rng.uniform(0.5, 1.5, shape)
    else:  # BN bias, running_mean, the classifier.
      value = rng.normal(0.0, 0.2, shape)
    state[name] = torch.as_tensor(value, dtype=tensor.dtype)
  model.load_state_dict(state)
  return model


@pytest.fixture(scope="module")
def torch_checkpoints(tmp_path_factory):
  """{block: (directory, PyTorch model)}: the model saved by transformers 5's
  save_pretrained (config.json, model.safetensors in PyTorch layout)."""
  checkpoints = {}
  for seed, block in enumerate(TINY):
    model = _random_torch_model(block, seed)
    directory = tmp_path_factory.mktemp(f"hf_resnet_{block}")
    model.save_pretrained(directory)
    assert {p.name for p in directory.iterdir()} == {"config.json", "model.safetensors"}
    checkpoints[block] = (str(directory), model)
  return checkpoints


def _torch_pooled(model, images01):
  """transformers' own forward on the same images (ImageNet-normalised, NCHW): pooled
  features [B, C]."""
  import torch
  mean, std = np.asarray(resnet.IMAGENET_MEAN), np.asarray(resnet.IMAGENET_STD)
  pixel_values = ((np.asarray(images01) - mean) / std).transpose(0, 3, 1, 2)
  with torch.no_grad():
    outputs = model.base_model(torch.as_tensor(pixel_values, dtype=torch.float32))
  return outputs.pooler_output[:, :, 0, 0].numpy()


def _torch_train_step(model, images01):
  """A train-mode forward of a copy of `model`: (pooled features, the running
  statistics after it as rrjax keeps them). torch folds the *unbiased* batch variance
  into running_var, Flax the biased one, so the expected variances are rebuilt from each
  BatchNorm's input (momentum 0.1 in torch == 0.9 in Flax)."""
  import copy
  import torch
  model = copy.deepcopy(model).train()
  batch_vars, old_vars, hooks = {}, {}, []
  for name, layer in model.base_model.named_modules():
    if isinstance(layer, torch.nn.BatchNorm2d):
      old_vars[name] = layer.running_var.numpy().copy()
      hooks.append(layer.register_forward_hook(
          lambda layer, inputs, _, name=name: batch_vars.__setitem__(
              name, inputs[0].var(dim=(0, 2, 3), unbiased=False).numpy())))
  pooled = _torch_pooled(model, images01)
  for hook in hooks:
    hook.remove()
  state = {}
  for name, layer in model.base_model.named_modules():
    if name in batch_vars:
      state[f"{name}.running_mean"] = layer.running_mean.numpy()
      state[f"{name}.running_var"] = 0.9 * old_vars[name] + 0.1 * batch_vars[name]
  return pooled, pretrained.convert_hf_variables(pretrained.pytorch_to_flax_layout(state))


def _imagenet_variables(directory, block, seed=2):
  """(module, fresh variables with a random head, those with the checkpoint's backbone)."""
  module = _tiny(block)
  backbone = pretrained.load_imagenet_resnet(directory, module)
  assert "head" not in backbone["params"]
  fresh = _random_variables(module, seed=seed)
  return module, fresh, pretrained.with_backbone(fresh, backbone)


@pytest.mark.parametrize("block", list(TINY))
def test_imagenet_weights_reproduce_hf_features(torch_checkpoints, block):
  directory, model = torch_checkpoints[block]
  module, fresh, variables = _imagenet_variables(directory, block)
  images = _images(seed=5)

  _, aux = _apply(module, variables, images, False)
  reference = _torch_pooled(model, images)
  assert float(np.abs(reference).max()) > 0.1  # Not a trivially small comparison.
  np.testing.assert_allclose(aux["pre_logits"], reference, rtol=1e-4, atol=1e-4)
  # Head untouched by the import.
  np.testing.assert_array_equal(variables["params"]["head"]["kernel"],
                                fresh["params"]["head"]["kernel"])

  if block == "bottleneck":  # Train mode: batch statistics and running-average updates.
    (_, aux), state = _apply(module, variables, images, True)
    reference, expected_state = _torch_train_step(model, images)
    np.testing.assert_allclose(aux["pre_logits"], reference, rtol=1e-4, atol=1e-4)
    assert set(flatten_dict(expected_state)) == set(flatten_dict(unfreeze(state)))
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5),
                 unfreeze(state), expected_state)


@pytest.mark.parametrize("block", list(TINY))
def test_flax_checkpoints_reproduce_transformers4_features(block):
  """flax_model.msgpack as transformers 4's Flax save_pretrained wrote it (for basic
  blocks a FlaxResNetForImageClassification, whose convs are "layer_0", "layer_1"),
  against FlaxResNetModel's own features recorded with it."""
  directory = os.path.join(FIXTURES, f"flax_resnet_{block}")
  reference = np.load(os.path.join(directory, "reference.npz"))
  module, _, variables = _imagenet_variables(directory, block)
  images = jnp.asarray(reference["images"], jnp.float32) / 255.0
  _, aux = _apply(module, variables, images, False)
  assert float(np.abs(reference["pooled"]).max()) > 0.1
  np.testing.assert_allclose(aux["pre_logits"], reference["pooled"], rtol=1e-4, atol=1e-4)


def _copy_checkpoint(source, files, directory):
  directory.mkdir(exist_ok=True)
  for name in ("config.json", *files):
    shutil.copy(os.path.join(source, name), directory)
  return str(directory)


def test_checkpoint_layouts_give_the_same_backbone(torch_checkpoints, tmp_path):
  """pytorch_model.bin (torch.save of the state dict, as transformers 4 wrote it; read
  without torch) gives exactly the model.safetensors backbone, both block kinds; Flax
  safetensors (transformers 4's save_pretrained(safe_serialization=True)) exactly the
  flax_model.msgpack one."""
  import torch
  for block, (directory, model) in torch_checkpoints.items():
    bin_dir = tmp_path / block
    _copy_checkpoint(directory, (), bin_dir)
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    module = _tiny(block)
    jax.tree.map(np.testing.assert_array_equal,
                 pretrained.load_imagenet_resnet(str(bin_dir), module),
                 pretrained.load_imagenet_resnet(directory, module))
  flax_dir = os.path.join(FIXTURES, "flax_resnet_basic")
  safetensors_dir = _copy_checkpoint(flax_dir, ("model.safetensors",), tmp_path / "flax_safe")
  module = _tiny("basic")
  jax.tree.map(np.testing.assert_array_equal,
               pretrained.load_imagenet_resnet(safetensors_dir, module),
               pretrained.load_imagenet_resnet(flax_dir, module))


def test_incomplete_or_unreadable_checkpoint_is_rejected(torch_checkpoints, tmp_path):
  from safetensors.torch import save_file
  directory, model = torch_checkpoints["basic"]
  _copy_checkpoint(directory, (), tmp_path)
  with pytest.raises(FileNotFoundError, match=r"no ResNet weights found \(flax_model.msgpack, "
                     r"model.safetensors, pytorch_model.bin\)"):
    pretrained.load_imagenet_resnet(str(tmp_path), _tiny("basic"))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="pytorch_model.bin is not a PyTorch checkpoint"):
    pretrained.load_imagenet_resnet(str(tmp_path), _tiny("basic"))
  state = dict(model.state_dict())
  del state["resnet.embedder.embedder.convolution.weight"]
  save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"missing \['params/stem_conv/kernel'\]"):
    pretrained.load_imagenet_resnet(str(tmp_path), _tiny("basic"))


def test_architecture_mismatch_names_checkpoint_and_model(tmp_path):
  from transformers import ResNetConfig
  ResNetConfig(depths=[3, 4, 6, 3], layer_type="bottleneck").save_pretrained(tmp_path)
  with pytest.raises(ValueError, match=r"is resnet50 but the model is resnet101.*depths"):
    pretrained.load_imagenet_resnet(str(tmp_path), resnet.resnet("resnet101", 10))
  ResNetConfig(depths=[3, 4, 6, 3], downsample_in_bottleneck=True).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match=r"downsample_in_bottleneck: checkpoint True vs model False"):
    pretrained.load_imagenet_resnet(str(tmp_path), resnet.resnet("resnet50", 10))  # ResNet v1.
  with pytest.raises(ValueError, match=r"layer_type: checkpoint bottleneck vs model basic"):
    pretrained.load_imagenet_resnet(str(tmp_path), resnet.resnet("resnet50", 10).clone(
        block="basic"))
  ResNetConfig(depths=[2, 2, 2, 2], layer_type="basic", hidden_sizes=[64, 128, 256, 512],
               hidden_act="gelu").save_pretrained(tmp_path)
  with pytest.raises(ValueError, match=r"hidden_act: checkpoint gelu vs model relu"):
    pretrained.load_imagenet_resnet(str(tmp_path), resnet.resnet("resnet18", 10))
  # microsoft/resnet-50's config.json predates downsample_in_bottleneck; fields a config
  # lacks take transformers' defaults.
  pretrained.check_architecture({"model_type": "resnet", "depths": [3, 4, 6, 3]},
                                resnet.resnet("resnet50", 10), "old")
  with pytest.raises(ValueError, match=r"is resnet50 but the model is resnet18"):
    pretrained.check_architecture({"model_type": "resnet"}, resnet.resnet("resnet18", 10), "old")


def test_non_resnet_or_missing_checkpoint_errors(tmp_path):
  from transformers import BertConfig
  BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
             intermediate_size=8).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match="'bert' checkpoint, not a Hugging Face ResNet"):
    pretrained.load_imagenet_resnet(str(tmp_path), _tiny("basic"))
  with pytest.raises(FileNotFoundError, match="no such directory.*save_pretrained"):
    pretrained.load_imagenet_resnet(str(tmp_path / "missing"), _tiny("basic"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"no Hugging Face config found \(config.json\)"):
    pretrained.load_imagenet_resnet(str(empty), _tiny("basic"))
  # A hub id that is not in the (empty, offline) cache: told to download it or give a dir.
  with pytest.raises(FileNotFoundError, match="microsoft/resnet-18.*local directory"):
    pretrained.load_imagenet_resnet("microsoft/resnet-18", _tiny("basic"))


def test_with_backbone_rejects_wrong_variables(tiny_variables):
  backbone = {k: dict(v) for k, v in unfreeze(tiny_variables).items()}
  backbone["params"].pop("head")
  wider = _random_variables(_tiny("bottleneck", num_outputs=3))
  merged = pretrained.with_backbone(wider, backbone)  # Only the head may differ.
  assert merged["params"]["head"]["kernel"].shape == (128, 3)
  backbone["params"].pop("stem_conv")
  with pytest.raises(ValueError, match="missing.*stem_conv"):
    pretrained.with_backbone(tiny_variables, backbone)
  other = _random_variables(_tiny("basic"))
  with pytest.raises(ValueError, match="layer1_0"):
    pretrained.with_backbone(other, {k: v for k, v in unfreeze(tiny_variables).items()})


def test_init_variables_random_and_imagenet(torch_checkpoints):
  directory, _ = torch_checkpoints["basic"]
  module = _tiny("basic")
  # An "rbg" key: XLA's own bit generator compiles in a fraction of the time of the
  # default threefry (thousands of unrolled ops per parameter on CPU), and init_variables
  # is compiled twice here. What is checked does not depend on the generator.
  rng = jax.random.key(7, impl="rbg")
  random_variables = models.init_variables(student_config(model="resnet18"), module, rng, 32)
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), random_variables)
          == jax.tree.map(lambda x: (x.shape, x.dtype), unfreeze(_shapes(module))))
  # torchvision's initialisation: He normal over fan-out for convs, BN at 1/0, stats 0/1.
  kernel = random_variables["params"]["layer2_1"]["conv2"]["kernel"]  # 3x3, 16 -> 16
  np.testing.assert_allclose(np.std(kernel), np.sqrt(2.0 / (3 * 3 * 16)), rtol=0.1)
  np.testing.assert_array_equal(random_variables["params"]["layer2_1"]["bn2"]["scale"], 1.0)
  np.testing.assert_array_equal(random_variables["batch_stats"]["stem_bn"]["var"], 1.0)

  variables = models.init_variables(
      student_config(model="resnet18", init=f"imagenet:{directory}"), module, rng, 32)
  backbone = pretrained.load_imagenet_resnet(directory, module)
  jax.tree.map(np.testing.assert_array_equal,
               {"params": {k: v for k, v in variables["params"].items() if k != "head"},
                "batch_stats": variables["batch_stats"]}, backbone)
  jax.tree.map(np.testing.assert_array_equal, variables["params"]["head"],
               random_variables["params"]["head"])

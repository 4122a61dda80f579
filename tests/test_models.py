"""ResNet students (rrjax.models.resnet) and ImageNet initialisation (rrjax.models.pretrained).

References: torchvision's parameter counts, transformers' own FlaxResNetModel on tiny
random checkpoints saved to disk, and a single-device run for the sharded batch.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax.core import unfreeze
from flax.traverse_util import flatten_dict

from rrjax import models, sharding
from rrjax.models import pretrained, resnet

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


def _student_cfg(**overrides):
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
  module = models.build_model(_student_cfg(model="resnet101", dtype="bfloat16"), 512)
  assert isinstance(module, resnet.ResNet)
  assert module.stage_sizes == (3, 4, 23, 3) and module.block == "bottleneck"
  assert module.num_outputs == 512 and module.dtype == jnp.bfloat16
  module = models.build_model(_student_cfg(model="resnet18", dtype="float16",
                                           init="imagenet:microsoft/resnet-18"), 10)
  assert module.block == "basic" and module.dtype == jnp.float16


@pytest.mark.parametrize("overrides,match", [
    (dict(model="resnet200"), r"student.model='resnet200'.*resnet18.*resnet152.*clip_vit"),
    (dict(dtype="float64"), r"student.dtype='float64'.*bfloat16"),
    (dict(init="imagenet:"), r"student.init='imagenet:'"),
    (dict(init="teacher"), r"clip_vit"),
])
def test_build_model_rejects_bad_config(overrides, match):
  with pytest.raises(ValueError, match=match):
    models.build_model(_student_cfg(**overrides), 10)


def test_build_model_rejects_bad_num_outputs():
  with pytest.raises(ValueError, match="num_outputs"):
    models.build_model(_student_cfg(), 0)


# --- ImageNet initialisation from Hugging Face checkpoints ----------------------------

def _hf_config(block):
  from transformers import ResNetConfig
  tiny = TINY[block]
  expansion = resnet.BLOCKS[block].expansion
  return ResNetConfig(
      embedding_size=tiny["width"], depths=list(tiny["stage_sizes"]), layer_type=block,
      hidden_sizes=[tiny["width"] * 2**i * expansion for i in range(len(tiny["stage_sizes"]))])


@pytest.fixture(scope="module")
def hf_checkpoints(tmp_path_factory):
  """{block: (directory, FlaxResNetModel, its params)}: tiny random checkpoints written by
  transformers' save_pretrained (flax_model.msgpack)."""
  from transformers import FlaxResNetModel
  checkpoints = {}
  for seed, block in enumerate(TINY):
    model = FlaxResNetModel(_hf_config(block), input_shape=(1, 32, 32, 3), _do_init=False)
    params = _fill(model.params_shape_tree, seed)
    directory = tmp_path_factory.mktemp(f"hf_resnet_{block}")
    model.save_pretrained(directory, params=params)
    checkpoints[block] = (str(directory), model, params)
  return checkpoints


def _hf_pooled(hf_model, params, images01, train):
  """transformers' own forward on the same input (normalised, NCHW): pooled features and,
  in train mode, the updated batch_stats."""
  mean, std = jnp.asarray(resnet.IMAGENET_MEAN), jnp.asarray(resnet.IMAGENET_STD)
  pixel_values = jnp.transpose((images01 - mean) / std, (0, 3, 1, 2))

  @jax.jit
  def forward(params, pixel_values):
    if train:
      outputs, state = hf_model(pixel_values, params=params, train=True)
      return outputs.pooler_output[:, :, 0, 0], state
    return hf_model(pixel_values, params=params, train=False).pooler_output[:, :, 0, 0]

  return forward(params, pixel_values)


@pytest.mark.parametrize("block", list(TINY))
def test_imagenet_weights_reproduce_hf_features(hf_checkpoints, block):
  directory, hf_model, hf_params = hf_checkpoints[block]
  module = _tiny(block)
  backbone = pretrained.load_imagenet_resnet(directory, module)
  assert "head" not in backbone["params"]
  fresh = _random_variables(module, seed=2)
  variables = pretrained.with_backbone(fresh, backbone)
  images = _images(seed=5)

  _, aux = _apply(module, variables, images, False)
  reference = _hf_pooled(hf_model, hf_params, images, train=False)
  assert float(jnp.abs(reference).max()) > 0.1  # Not a trivially small comparison.
  np.testing.assert_allclose(aux["pre_logits"], reference, rtol=1e-4, atol=1e-4)
  # Head untouched by the import.
  np.testing.assert_array_equal(variables["params"]["head"]["kernel"],
                                fresh["params"]["head"]["kernel"])

  if block == "bottleneck":  # Train mode: batch statistics and running-average updates.
    (_, aux), state = _apply(module, variables, images, True)
    reference, hf_state = _hf_pooled(hf_model, hf_params, images, train=True)
    np.testing.assert_allclose(aux["pre_logits"], reference, rtol=1e-4, atol=1e-4)
    expected_state = pretrained.convert_hf_variables(hf_state)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5),
                 unfreeze(state), expected_state)


def _to_pytorch_state_dict(hf_variables):
  """The checkpoint as microsoft/resnet-* stores it: transformers' PyTorch
  ResNetForImageClassification names ("resnet." prefix, classifier, num_batches_tracked),
  OIHW kernels, running_* statistics."""
  leaf_names = {"kernel": "weight", "scale": "weight", "bias": "bias",
                "mean": "running_mean", "var": "running_var"}
  state = {"classifier.1.weight": np.ones((1000, 4), np.float32),
           "classifier.1.bias": np.zeros((1000,), np.float32)}
  for path, value in flatten_dict(unfreeze(hf_variables)).items():
    path = path[1:]  # Drop the collection.
    names = ["resnet"] + [name.removeprefix("layer_") for name in path[:-1]]
    value = np.asarray(value)
    # Contiguous: safetensors writes an array's memory as is.
    state[".".join(names + [leaf_names[path[-1]]])] = np.ascontiguousarray(
        value.transpose(3, 2, 0, 1) if value.ndim == 4 else value)
    if path[-1] == "mean":
      state[".".join(names + ["num_batches_tracked"])] = np.array(10, np.int64)
  return state


def _save_checkpoint(hf_model, hf_params, block, layout, directory):
  """The tiny checkpoint in another on-disk layout; config.json as save_pretrained writes it."""
  from safetensors.numpy import save_file
  from transformers import FlaxResNetForImageClassification
  _hf_config(block).save_pretrained(directory)
  if layout == "pytorch_safetensors":
    save_file(_to_pytorch_state_dict(hf_params), str(directory / "model.safetensors"),
              metadata={"format": "pt"})
  elif layout == "flax_safetensors":
    hf_model.save_pretrained(directory, params=hf_params, safe_serialization=True)
  elif layout == "classifier_msgpack":
    classifier = FlaxResNetForImageClassification(_hf_config(block), _do_init=False)
    head_shapes = classifier.params_shape_tree["params"]["classifier"]
    classifier.save_pretrained(directory, params={
        "params": {"resnet": hf_params["params"], "classifier": _fill(head_shapes, 0)},
        "batch_stats": {"resnet": hf_params["batch_stats"]}})
  assert {p.name for p in directory.iterdir()} == {
      "config.json", "flax_model.msgpack" if layout == "classifier_msgpack" else "model.safetensors"}


@pytest.mark.parametrize("block,layout", [
    ("basic", "pytorch_safetensors"), ("bottleneck", "pytorch_safetensors"),
    ("bottleneck", "flax_safetensors"), ("basic", "classifier_msgpack")])
def test_checkpoint_layouts_give_the_same_backbone(hf_checkpoints, tmp_path, block, layout):
  """PyTorch safetensors (read without torch; transformers' own conversion loses the
  basic-block convs), Flax safetensors, and ResNetForImageClassification checkpoints."""
  directory, hf_model, hf_params = hf_checkpoints[block]
  _save_checkpoint(hf_model, hf_params, block, layout, tmp_path)
  module = _tiny(block)
  jax.tree.map(np.testing.assert_array_equal,
               pretrained.load_imagenet_resnet(str(tmp_path), module),
               pretrained.load_imagenet_resnet(directory, module))


def test_incomplete_checkpoint_is_rejected(hf_checkpoints, tmp_path):
  from safetensors.numpy import save_file
  _, _, hf_params = hf_checkpoints["basic"]
  _hf_config("basic").save_pretrained(tmp_path)
  state = _to_pytorch_state_dict(hf_params)
  del state["resnet.embedder.embedder.convolution.weight"]
  save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"missing \['params/stem_conv/kernel'\]"):
    pretrained.load_imagenet_resnet(str(tmp_path), _tiny("basic"))


def test_pytorch_bin_only_checkpoint_gives_clear_error(tmp_path):
  _hf_config("basic").save_pretrained(tmp_path)
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match="pytorch_model.bin.*safetensors"):
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


def test_non_resnet_or_missing_checkpoint_errors(tmp_path):
  from transformers import BertConfig
  BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
             intermediate_size=8).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match="not a Hugging Face ResNet"):
    pretrained.load_imagenet_resnet(str(tmp_path), _tiny("basic"))
  with pytest.raises(FileNotFoundError, match="save_pretrained"):
    pretrained.load_imagenet_resnet(str(tmp_path / "missing"), _tiny("basic"))


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


def test_init_variables_random_and_imagenet(hf_checkpoints):
  directory, _, _ = hf_checkpoints["basic"]
  module = _tiny("basic")
  rng = jax.random.key(7)
  random_variables = models.init_variables(_student_cfg(model="resnet18"), module, rng, 32)
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), random_variables)
          == jax.tree.map(lambda x: (x.shape, x.dtype), unfreeze(_shapes(module))))
  # torchvision's initialisation: He normal over fan-out for convs, BN at 1/0, stats 0/1.
  kernel = random_variables["params"]["layer2_1"]["conv2"]["kernel"]  # 3x3, 16 -> 16
  np.testing.assert_allclose(np.std(kernel), np.sqrt(2.0 / (3 * 3 * 16)), rtol=0.1)
  np.testing.assert_array_equal(random_variables["params"]["layer2_1"]["bn2"]["scale"], 1.0)
  np.testing.assert_array_equal(random_variables["batch_stats"]["stem_bn"]["var"], 1.0)

  variables = models.init_variables(
      _student_cfg(model="resnet18", init=f"imagenet:{directory}"), module, rng, 32)
  backbone = pretrained.load_imagenet_resnet(directory, module)
  jax.tree.map(np.testing.assert_array_equal,
               {"params": {k: v for k, v in variables["params"].items() if k != "head"},
                "batch_stats": variables["batch_stats"]}, backbone)
  jax.tree.map(np.testing.assert_array_equal, variables["params"]["head"],
               random_variables["params"]["head"])

"""The Flax MobileNet v1 read from a quantised `.tflite` file (`rrjax.teachers.tflite_mobilenet`)
against LiteRT's interpreter on real photos, and its parts against independent references.

The file and photos are the shared real data (../shared/realdata next to the repository, as
the benchmarks use it, or $RRJAX_REALDATA); tests that need them or LiteRT
(`pip install ai-edge-litert`) skip without them.
"""

import glob
import hashlib
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from rrjax.teachers import plugin, tflite_mobilenet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REALDATA = os.environ.get("RRJAX_REALDATA", os.path.join(REPO, "..", "shared", "realdata"))
TFLITE = os.path.join(REALDATA, "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite")
PHOTOS = os.path.join(REALDATA, "imagenette10", "val")
NUM_PHOTOS = 24


def _needs_file():
  pytest.importorskip("ai_edge_litert")
  if not os.path.exists(TFLITE):
    pytest.skip(f"no {TFLITE}")


def _reference_depthwise(x, kernel, strides):
  """Loops over output pixels, with TensorFlow's SAME rule written out: out = ceil(n / s),
  total padding max((out - 1) s + k - n, 0), the smaller half before."""
  batch, height, width, channels = x.shape
  size = kernel.shape[0]
  outs, pads = [], []
  for n in (height, width):
    out = -(-n // strides)
    outs.append(out)
    pads.append(max((out - 1) * strides + size - n, 0) // 2)
  result = np.zeros((batch, *outs, channels))
  for r in range(outs[0]):
    for c in range(outs[1]):
      for i in range(size):
        for j in range(size):
          y, x_ = r * strides + i - pads[0], c * strides + j - pads[1]
          if 0 <= y < height and 0 <= x_ < width:
            result[:, r, c] += x[:, y, x_] * kernel[i, j, 0]
  return result


@pytest.mark.parametrize("size,strides", [(8, 1), (8, 2), (7, 2), (6, 3)])
def test_depthwise_conv_matches_tensorflow_same_padding(size, strides):
  rng = np.random.default_rng(size * 10 + strides)
  x = rng.normal(size=(2, size, size + 1, 5)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 1, 5)).astype(np.float32)
  expected = _reference_depthwise(x, kernel, strides)
  on_cpu = jax.jit(tflite_mobilenet.depthwise_conv, static_argnums=2)(x, kernel, strides)
  np.testing.assert_allclose(on_cpu, expected, rtol=1e-5, atol=1e-5)
  # The form accelerators get (XLA's grouped convolution), and its image gradient.
  np.testing.assert_allclose(tflite_mobilenet._depthwise_xla(x, kernel, strides), expected,
                             rtol=1e-5, atol=1e-5)
  grads = [jax.grad(lambda x: jnp.sum(f(x, kernel, strides) ** 2))(x)
           for f in (tflite_mobilenet._depthwise_shifted, tflite_mobilenet._depthwise_xla)]
  np.testing.assert_allclose(*grads, rtol=1e-4, atol=1e-4)


def test_depthwise_module_is_a_grouped_flax_conv():
  x = np.random.default_rng(0).normal(size=(2, 9, 9, 4)).astype(np.float32)
  ours = tflite_mobilenet.DepthwiseConv(strides=2)
  variables = ours.init(jax.random.key(0), x)
  theirs = nn.Conv(4, (3, 3), 2, padding="SAME", feature_group_count=4)
  assert (jax.tree.map(jnp.shape, variables)
          == jax.tree.map(jnp.shape, theirs.init(jax.random.key(0), x)))
  variables = jax.tree.map(lambda v: v + 0.5, variables)  # A nonzero bias too.
  np.testing.assert_allclose(jax.jit(ours.apply)(variables, x), theirs.apply(variables, x),
                             rtol=1e-5, atol=1e-5)


def test_dequantize_per_tensor_and_per_channel():
  values = np.array([[0, 128, 255], [10, 20, 30]], np.uint8)
  np.testing.assert_allclose(tflite_mobilenet.dequantize(values, [0.5], [128]),
                             [[-64, 0, 63.5], [-59, -54, -49]])
  # Per channel along axis 1: column j has scale scales[j] and zero point zero_points[j].
  np.testing.assert_allclose(
      tflite_mobilenet.dequantize(values, [1.0, 0.1, 2.0], [0, 128, 5], axis=1),
      [[0, 0, 500], [10, -10.8, 50]], rtol=1e-6)
  int8 = np.array([-128, 0, 127], np.int8)
  np.testing.assert_allclose(tflite_mobilenet.dequantize(int8, [0.25], [0]), [-32, 0, 31.75])


def test_fake_quantize_rounds_to_the_grid_with_a_straight_through_gradient():
  x = jnp.array([-1.0, 0.0, 0.26, 0.74, 1.0, 30.0])
  # Grid (q - 2) * 0.5 for q in 0..255: from -1 to 126.5.
  np.testing.assert_allclose(tflite_mobilenet.fake_quantize(x, 0.5, 2.0),
                             [-1.0, 0.0, 0.5, 0.5, 1.0, 30.0])
  np.testing.assert_allclose(tflite_mobilenet.fake_quantize(jnp.array([-5.0, 200.0]), 0.5, 2.0),
                             [-1.0, 126.5])
  np.testing.assert_allclose(
      jax.grad(lambda x: jnp.sum(tflite_mobilenet.fake_quantize(x, 0.5, 2.0) * 3.0))(x),
      np.full(6, 3.0))


def test_missing_litert_names_the_package(monkeypatch):
  monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
  with pytest.raises(ImportError, match="pip install ai-edge-litert"):
    tflite_mobilenet.read_tflite(__file__)


def test_refuses_float32_only_dtype():
  cfg = ml_collections.ConfigDict({"name": TFLITE, "dtype": "bfloat16"})
  with pytest.raises(ValueError, match="float32 only"):
    tflite_mobilenet.make(cfg)


def _photos():
  """NUM_PHOTOS val photos, every 20th of the sorted list (all 10 classes), each 128x128
  JPEG resized whole to 224x224 with PIL's bilinear filter."""
  files = sorted(glob.glob(os.path.join(PHOTOS, "*", "*.jpg")))[::20][:NUM_PHOTOS]
  if len(files) < NUM_PHOTOS:
    pytest.skip(f"fewer than {NUM_PHOTOS * 20} photos under {PHOTOS}")
  return np.stack([np.asarray(Image.open(f).convert("RGB").resize((224, 224),
                                                                    Image.BILINEAR))
                   for f in files])


def _interpreter_embeddings(images, path=TFLITE):
  """LiteRT's integer kernels on the file: the dequantised [B, 1024] output."""
  from ai_edge_litert.interpreter import Interpreter
  interpreter = Interpreter(model_path=path, num_threads=1)
  (image,), (output,) = interpreter.get_input_details(), interpreter.get_output_details()
  interpreter.resize_tensor_input(image["index"], list(images.shape))
  interpreter.allocate_tensors()
  interpreter.set_tensor(image["index"], images)
  interpreter.invoke()
  scale, zero_point = output["quantization"]
  return (interpreter.get_tensor(output["index"]).reshape(len(images), -1).astype(np.float32)
          - zero_point) * scale


def _cosines(a, b):
  return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# The lowest cosine each factory reaches on the 500 imagenette10 val photos is 0.9997
# (activations on the file's 8-bit grids) and 0.986 (float32 activations).
FACTORIES = {"make": 0.999, "make_float": 0.99}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def teacher(request):
  _needs_file()
  cfg = ml_collections.ConfigDict({
      "kind": "python", "factory": f"rrjax.teachers.tflite_mobilenet:{request.param}",
      "name": TFLITE, "mode": "online", "dtype": "float32"})
  # Imports the factory by name and runs validate_teacher(online=True).
  return request.param, plugin.build(cfg)


def test_factory_is_an_online_teacher(teacher):
  factory, teacher = teacher
  assert plugin.validate_teacher(teacher, "test", online=True) is teacher
  assert (teacher.image_size, teacher.dim) == (224, 1024)
  with open(TFLITE, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  assert teacher.fingerprint == {"make": "tflite-flax-mobilenet_v1:",
                                 "make_float": "tflite-flax-mobilenet_v1-float:"}[factory] + digest
  module = teacher.module
  assert (module.stem_features, module.stem_strides) == (32, 2)
  assert module.blocks == tflite_mobilenet.MOBILENET_V1_BLOCKS
  assert (module.input_scale, module.input_zero_point) == (1 / 128, 128)
  if factory == "make":  # The README's output quantisation; ReLU6's [0, 6] on 8 bits.
    assert len(module.activation_quantization) == 28
    np.testing.assert_allclose(module.activation_quantization, [(6 / 255, 0)] * 28, rtol=1e-4)
  else:
    assert module.activation_quantization is None
  with pytest.raises(ValueError, match="uint8 images"):
    teacher.embed(np.zeros((1, 224, 224, 3), np.float32))


def test_embeddings_match_the_interpreter_on_real_photos(teacher):
  factory, teacher = teacher
  images = _photos()
  ours, theirs = np.asarray(teacher.embed(images)), _interpreter_embeddings(images)
  assert ours.shape == theirs.shape == (NUM_PHOTOS, 1024) and ours.dtype == np.float32
  assert _cosines(ours, theirs).min() >= FACTORIES[factory], _cosines(ours, theirs)
  # Jitted apply on the images' float values (what corrupted, differentiable images are).
  applied = jax.jit(teacher.apply)(teacher.params, images.astype(np.float32))
  np.testing.assert_allclose(applied, ours, rtol=1e-5, atol=1e-5)


def _mutated_file(tmp_path, mutate):
  """The shared file with `mutate(model)` applied to its object tree, written anew."""
  import flatbuffers
  from ai_edge_litert import schema_py_generated as schema
  with open(TFLITE, "rb") as f:
    model = schema.ModelT.InitFromPackedBuf(f.read(), 0)
  mutate(model)
  builder = flatbuffers.Builder(0)
  builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
  path = str(tmp_path / "mutated.tflite")
  with open(path, "wb") as f:
    f.write(builder.Output())
  return path


def _set_options(position, **fields):
  def mutate(model):
    for name, value in fields.items():
      setattr(model.subgraphs[0].operators[position].builtinOptions, name, value)
  return mutate


def _mutations(*mutations):
  def mutate(model):
    for m in mutations:
      m(model)
  return mutate


def _read_the_stem_output_twice(model):
  operators = model.subgraphs[0].operators
  inputs = operators[3].inputs.copy()  # Block 2's depthwise reads the stem, not block 1.
  inputs[0] = operators[1].inputs[0]
  operators[3].inputs = inputs


# Operator 0 is the stem, 2i - 1 and 2i block i's depthwise and pointwise, 27 the pool.
@pytest.mark.parametrize("mutate,message", [
    (_set_options(3, padding=1), "VALID padding"),
    (_set_options(4, fusedActivationFunction=0), "not RELU6"),
    (_set_options(0, strideW=1), "square strides"),
    (_read_the_stem_output_twice, "is a chain"),
    (_set_options(27, filterHeight=3, filterWidth=3), "average the last 7x7"),
    (_set_options(3, strideH=1, strideW=1), "average the last 14x14"),
])
def test_refuses_graphs_that_are_not_mobilenet_v1(tmp_path, mutate, message):
  _needs_file()
  with pytest.raises(ValueError, match=message):
    tflite_mobilenet.read_tflite(_mutated_file(tmp_path, mutate))


def test_reads_strides_from_the_file(tmp_path):
  """Block 2's depthwise at stride 1 (a 14x14 last feature map, pooled by a 14x14 average):
  the module follows the file, and agrees with the interpreter on the changed graph."""
  _needs_file()
  path = _mutated_file(tmp_path, _mutations(
      _set_options(3, strideH=1, strideW=1), _set_options(27, filterHeight=14, filterWidth=14)))
  module, variables, image_size = tflite_mobilenet.read_tflite(path)
  assert image_size == 224
  assert module.blocks[1] == (128, 1) and module.blocks[3] == (256, 2)
  images = _photos()[:8]
  cosines = _cosines(np.asarray(module.apply(variables, images)),
                     _interpreter_embeddings(images, path))
  assert cosines.min() >= 0.999, cosines

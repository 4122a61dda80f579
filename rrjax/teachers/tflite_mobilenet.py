"""MobileNet v1 in Flax, its weights read from a quantised TensorFlow Lite file: a plug-in
teacher that hands over its architecture and weights (`params` and a jittable `apply`).

`--config.teacher.kind=python --config.teacher.factory=rrjax.teachers.tflite_mobilenet:make
--config.teacher.name=FILE.tflite` (e.g. Coral's `mobilenet_v1_1.0_224_quant_embedding_
extractor.tflite`: uint8 RGB [1, 224, 224, 3] in, the 1024-d average-pooled features out).

The file is read with LiteRT's own flatbuffer schema (`ai_edge_litert.schema_py_generated`,
from `pip install ai-edge-litert`), imported only when a file is read. Its operators are
walked in graph order and must form MobileNet v1: a CONV_2D stem, then DEPTHWISE_CONV_2D +
1x1 CONV_2D pairs, all with SAME padding and a fused ReLU6, then an AVERAGE_POOL_2D over
the whole feature map; strides, widths and the input size come from the file, so any
depth multiplier or resolution of the family reads. Weights are dequantised to float32,
(q - zero_point) * scale per tensor or per channel; int32 biases by their own scale
(input scale x weight scale); float32 weights are read as they are.

The interpreter also stores every activation in 8 bits (uint8, each tensor with its own
scale and zero point). `make` simulates that: each activation is rounded to its file's
8-bit grid (fake quantisation, straight-through gradient), which matches the interpreter
to cosine >= 0.9997 on every imagenette10 val photo. `make_float` keeps activations in
float32 on the same weights: mean cosine 0.9989, lowest 0.986 on those 500 photos.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# MobileNet v1's separable blocks: (pointwise features, depthwise stride) at depth
# multiplier 1.0, after a 32-feature stride-2 stem (Howard et al. 2017, Table 1).
MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
LITERT_MISSING = ("reading a .tflite file needs LiteRT's Python package: "
                  "pip install ai-edge-litert")


def _relu6(x):
  return jnp.clip(x, 0.0, 6.0)


def fake_quantize(x, scale: float, zero_point: float):
  """`x` rounded to the uint8 grid (q - zero_point) * scale, q in 0..255, as the
  interpreter stores an activation. The gradient passes straight through, so attacks
  still get one (TF's FakeQuant passes it inside the range only; after ReLU6, whose
  [0, 6] the grids here cover, that is the same)."""
  grid = (jnp.clip(jnp.round(x / scale) + zero_point, 0, 255) - zero_point) * scale
  return x + jax.lax.stop_gradient(grid - x)


def _same_pads(size: Sequence[int], kernel: Sequence[int], strides: int):
  """TensorFlow's SAME padding, (low, high) per spatial axis: the odd pixel goes at the
  end (224 -> 112 at stride 2 with a 3x3 kernel pads 0 before and 1 after)."""
  return jax.lax.padtype_to_pads(size, kernel, (strides, strides), "SAME")


def _depthwise_xla(x, kernel, strides: int):
  return jax.lax.conv_general_dilated(
      x, kernel, (strides, strides), _same_pads(x.shape[1:3], kernel.shape[:2], strides),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def _depthwise_shifted(x, kernel, strides: int):
  """The depthwise convolution as k*k multiply-adds of shifted (strided) images."""
  (top, bottom), (left, right) = _same_pads(x.shape[1:3], kernel.shape[:2], strides)
  padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  height, width = -(-x.shape[1] // strides), -(-x.shape[2] // strides)
  total = 0
  for i in range(kernel.shape[0]):
    for j in range(kernel.shape[1]):
      total = total + padded[:, i:i + strides * (height - 1) + 1:strides,
                             j:j + strides * (width - 1) + 1:strides] * kernel[i, j, 0]
  return total


def depthwise_conv(x, kernel, strides: int = 1):
  """Depthwise convolution (depth multiplier 1) of NHWC `x` with a grouped HWIO `kernel`
  [k, k, 1, C], TensorFlow's SAME padding. XLA:CPU runs a grouped convolution 20-30x
  slower than k*k shifted multiply-adds, so those are what a program lowered for CPU
  runs; GPUs and TPUs get XLA's convolution (chosen at lowering, as in
  `rrjax.models.convolutions`)."""
  return jax.lax.platform_dependent(
      x, kernel, cpu=lambda x, k: _depthwise_shifted(x, k, strides),
      default=lambda x, k: _depthwise_xla(x, k, strides))


class DepthwiseConv(nn.Module):
  """A 3x3 depthwise convolution with bias, SAME padding: `nn.Conv(C, (3, 3), strides,
  padding="SAME", feature_group_count=C)`'s function and parameters ("kernel"
  [3, 3, 1, C], "bias" [C])."""
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 1, channels))
    bias = self.param("bias", nn.initializers.zeros_init(), (channels,))
    return depthwise_conv(x, kernel, self.strides) + bias


class MobileNetV1(nn.Module):
  """MobileNet v1 without its classifier: uint8-valued RGB images [B, S, S, 3] (any float
  or integer dtype; float inputs keep their gradient) -> average-pooled features [B, D].

  Inputs are normalised as the quantised file's input tensor maps them,
  (x - input_zero_point) * input_scale. Every convolution has a bias (batch norm folded
  in) and ReLU6; padding is TensorFlow's SAME, which for stride 2 on an even size pads
  one more pixel at the end than at the start (as flax's "SAME" and `depthwise_conv`
  do); the features are the mean over the last feature map. Parameter names follow the
  TF-slim scopes of the file's tensors: Conv2d_0, Conv2d_<i>_depthwise, Conv2d_<i>_pointwise.

  `activation_quantization`: None for float32 activations, or one (scale, zero point)
  per convolution in graph order and a last one for the pooled features: each activation
  is then `fake_quantize`d, as the quantised interpreter stores it."""
  stem_features: int = 32
  stem_strides: int = 2
  blocks: Sequence[tuple[int, int]] = MOBILENET_V1_BLOCKS
  input_scale: float = 1.0 / 128.0
  input_zero_point: float = 128.0
  activation_quantization: Sequence[tuple[float, float]] | None = None

  def _stored(self, x, position: int):
    if self.activation_quantization is None:
      return x
    return fake_quantize(x, *self.activation_quantization[position])

  @nn.compact
  def __call__(self, images):
    if (self.activation_quantization is not None
        and len(self.activation_quantization) != 2 * len(self.blocks) + 2):
      raise ValueError(f"activation_quantization has {len(self.activation_quantization)} "
                       f"entries; {len(self.blocks)} blocks need {2 * len(self.blocks) + 2}.")
    x = (jnp.asarray(images, jnp.float32) - self.input_zero_point) * self.input_scale
    stem = nn.Conv(self.stem_features, (3, 3), self.stem_strides, padding="SAME",
                   name="Conv2d_0")
    x = self._stored(_relu6(stem(x)), 0)
    for i, (features, strides) in enumerate(self.blocks, 1):
      depthwise = DepthwiseConv(strides, name=f"Conv2d_{i}_depthwise")
      x = self._stored(_relu6(depthwise(x)), 2 * i - 1)
      pointwise = nn.Conv(features, (1, 1), name=f"Conv2d_{i}_pointwise")
      x = self._stored(_relu6(pointwise(x)), 2 * i)
    return self._stored(x.mean(axis=(1, 2)), 2 * len(self.blocks) + 1)


def dequantize(values: np.ndarray, scales: Sequence[float], zero_points: Sequence[int],
               axis: int = 0) -> np.ndarray:
  """float32 (values - zero_point) * scale: one scale and zero point for the whole tensor,
  or one per index of `axis` (per-channel quantisation)."""
  values = np.asarray(values)
  scales, zero_points = np.asarray(scales, np.float64), np.asarray(zero_points, np.float64)
  if scales.size > 1:
    shape = [1] * values.ndim
    shape[axis] = scales.size
    scales, zero_points = scales.reshape(shape), zero_points.reshape(shape)
  return ((values.astype(np.float64) - zero_points) * scales).astype(np.float32)


class _Graph:
  """The tensors and operators of a `.tflite` file's single subgraph, read with LiteRT's
  flatbuffer schema."""

  def __init__(self, path: str, data: bytes):
    try:
      from ai_edge_litert import schema_py_generated as schema
    except ImportError as e:
      raise ImportError(f"{path}: {LITERT_MISSING}") from e
    self.schema, self.path, self._data = schema, path, data
    self.model = schema.ModelT.InitFromPackedBuf(data, 0)
    if len(self.model.subgraphs) != 1:
      raise ValueError(f"{path}: has {len(self.model.subgraphs)} subgraphs; a MobileNet has 1.")
    self.graph = self.model.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    self.ops = []
    for op in self.graph.operators:
      code = self.model.operatorCodes[op.opcodeIndex]
      # Files written before builtin_code existed keep small codes in the deprecated
      # field only (TFLite's GetBuiltinCode takes the larger of the two).
      builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
      self.ops.append((names.get(builtin, f"operator code {builtin}"), op))

  def tensor(self, index: int):
    return self.graph.tensors[index]

  def name(self, index: int) -> str:
    name = self.tensor(index).name
    return name.decode() if isinstance(name, bytes) else str(name)

  def quantization(self, index: int):
    """(scales, zero points, axis), or None for a tensor that is not quantised."""
    q = self.tensor(index).quantization
    if q is None or q.scale is None or len(q.scale) == 0:
      return None
    return q.scale, q.zeroPoint, q.quantizedDimension

  def constant(self, index: int) -> np.ndarray:
    """A constant tensor's values as float32, dequantised when quantised."""
    tensor, types = self.tensor(index), self.schema.TensorType
    dtypes = {types.FLOAT32: np.float32, types.UINT8: np.uint8, types.INT8: np.int8,
              types.INT32: np.int32}
    if tensor.type not in dtypes:
      raise ValueError(f"{self.path}: tensor {self.name(index)!r} has TFLite type "
                       f"{tensor.type}; only float32, uint8, int8 and int32 weights read.")
    buffer = self.model.buffers[tensor.buffer]
    # Files over 2 GB keep buffers after the flatbuffer, at an offset into the file.
    raw = (self._data[buffer.offset:buffer.offset + buffer.size] if buffer.offset > 1
           else bytes(buffer.data) if buffer.data is not None else b"")
    values = np.frombuffer(raw, np.dtype(dtypes[tensor.type]).newbyteorder("<"))
    if values.size != np.prod(tensor.shape):
      raise ValueError(f"{self.path}: tensor {self.name(index)!r} is not a constant.")
    values = values.reshape(tensor.shape)
    q = self.quantization(index)
    return values.astype(np.float32) if q is None else dequantize(values, *q)


def _check_conv(graph: _Graph, op, where: str):
  options, schema = op.builtinOptions, graph.schema
  if options.padding != schema.Padding.SAME:
    raise ValueError(f"{where}: has VALID padding; MobileNet v1 pads SAME.")
  if options.fusedActivationFunction != schema.ActivationFunctionType.RELU6:
    raise ValueError(f"{where}: has fused activation {options.fusedActivationFunction}, "
                     "not RELU6.")
  if (options.strideH != options.strideW or options.dilationHFactor != 1
      or options.dilationWFactor != 1):
    raise ValueError(f"{where}: has strides ({options.strideH}, {options.strideW}) and "
                     f"dilation ({options.dilationHFactor}, {options.dilationWFactor}); "
                     "MobileNet v1 has square strides and no dilation.")
  if len(op.inputs) != 3 or op.inputs[2] < 0:
    raise ValueError(f"{where}: has no bias.")


def _activation_quantization(graph: _Graph, tensor: int, where: str) -> tuple[float, float]:
  q = graph.quantization(tensor)
  if graph.tensor(tensor).type != graph.schema.TensorType.UINT8 or q is None or len(q[0]) != 1:
    raise ValueError(f"{where}: its output {graph.name(tensor)!r} is not a per-tensor "
                     "quantised uint8 activation.")
  return float(q[0][0]), float(q[1][0])


def read_tflite(path: str) -> tuple[MobileNetV1, dict, int]:
  """(module, variables, image size) of the MobileNet v1 in the `.tflite` file at `path`,
  with float32 weights and the file's activation quantisation:
  `module.apply(variables, images [B, S, S, 3])` -> [B, D]. For float32 activations on
  the same variables, `module.clone(activation_quantization=None)`."""
  with open(path, "rb") as f:
    data = f.read()
  graph = _Graph(path, data)
  ops, names = graph.ops, [name for name, _ in graph.ops]
  expected = ["CONV_2D"] + ["DEPTHWISE_CONV_2D", "CONV_2D"] * ((len(ops) - 2) // 2) + [
      "AVERAGE_POOL_2D"]
  if names != expected or len(ops) < 4:
    raise ValueError(f"{path}: operators {names} are not MobileNet v1's (CONV_2D, then "
                     "DEPTHWISE_CONV_2D + CONV_2D pairs, then AVERAGE_POOL_2D).")
  (image,), (output,) = graph.graph.inputs, graph.graph.outputs
  shape, quantization = graph.tensor(image).shape, graph.quantization(image)
  if (graph.tensor(image).type != graph.schema.TensorType.UINT8 or quantization is None
      or len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3):
    raise ValueError(f"{path}: the input {graph.name(image)!r} is "
                     f"{graph.tensor(image).type} {list(shape)}; needs quantised uint8 RGB "
                     "[1, S, S, 3].")
  (input_scale,), (input_zero_point,), _ = quantization
  # Channels and sizes follow from the kernels and strides, not the stored tensor shapes
  # (the interpreter recomputes those too).
  params, strides, activations, current, channels = {}, [], [], image, 3
  for position, (name, op) in enumerate(ops[:-1]):
    where = f"{path}: operator {position} ({name})"
    if op.inputs[0] != current:
      raise ValueError(f"{where} reads {graph.name(op.inputs[0])!r}, not the previous "
                       f"operator's output {graph.name(current)!r}; MobileNet v1 is a chain.")
    _check_conv(graph, op, where)
    kernel, bias = graph.constant(op.inputs[1]), graph.constant(op.inputs[2])
    if name == "DEPTHWISE_CONV_2D":
      # [1, h, w, channels] -> flax's grouped [h, w, 1, channels].
      if kernel.shape != (1, 3, 3, channels):
        raise ValueError(f"{where}: depthwise kernel {list(kernel.shape)}, expected "
                         f"[1, 3, 3, {channels}] (3x3, depth multiplier 1).")
      kernel = kernel.transpose(1, 2, 0, 3)
      layer = f"Conv2d_{position // 2 + 1}_depthwise"
    else:
      # [out, h, w, in] -> flax's [h, w, in, out].
      size = 3 if position == 0 else 1
      if kernel.shape[1:] != (size, size, channels):
        raise ValueError(f"{where}: kernel {list(kernel.shape)}, expected "
                         f"[out, {size}, {size}, {channels}].")
      kernel = kernel.transpose(1, 2, 3, 0)
      layer = "Conv2d_0" if position == 0 else f"Conv2d_{position // 2}_pointwise"
    params[layer] = {"kernel": kernel, "bias": bias}
    strides.append(int(op.builtinOptions.strideH))
    activations.append(_activation_quantization(graph, op.outputs[0], where))
    current, channels = op.outputs[0], kernel.shape[-1]
  size = int(shape[1])
  for stride in strides:
    size = -(-size // stride)  # SAME padding: ceil(size / stride).
  pool = ops[-1][1]
  options, schema = pool.builtinOptions, graph.schema
  covers = (options.filterHeight == options.filterWidth == size
            and (options.padding == schema.Padding.VALID
                 or options.strideH == options.strideW >= size))
  if pool.inputs[0] != current or pool.outputs[0] != output or not covers:
    raise ValueError(f"{path}: the AVERAGE_POOL_2D must average the last {size}x{size} "
                     "feature map to 1x1 and be the model's output.")
  activations.append(_activation_quantization(graph, output, f"{path}: AVERAGE_POOL_2D"))
  features = [params[f"Conv2d_{i}_pointwise"]["kernel"].shape[-1]
              for i in range(1, len(strides) // 2 + 1)]
  module = MobileNetV1(stem_features=params["Conv2d_0"]["kernel"].shape[-1],
                       stem_strides=strides[0],
                       blocks=tuple(zip(features, strides[1::2])),
                       input_scale=float(input_scale), input_zero_point=float(input_zero_point),
                       activation_quantization=tuple(activations))
  return module, {"params": jax.tree.map(jnp.asarray, params)}, int(shape[1])


class TFLiteMobileNetTeacher:
  """A MobileNet v1 `.tflite` file as a Flax teacher: `image_size`, `dim`, `fingerprint`,
  `embed(uint8 images)`, and for `teacher.mode=online` (or a student started from it)
  `module`, `params` (its variables) and the pure `apply(params, images)`.
  `quantize_activations=False` runs float32 activations (`MobileNetV1`)."""

  def __init__(self, path: str, *, quantize_activations: bool = True):
    self.module, self.params, self.image_size = read_tflite(path)
    if not quantize_activations:
      self.module = self.module.clone(activation_quantization=None)
    with open(path, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    # Not the interpreter's "tflite:" fingerprint (benchmarks/probe_solvers.py): these
    # embeddings differ slightly from the interpreter's, so a cache of one is not the other's.
    self.fingerprint = (f"tflite-flax-mobilenet_v1{'' if quantize_activations else '-float'}:"
                        f"{digest}")
    self.name = path
    self.dim = int(self.params["params"][f"Conv2d_{len(self.module.blocks)}_pointwise"]
                   ["kernel"].shape[-1])
    self._embed = jax.jit(self.apply)

  def apply(self, params, images):
    """Pure and jittable: uint8 images [B, S, S, 3] (or their float values) -> float32
    embeddings [B, dim]."""
    return self.module.apply(params, images)

  def embed(self, images):
    size = self.image_size
    if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
      raise ValueError(f"{self.name}: embed takes uint8 images [B, {size}, {size}, 3], got "
                       f"{images.dtype} {images.shape}.")
    return self._embed(self.params, images)


def _float32_only(cfg):
  if cfg.get("dtype", "float32") != "float32":
    raise ValueError(f"teacher.dtype={cfg.get('dtype')!r}: {__name__} runs in float32 only.")


def make(cfg) -> TFLiteMobileNetTeacher:
  """The plug-in factory: `teacher.name` is the `.tflite` file, run as its interpreter
  does (activations rounded to the file's 8-bit grids), in float32."""
  _float32_only(cfg)
  return TFLiteMobileNetTeacher(cfg.name)


def make_float(cfg) -> TFLiteMobileNetTeacher:
  """The plug-in factory with float32 activations on the file's (dequantised) weights."""
  _float32_only(cfg)
  return TFLiteMobileNetTeacher(cfg.name, quantize_activations=False)

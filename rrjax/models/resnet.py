"""ResNet students and baselines in Flax linen, torchvision layout (v1.5 bottlenecks).

The module takes float images in [0, 1] and applies ImageNet normalisation itself, so
callers (trainers, probes, the supervised baseline) never need to know its statistics.
Parameters are float32 whatever the compute dtype; outputs come back as float32.

Layout matches torchvision (and Hugging Face `microsoft/resnet-*`): 7x7/2 stem conv,
3x3/2 max-pool, four stages whose first block strides by 2 (except stage 1), the
stride of a bottleneck on its 3x3 conv (v1.5), a 1x1 conv + BN projection shortcut
where the shape changes, global average pooling, then a Dense head.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from rrjax.models.convolutions import PointwiseConv, SameConv

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (block, blocks per stage), the torchvision depths.
PRESETS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, strides: int, dtype: Any, name: str) -> nn.Module:
  # What XLA:CPU runs fastest (rrjax.models.convolutions); the same parameters.
  if kernel == 1:
    return PointwiseConv(features, strides, dtype, _conv_init, name=name)
  if strides == 1:
    return SameConv(features, kernel, dtype, _conv_init, name=name)
  # Explicit symmetric padding k//2 as in torchvision; "SAME" would pad (0, 1) for
  # stride 2 on even sizes and shift every feature map against pretrained weights.
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=_conv_init, name=name)


def _norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  # momentum 0.9 == torch's momentum 0.1; eps as torchvision. Under jit with a sharded
  # batch the mean/var reductions are over the global batch (jit's global semantics),
  # unless the caller runs the model per device (`objectives.training_forward`).
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, param_dtype=jnp.float32, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34)."""
  width: int
  strides: int = 1
  dtype: Any = jnp.float32
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv(self.width, 3, self.strides, self.dtype, "conv1")(x)
    y = nn.relu(_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.width, 3, 1, self.dtype, "conv2")(y)
    y = _norm(train, self.dtype, "bn2")(y)
    return nn.relu(y + _shortcut(x, self.width, self.strides, train, self.dtype))


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (carries the stride: v1.5), 1x1 expand by 4 (ResNet-50+)."""
  width: int
  strides: int = 1
  dtype: Any = jnp.float32
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv(self.width, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.width, 3, self.strides, self.dtype, "conv2")(y)
    y = nn.relu(_norm(train, self.dtype, "bn2")(y))
    y = _conv(self.width * 4, 1, 1, self.dtype, "conv3")(y)
    y = _norm(train, self.dtype, "bn3")(y)
    return nn.relu(y + _shortcut(x, self.width * 4, self.strides, train, self.dtype))


def _shortcut(x, features: int, strides: int, train: bool, dtype: Any):
  """Identity, or a 1x1 conv + BN projection where the shape changes (torchvision's
  `downsample`). Called inside the block's compact scope, so the submodules belong to it."""
  if x.shape[-1] == features and strides == 1:
    return x
  x = _conv(features, 1, strides, dtype, "proj_conv")(x)
  return _norm(train, dtype, "proj_bn")(x)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
  """ResNet backbone + Dense head.

  `__call__(images01 [B,H,W,3] in [0,1], train)` returns `(outputs [B, num_outputs]
  float32, aux)`; aux holds "stem" (after the stem BN/ReLU, before the max-pool),
  "stage1".."stageN" (in the compute dtype) and "pre_logits" (globally average-pooled
  features, float32). `train=True` normalises with batch statistics and updates
  `batch_stats` (apply with `mutable=["batch_stats"]`); `train=False` uses the running
  averages, as for a frozen feature extractor.

  Attributes:
    stage_sizes: blocks per stage; stage i (0-based) has inner width `width * 2**i`.
    block: "basic" or "bottleneck".
    num_outputs: size of the head (teacher embedding dim, or number of classes).
    width: stem channels and stage-1 inner width (64 in torchvision).
    dtype: compute dtype; parameters stay float32.
  """
  stage_sizes: Sequence[int]
  block: str
  num_outputs: int
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images01, train: bool):
    if self.block not in BLOCKS:
      raise ValueError(f"ResNet.block={self.block!r}; choose one of {list(BLOCKS)}.")
    block_cls = BLOCKS[self.block]
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    x = ((images01.astype(jnp.float32) - mean) / std).astype(self.dtype)

    x = _conv(self.width, 7, 2, self.dtype, "stem_conv")(x)
    x = nn.relu(_norm(train, self.dtype, "stem_bn")(x))
    aux = {"stem": x}
    # Padding with -inf (flax's max_pool default), as torch's MaxPool2d(3, 2, padding=1).
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(self.width * 2**i, strides, self.dtype, name=f"layer{i + 1}_{j}")(x, train)
      aux[f"stage{i + 1}"] = x

    pre_logits = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
    aux["pre_logits"] = pre_logits
    outputs = nn.Dense(self.num_outputs, dtype=self.dtype, param_dtype=jnp.float32,
                       name="head")(pre_logits)
    return outputs.astype(jnp.float32), aux

  @property
  def num_features(self) -> int:
    """Channels of pre_logits."""
    return self.width * 2**(len(self.stage_sizes) - 1) * BLOCKS[self.block].expansion


def resnet(name: str, num_outputs: int, dtype: Any = jnp.float32, width: int = 64) -> ResNet:
  """A ResNet by preset depth ("resnet18" ... "resnet152"); `width` 64 is torchvision's
  size, smaller widths make the same architecture cheap (smoke configs, tests)."""
  if name not in PRESETS:
    raise ValueError(f"unknown ResNet {name!r}; choose one of {list(PRESETS)}.")
  block, stage_sizes = PRESETS[name]
  return ResNet(stage_sizes=stage_sizes, block=block, num_outputs=num_outputs, dtype=dtype,
                width=width)


def describe(module: ResNet) -> str:
  """Preset name when the architecture is one, else its defining fields (for errors)."""
  arch = (module.block, tuple(module.stage_sizes))
  for name, preset in PRESETS.items():
    if preset == arch and module.width == 64:
      return name
  return (f"ResNet(block={module.block!r}, stage_sizes={tuple(module.stage_sizes)}, "
          f"width={module.width})")


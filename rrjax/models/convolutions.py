"""The students' convolutions: XLA's own on accelerators, a faster form on CPU (issues 20, 25).

XLA:CPU runs a 1x1 `lax.conv` about 3x slower than the same product written as a matmul
forward, and about 6x slower in its kernel gradient; the kernel gradient of a 3x3
convolution on large feature maps (the stem and the first blocks, 28x28 and up) is
2-3x slower than the same sum written as 9 matmuls of shifted images. A ResNet is
mostly made of these, so on CPU they dominated the student step.

On a GPU or TPU the opposite holds: cuDNN and the TPU's convolution unit run each of
these as one convolution, while the CPU forms copy shifted images and split the work
into small matmuls. So each form is chosen by the platform the program is *lowered*
for (`jax.lax.platform_dependent`), not the one tracing it: a program exported from a
CPU machine for `cuda` or `tpu` holds XLA's convolutions and XLA's own gradients.

`PointwiseConv` and `SameConv` compute the same functions as flax's bias-free `nn.Conv`
(1x1 with any stride; k x k, stride 1, zero padding k // 2) and keep its parameter:
"kernel", float32, [k, k, C, D], drawn by the same initializer from the same key, so
checkpoints, converters and exports see no difference. Both differentiate in forward and
reverse mode on every platform.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _conv(x, kernel, strides: int = 1):
  """XLA's convolution, zero padding k // 2 (none for 1x1)."""
  pad = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (strides, strides), ((pad, pad), (pad, pad)),
                                      dimension_numbers=_DIMENSIONS)


def _pointwise_matmul(x, kernel, strides: int = 1):
  """The 1x1 convolution as one 2-D GEMM over all pixels: its kernel gradient is
  [pixels, C]^T [pixels, D], which XLA:CPU runs ~2x faster than the same einsum over
  separate batch/H/W axes. Stride s keeps every s-th pixel from the first."""
  x = x[:, ::strides, ::strides]
  y = x.reshape(-1, x.shape[-1]) @ kernel[0, 0]
  return y.reshape(*x.shape[:-1], kernel.shape[-1])


def pointwise_conv(x, kernel, strides: int = 1):
  """A bias-free 1x1 convolution of NHWC `x` with an HWIO `kernel` [1, 1, C, D]: a GEMM
  when lowered for CPU, XLA's convolution elsewhere."""
  return jax.lax.platform_dependent(
      x, kernel, cpu=lambda x, k: _pointwise_matmul(x, k, strides),
      default=lambda x, k: _conv(x, k, strides))


def _shifted_products(x, kernel_tangent):
  """sum over kernel offsets (i, j) of x_padded[p + (i, j)] @ kernel_tangent[i, j], for
  every output pixel p: the convolution written as k*k matmuls of shifted images. It is
  linear in `kernel_tangent`, and its transpose is the kernel gradient XLA:CPU runs
  fastest: dK[i, j] = [pixels, C]^T [pixels, D] over the shifted `x` and the gradient."""
  size, pad = kernel_tangent.shape[0], kernel_tangent.shape[0] // 2
  batch, height, width, channels = x.shape
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  total = 0
  for i in range(size):
    for j in range(size):
      shifted = padded[:, i:i + height, j:j + width].reshape(-1, channels)
      total = total + shifted @ kernel_tangent[i, j]
  return total.reshape(batch, height, width, -1)


@jax.custom_jvp
def _conv_same_cpu(x, kernel):
  return _conv(x, kernel)


@_conv_same_cpu.defjvp
def _conv_same_cpu_jvp(primals, tangents):
  x, kernel = primals
  x_tangent, kernel_tangent = tangents
  # The input term is XLA's, as is its transpose (the input gradient). The kernel term is
  # rematerialised: reverse mode keeps only `x` and cuts the shifted images again in the
  # backward pass, instead of holding k*k shifted copies of every feature map.
  return _conv(x, kernel), (_conv(x_tangent, kernel)
                            + jax.checkpoint(_shifted_products)(x, kernel_tangent))


def conv_same(x, kernel):
  """Stride-1 convolution of NHWC `x` with an HWIO `kernel` (odd square), zero padding
  k // 2. Lowered for CPU, its kernel gradient is k*k matmuls over shifted views of `x`
  (forward and input gradient stay XLA's); elsewhere it is XLA's convolution throughout."""
  return jax.lax.platform_dependent(x, kernel, cpu=_conv_same_cpu, default=_conv)


class PointwiseConv(nn.Module):
  """A bias-free 1x1 convolution on NHWC inputs. Stride s keeps every s-th pixel from
  the first, which is what a 1x1 convolution with stride s and no padding reads
  (torchvision's stride-2 `downsample`)."""
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features),
                        jnp.float32)
    return pointwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.strides)


class SameConv(nn.Module):
  """A bias-free k x k convolution with stride 1 and zero padding k // 2 (odd k)."""
  features: int
  kernel_size: int
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    size = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (size, size, x.shape[-1], self.features),
                        jnp.float32)
    return conv_same(x.astype(self.dtype), kernel.astype(self.dtype))

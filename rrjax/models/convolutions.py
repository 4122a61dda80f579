"""The students' convolutions, written as XLA:CPU runs them fastest (issue 20).

XLA:CPU runs a 1x1 `lax.conv` about 3x slower than the same product written as a matmul
forward, and about 6x slower in its kernel gradient; the kernel gradient of a 3x3
convolution on large feature maps (the stem and the first blocks, 28x28 and up) is
2-3x slower than the same sum written as 9 matmuls of shifted images. A ResNet is
mostly made of these, so on CPU they dominated the student step.

`PointwiseConv` and `SameConv` compute the same functions as flax's bias-free `nn.Conv`
(1x1 with any stride; k x k, stride 1, zero padding k // 2) and keep its parameter:
"kernel", float32, [k, k, C, D], drawn by the same initializer from the same key, so
checkpoints, converters and exports see no difference.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


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
    x = x[:, ::self.strides, ::self.strides]
    # One 2-D GEMM over all pixels: its kernel gradient is [pixels, C]^T [pixels, D],
    # which XLA:CPU runs ~2x faster than the same einsum over separate batch/H/W axes.
    pixels = x.reshape(-1, x.shape[-1]).astype(self.dtype)
    y = pixels @ kernel[0, 0].astype(self.dtype)
    return y.reshape(*x.shape[:-1], self.features)


def _conv_same(x, kernel):
  pad = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def conv_same(x, kernel):
  """Stride-1 convolution of NHWC `x` with an HWIO `kernel` (odd square), zero padding
  k // 2. Forward and input gradient are XLA's; the kernel gradient is computed as k*k
  matmuls [pixels, C]^T [pixels, D], one per kernel offset, over shifted views of `x`."""
  return _conv_same(x, kernel)


def _conv_same_forward(x, kernel):
  return _conv_same(x, kernel), (x, kernel)


def _conv_same_backward(residuals, grad):
  x, kernel = residuals
  size, pad = kernel.shape[0], kernel.shape[0] // 2
  _, input_vjp = jax.vjp(functools.partial(_conv_same, kernel=kernel), x)
  batch, height, width, channels = x.shape
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  grad_pixels = grad.reshape(-1, grad.shape[-1])
  # dK[i, j] = sum over output pixels p of x_padded[p + (i, j)] (x) grad[p].
  kernel_grad = jnp.stack([
      jnp.stack([padded[:, i:i + height, j:j + width].reshape(-1, channels).T @ grad_pixels
                 for j in range(size)])
      for i in range(size)])
  return input_vjp(grad)[0], kernel_grad.astype(kernel.dtype)


conv_same.defvjp(_conv_same_forward, _conv_same_backward)


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

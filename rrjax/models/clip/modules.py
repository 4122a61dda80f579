"""rrjax's own Flax CLIP towers: the ViT, OpenAI's ModifiedResNet and the text transformer.

Parameter names follow transformers' FlaxCLIPModel for the ViT and the text tower
(`vision_model/encoder/layers/0/self_attn/q_proj/kernel`, ...), so an HF
`flax_model.msgpack` loads without renaming, and open_clip's names for the ModifiedResNet
(`visual/layer1_0/conv1/kernel`, the PyTorch `visual.layer1.0.conv1.weight`), which only
open_clip publishes. `rrjax.models.clip.convert` maps both to the PyTorch files.

Parameters are float32; `dtype` is the compute dtype. Softmax and layer-norm statistics
run in float32 whatever the compute dtype. The image towers take [0,1] images and
normalise them with the checkpoint's own statistics, so callers never need to know them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rrjax.models.clip.spec import CLIPSpec, TextSpec, VisionSpec
from rrjax.models.convolutions import PointwiseConv, SameConv

_LN_EPS = 1e-5


def _activation(name: str):
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  return lambda x: jax.nn.gelu(x, approximate=False)  # torch's nn.GELU(): exact erf


def _dense(features: int, dtype, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(0.02), name=name)


def _layer_norm(dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=_LN_EPS, dtype=dtype, param_dtype=jnp.float32, name=name)


def _attend(q, k, v, heads: int, mask=None):
  """Multi-head scaled dot-product attention; [B, L, W] inputs, softmax in float32."""
  batch, length, width = q.shape
  split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, width // heads)
  q, k, v = split(q) * (width // heads) ** -0.5, split(k), split(v)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, q.shape[1], width)


class SelfAttention(nn.Module):
  width: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    q, k, v = (_dense(self.width, self.dtype, f"{n}_proj")(x) for n in "qkv")
    return _dense(self.width, self.dtype, "out_proj")(_attend(q, k, v, self.heads, mask))


class MLP(nn.Module):
  width: int
  hidden: int
  act: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = _activation(self.act)(_dense(self.hidden, self.dtype, "fc1")(x))
    return _dense(self.width, self.dtype, "fc2")(x)


class EncoderLayer(nn.Module):
  """Pre-norm residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""
  width: int
  heads: int
  mlp_dim: int
  act: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    x = x + SelfAttention(self.width, self.heads, self.dtype, name="self_attn")(
        _layer_norm(self.dtype, "layer_norm1")(x), mask)
    return x + MLP(self.width, self.mlp_dim, self.act, self.dtype, name="mlp")(
        _layer_norm(self.dtype, "layer_norm2")(x))


class Layers(nn.Module):
  """The blocks, named "0", "1", ... under "layers" as in transformers' FlaxCLIPEncoder."""
  num_layers: int
  width: int
  heads: int
  mlp_dim: int
  act: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    for i in range(self.num_layers):
      x = EncoderLayer(self.width, self.heads, self.mlp_dim, self.act, self.dtype, name=str(i))(
          x, mask)
    return x


class Encoder(Layers):
  """`Layers` one level down ("encoder/layers/0/..."), transformers' nesting."""

  @nn.compact
  def __call__(self, x, mask=None):
    return Layers(self.num_layers, self.width, self.heads, self.mlp_dim, self.act, self.dtype,
                  name="layers")(x, mask)


def _encoder(width, heads, layers, mlp_dim, act, dtype) -> Encoder:
  return Encoder(layers, width, heads, mlp_dim, act, dtype, name="encoder")


class VisionEmbeddings(nn.Module):
  spec: VisionSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels):
    s = self.spec
    patches = nn.Conv(s.width, (s.patch_size, s.patch_size), strides=s.patch_size,
                      padding="VALID", use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=nn.initializers.normal(0.02), name="patch_embedding")(pixels)
    patches = patches.reshape(patches.shape[0], -1, s.width)
    cls = self.param("class_embedding", nn.initializers.normal(0.02), (s.width,), jnp.float32)
    cls = jnp.broadcast_to(cls.astype(patches.dtype), (patches.shape[0], 1, s.width))
    tokens = jnp.concatenate([cls, patches], axis=1)
    positions = nn.Embed(tokens.shape[1], s.width, dtype=self.dtype, param_dtype=jnp.float32,
                         embedding_init=nn.initializers.normal(0.02), name="position_embedding")
    return tokens + positions(jnp.arange(tokens.shape[1]))[None]


class VisionTransformer(nn.Module):
  """CLIP's ViT: the post-layernorm class token [B, width]."""
  spec: VisionSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels):
    s = self.spec
    x = VisionEmbeddings(s, self.dtype, name="embeddings")(pixels)
    x = _layer_norm(self.dtype, "pre_layrnorm")(x)  # (sic: transformers' name)
    x = _encoder(s.width, s.heads, s.layers, s.mlp_dim, s.act, self.dtype)(x)
    return _layer_norm(self.dtype, "post_layernorm")(x[:, 0])


def _conv(features: int, kernel: int, dtype, name: str, strides: int = 1) -> nn.Module:
  init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  # What XLA:CPU runs fastest (rrjax.models.convolutions); the same parameters.
  if kernel == 1:
    return PointwiseConv(features, strides, dtype, init, name=name)
  if strides == 1:
    return SameConv(features, kernel, dtype, init, name=name)
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=strides, padding=((pad, pad), (pad, pad)),
                 use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=init,
                 name=name)


def _batch_norm(train: bool, dtype, name: str) -> nn.BatchNorm:
  # momentum 0.9 == torch's 0.1; under jit with a sharded batch the statistics are over
  # the global batch, unless the caller runs the model per device
  # (`objectives.training_forward`).
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def _avg_pool(x, size: int):
  return nn.avg_pool(x, (size, size), strides=(size, size)) if size > 1 else x


class Bottleneck(nn.Module):
  """OpenAI's anti-aliased bottleneck: every conv has stride 1; an average pool after
  the 3x3 conv (and before the shortcut's 1x1 conv) does the striding."""
  planes: int
  strides: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    out = x
    for i, kernel in ((1, 1), (2, 3)):
      out = _conv(self.planes, kernel, self.dtype, f"conv{i}")(out)
      out = nn.relu(_batch_norm(train, self.dtype, f"bn{i}")(out))
    out = _avg_pool(out, self.strides)
    out = _batch_norm(train, self.dtype, "bn3")(_conv(4 * self.planes, 1, self.dtype, "conv3")(out))
    shortcut = x
    if self.strides > 1 or x.shape[-1] != 4 * self.planes:
      shortcut = _conv(4 * self.planes, 1, self.dtype, "downsample_conv")(
          _avg_pool(x, self.strides))
      shortcut = _batch_norm(train, self.dtype, "downsample_bn")(shortcut)
    return nn.relu(out + shortcut)


class AttentionPool(nn.Module):
  """Attention pooling: the mean token queries [mean; all tokens] + positions."""
  heads: int
  output_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, h, w, width = x.shape
    tokens = x.reshape(batch, h * w, width)  # row-major, as PyTorch's flatten of NCHW
    tokens = jnp.concatenate([tokens.mean(axis=1, keepdims=True), tokens], axis=1)
    positions = self.param("positional_embedding", nn.initializers.normal(width ** -0.5),
                           (h * w + 1, width), jnp.float32)
    tokens = tokens + positions.astype(tokens.dtype)[None]
    q = _dense(width, self.dtype, "q_proj")(tokens[:, :1])
    k, v = (_dense(width, self.dtype, f"{n}_proj")(tokens) for n in "kv")
    return _dense(self.output_dim, self.dtype, "c_proj")(_attend(q, k, v, self.heads))[:, 0]


class ModifiedResNet(nn.Module):
  """CLIP's ResNet: 3-conv stem, anti-aliased bottlenecks, attention pooling to
  `output_dim`. Returns (embedding, mean-pooled final features)."""
  spec: VisionSpec
  output_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels, train: bool = False):
    s = self.spec
    x = pixels
    for i, (features, strides) in enumerate(
        ((s.width // 2, 2), (s.width // 2, 1), (s.width, 1)), start=1):
      x = _conv(features, 3, self.dtype, f"conv{i}", strides=strides)(x)
      x = nn.relu(_batch_norm(train, self.dtype, f"bn{i}")(x))
    x = _avg_pool(x, 2)
    for stage, blocks in enumerate(s.layers):
      for block in range(blocks):
        x = Bottleneck(s.width * 2**stage, 2 if stage > 0 and block == 0 else 1, self.dtype,
                       name=f"layer{stage + 1}_{block}")(x, train)
    embedding = AttentionPool(s.heads, self.output_dim, self.dtype, name="attnpool")(x)
    return embedding, x.mean(axis=(1, 2))


class CLIPImageEncoder(nn.Module):
  """A CLIP image tower with its projection, on [0,1] images [B, S, S, 3].

  Returns (embedding in CLIP's joint space [B, embed_dim], {"pre_logits": the tower's
  pooled features}), float32, unnormalised. `train` only matters for the ResNet's
  BatchNorm (pass mutable=["batch_stats"] with train=True).
  """
  spec: CLIPSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images01, train: bool = False):
    v, p = self.spec.vision, self.spec.preprocess
    if images01.ndim != 4 or images01.shape[1:] != (v.image_size, v.image_size, 3):
      raise ValueError(f"this CLIP {self.spec.describe()} takes images [B, {v.image_size}, "
                       f"{v.image_size}, 3], got {images01.shape}; set the crop size to "
                       f"{v.image_size}.")
    pixels = (images01.astype(jnp.float32) - jnp.asarray(p.mean)) / jnp.asarray(p.std)
    pixels = pixels.astype(self.dtype)
    if v.kind == "vit":
      pooled = VisionTransformer(v, self.dtype, name="vision_model")(pixels)
      embedding = _dense(self.spec.embed_dim, self.dtype, "visual_projection", use_bias=False)(
          pooled)
    else:
      embedding, pooled = ModifiedResNet(v, self.spec.embed_dim, self.dtype, name="visual")(
          pixels, train)
    return embedding.astype(jnp.float32), {"pre_logits": pooled.astype(jnp.float32)}


def _embed(num: int, width: int, dtype, name: str) -> nn.Embed:
  return nn.Embed(num, width, dtype=dtype, param_dtype=jnp.float32,
                  embedding_init=nn.initializers.normal(0.02), name=name)


class TextEmbeddings(nn.Module):
  spec: TextSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids):
    t = self.spec
    tokens = _embed(t.vocab_size, t.width, self.dtype, "token_embedding")(input_ids)
    positions = _embed(t.context_length, t.width, self.dtype, "position_embedding")(
        jnp.arange(input_ids.shape[1]))
    return tokens + positions[None]


class CLIPTextEncoder(nn.Module):
  """The causal text transformer: token ids [N, L] -> the final-layernorm features at
  the end-of-text token [N, width]."""
  spec: TextSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids):
    t = self.spec
    length = input_ids.shape[1]
    x = TextEmbeddings(t, self.dtype, name="embeddings")(input_ids)
    causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
    x = _encoder(t.width, t.heads, t.layers, t.mlp_dim, t.act, self.dtype)(x, causal)
    x = _layer_norm(self.dtype, "final_layer_norm")(x)
    if t.eos_token_id is None:  # CLIP's end-of-text token has the highest id.
      position = jnp.argmax(input_ids, axis=-1)
    else:
      position = jnp.argmax(input_ids == t.eos_token_id, axis=-1)
    return x[jnp.arange(x.shape[0]), position]


class CLIPText(nn.Module):
  """`text_model` plus `text_projection`, transformers' parameter names."""
  spec: TextSpec
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids):
    pooled = CLIPTextEncoder(self.spec, self.dtype, name="text_model")(input_ids)
    projection = _dense(self.embed_dim, self.dtype, "text_projection", use_bias=False)
    return projection(pooled).astype(jnp.float32)

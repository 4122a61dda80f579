"""Weight files read into numpy, whatever framework wrote them and without that framework:
safetensors (`read_safetensors`), PyTorch's torch.save zip (`torch_pickle`) and Flax
msgpack (`flax.serialization`)."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors, metadata) of a safetensors file. bfloat16 is included, which
  safetensors' own numpy reader refuses (many published checkpoints are bfloat16)."""
  with open(path, "rb") as f:
    (size,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(size))
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
  tensors = {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    if info["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {key!r} has dtype {info['dtype']}, which rrjax does not "
                       "read; save the weights as float32, float16 or bfloat16.")
    start, end = info["data_offsets"]
    dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
    tensors[key] = np.array(data[start:end].view(dtype).reshape(info["shape"]))
  return tensors, header.get("__metadata__") or {}

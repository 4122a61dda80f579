"""safetensors read without safetensors' numpy reader, against torch's own tensors."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rrjax.models import weight_files


def test_every_dtype_and_the_metadata(tmp_path):
  generator = torch.Generator().manual_seed(0)
  tensors = {
      "f32": torch.randn(3, 4, generator=generator),
      "f16": torch.randn(5, generator=generator).half(),
      "bf16": torch.randn(2, 3, generator=generator).bfloat16(),
      "i64": torch.arange(6).reshape(2, 3),
      "scalar": torch.tensor(2.5),
      "empty": torch.zeros(0, 3),
  }
  path = str(tmp_path / "w.safetensors")
  save_file(tensors, path, metadata={"format": "pt"})
  read, metadata = weight_files.read_safetensors(path)
  assert metadata == {"format": "pt"} and read.keys() == tensors.keys()
  for key, tensor in tensors.items():
    expected = tensor.float().numpy() if key == "bf16" else tensor.numpy()
    assert read[key].shape == tuple(tensor.shape)
    np.testing.assert_array_equal(read[key].astype(expected.dtype), expected)
  assert read["bf16"].dtype.name == "bfloat16" and read["f16"].dtype == np.float16


def test_unreadable_dtype_is_named(tmp_path):
  path = str(tmp_path / "w.safetensors")
  save_file({"x": torch.zeros(2, dtype=torch.float8_e4m3fn)}, path)
  with pytest.raises(ValueError, match="'x' has dtype F8_E4M3"):
    weight_files.read_safetensors(path)

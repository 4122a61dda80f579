"""rrjax.models.torch_pickle: torch.save checkpoints read without torch.

Reference: files written by the real torch.save and the tensors' own `.numpy()`; torch is
only a test dependency. No JAX here, so these run in a few seconds.
"""

import collections
import os
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from rrjax.models import torch_pickle


class _Tiny(torch.nn.Module):
  """Parameters and buffers of every classic dtype, a 0-dim and an empty tensor."""

  def __init__(self):
    super().__init__()
    self.lin = torch.nn.Linear(4, 3)
    self.w16 = torch.nn.Parameter(torch.randn(2, 5).half())
    self.register_buffer("bf16", torch.randn(3, 2).bfloat16())
    self.register_buffer("steps", torch.arange(-3, 4, dtype=torch.int64))
    self.register_buffer("mask", torch.tensor([True, False, True]))
    self.register_buffer("f64", torch.randn(2, 2, dtype=torch.float64))
    self.logit_scale = torch.nn.Parameter(torch.tensor(4.6052))
    self.register_buffer("empty", torch.empty(0, 3))


def _reference(tensor):
  """tensor -> (numpy values, expected numpy dtype); bfloat16/float8 compared via float32
  since torch has no numpy equivalent for them."""
  tensor = tensor.detach()
  expected = {
      torch.bfloat16: ml_dtypes.bfloat16,
      torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn,
      torch.uint16: np.uint16,
  }.get(tensor.dtype)
  if expected is not None:
    return tensor.to(torch.float32).numpy(), np.dtype(expected)
  return tensor.numpy(), tensor.numpy().dtype


def _assert_matches(got, reference):
  assert set(got) == set(reference)
  for name, tensor in reference.items():
    values, dtype = _reference(tensor)
    array = got[name]
    assert isinstance(array, np.ndarray), name
    assert array.dtype == dtype, (name, array.dtype, dtype)
    assert array.shape == tuple(tensor.shape), name
    # Contiguous copies that own their data, independent of any shared storage.
    assert array.flags.c_contiguous and array.flags.owndata and array.flags.writeable, name
    np.testing.assert_array_equal(array.astype(values.dtype), values, err_msg=name)


def _storage_count(path):
  with zipfile.ZipFile(path) as archive:
    return sum("/data/" in name for name in archive.namelist())


def test_module_state_dict_with_shared_storages(tmp_path):
  torch.manual_seed(0)
  state = _Tiny().state_dict()
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  state["base"] = base
  state["base_t"] = base.t()  # Non-contiguous view of the same storage.
  state["base_slice"] = base[1:3, 2:5]  # Storage offset and non-unit strides.
  state["base_row"] = base[2]  # 1-D view with an offset.
  state["base_scalar"] = base[3, 5]  # 0-dim view at the last element.
  state["lin_tied"] = state["lin.weight"]  # Tied weights: the same tensor twice.
  path = tmp_path / "pytorch_model.bin"
  torch.save(state, path)
  # The views really are saved as shared storages, not copies.
  assert _storage_count(path) < len(state)
  got = torch_pickle.load_state_dict(str(path))
  assert list(got) == list(state)  # Order preserved.
  _assert_matches(got, state)
  assert got["logit_scale"].shape == () and got["empty"].shape == (0, 3)
  got["base"][0, 0] = -1.0  # Copies: writing one leaves its views alone.
  assert got["base_t"][0, 0] == 0.0


def test_parameters_attributes_and_newer_dtypes(tmp_path):
  """nn.Parameter objects (_rebuild_parameter[_with_state]), a tensor with a Python
  attribute (_rebuild_from_type_v2) and dtypes without a legacy storage class
  (_rebuild_tensor_v3 with an UntypedStorage), as torch.save writes them."""
  param = torch.nn.Parameter(torch.randn(3, 2))
  tagged_param = torch.nn.Parameter(torch.randn(2))
  tagged_param.note = "kept by torch, dropped here"
  tagged = torch.randn(4)
  tagged.note = 1
  u16 = torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16)
  state = collections.OrderedDict(
      param=param, param_t=param.t(), tagged_param=tagged_param, tagged=tagged,
      u16=u16, u16_view=u16[1:],
      f8=torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn))
  path = tmp_path / "weights.pt"
  torch.save(state, path)
  _assert_matches(torch_pickle.load_state_dict(path), state)


def test_wrapped_and_data_parallel(tmp_path):
  state = {"a.weight": torch.randn(2, 3), "a.bias": torch.randn(2)}

  def load(obj):
    path = tmp_path / "ckpt.bin"
    torch.save(obj, path)
    return torch_pickle.load_state_dict(str(path))

  # open_clip training checkpoints: the state dict next to optimizer state and metadata.
  # (An SGD-with-momentum optimizer.state_dict(), written out: torch.optim imports slowly.)
  optimizer = {"state": {0: {"momentum_buffer": torch.randn(2)}},
               "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]}
  wrapped = {"epoch": 3, "name": "run", "state_dict": state, "optimizer": optimizer}
  _assert_matches(load(wrapped), state)
  prefixed = {f"module.{k}": v for k, v in state.items()}
  _assert_matches(load(prefixed), state)
  _assert_matches(load({"model": prefixed}), state)
  _assert_matches(load({"module": state}), state)
  # Only a prefix that every name has is DataParallel's.
  partial = {"module.a": state["a.bias"], "b": state["a.bias"]}
  assert set(load(partial)) == {"module.a", "b"}
  with pytest.raises(ValueError, match=r"exactly one of the keys.*found a dict of 2"):
    load({"state_dict": state, "model": state})
  with pytest.raises(ValueError, match="'state_dict' holding a dict"):
    load({"state_dict": {"a": torch.zeros(1), "step": 3}})
  with pytest.raises(ValueError, match="found a list"):
    load([state["a.bias"]])


def test_legacy_format_is_refused_with_a_fix(tmp_path):
  path = tmp_path / "old.bin"
  torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
  with pytest.raises(ValueError, match=r"legacy \(pre-1\.6.*torch\.save\(torch\.load\(f\), f\)"):
    torch_pickle.load_state_dict(str(path))


class _Exploit:
  """What a malicious checkpoint does: unpickling it would call os.system."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def _rewrite_data_pkl(path, data_pkl):
  """A copy of a real checkpoint whose data.pkl is replaced."""
  with zipfile.ZipFile(path) as archive:
    entries = {name: archive.read(name) for name in archive.namelist()}
  data_name = next(name for name in entries if name.endswith("/data.pkl"))
  entries[data_name] = data_pkl
  with zipfile.ZipFile(path, "w") as archive:
    for name, data in entries.items():
      archive.writestr(name, data)


def test_disallowed_globals_are_refused_without_running_them(tmp_path):
  marker = tmp_path / "exploited"
  path = tmp_path / "evil.bin"
  torch.save({"w": torch.zeros(2), "x": _Exploit(marker)}, path)
  with pytest.raises(ValueError, match=r"global (posix|nt|os)\.system.*refusing"):
    torch_pickle.load_state_dict(str(path))
  assert not marker.exists()
  # Hand-written pickles calling other globals, including torch functions that are not
  # tensor rebuilds.
  refused = [("builtins", "eval"), ("torch", "load"), ("torch._utils", "_rebuild_qtensor")]
  for module, name in refused:
    _rewrite_data_pkl(path, f"\x80\x02c{module}\n{name}\n)R.".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"global {module}\.{name}"):
      torch_pickle.load_state_dict(str(path))
  # An allowed marker cannot be called into doing anything either.
  _rewrite_data_pkl(path, b"\x80\x02ctorch\nFloatStorage\n)R.")
  with pytest.raises(ValueError, match="not callable"):
    torch_pickle.load_state_dict(str(path))


def test_out_of_bounds_layout_is_refused(tmp_path):
  """A crafted layout reaching past its storage must not read foreign memory."""
  path = tmp_path / "bad.bin"
  torch.save({"w": torch.zeros(4)}, path)
  with zipfile.ZipFile(path) as archive:
    data_pkl = next(archive.read(n) for n in archive.namelist() if n.endswith("/data.pkl"))
  # Size (4,) -> (400,): the storage has 4 elements.
  assert data_pkl.count(b"K\x04\x85") == 1
  _rewrite_data_pkl(path, data_pkl.replace(b"K\x04\x85", b"M\x90\x01\x85"))
  with pytest.raises(ValueError, match="reaches element 399 of a storage of 4 elements"):
    torch_pickle.load_state_dict(str(path))


def test_truncated_and_corrupt_files_name_the_path(tmp_path):
  path = tmp_path / "pytorch_model.bin"
  torch.save({"w": torch.randn(64, 64)}, path)
  data = path.read_bytes()
  truncated = tmp_path / "truncated.bin"
  truncated.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=rf"{truncated}: truncated or corrupt zip"):
    torch_pickle.load_state_dict(str(truncated))
  # Damaged tensor bytes inside an intact archive: the zip CRC check catches them.
  corrupt = tmp_path / "corrupt.bin"
  offset = data.index(np.asarray(torch.load(path)["w"]).tobytes()[:64])
  corrupt.write_bytes(data[:offset] + bytes(16) + data[offset + 16:])
  with pytest.raises(ValueError, match=rf"{corrupt}: cannot load.*CRC"):
    torch_pickle.load_state_dict(str(corrupt))
  other = tmp_path / "notes.txt"
  other.write_text("hello")
  with pytest.raises(ValueError, match=rf"{other} is not a PyTorch checkpoint"):
    torch_pickle.load_state_dict(str(other))

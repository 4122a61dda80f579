"""Read PyTorch `torch.save` checkpoints (pytorch_model.bin, open_clip_pytorch_model.bin)
into numpy arrays without importing torch.

rrjax converts PyTorch weights (open_clip / OpenAI CLIP teachers, Hugging Face
pytorch_model.bin files) into Flax variables, but it does not depend on torch: torch is
a large install, and all a state dict needs is its tensors' bytes, dtypes and shapes.
This module reads the zip format that `torch.save` writes since torch 1.6:

  <archive>/data.pkl       the pickled object; each tensor's storage is a persistent id
                           ("storage", storage_type, key, location, numel)
  <archive>/data/<key>     that storage's raw bytes (little-endian)
  <archive>/byteorder      "little" (absent in older files, which were little-endian)

Safety: unpickling an arbitrary pickle can execute arbitrary code (a pickle may call any
importable global, e.g. `os.system`). The unpickler here resolves only the few globals a
tensor state dict is made of: torch's tensor/parameter rebuild functions (replaced by
numpy implementations below), the legacy `torch.*Storage` classes and `torch.<dtype>`
objects (replaced by inert markers that name a numpy dtype) and
`collections.OrderedDict`. Any other global is refused before it is imported, so loading
an untrusted checkpoint cannot run code; at worst it fails with a ValueError. The
rebuilt tensors' offsets, shapes and strides are bounds-checked against their storage.

The legacy (pre-1.6) format is not read: it needs torch's own unpickling of storages
record by record; re-saving such a file with a current torch (or as safetensors) is a
one-liner, and the error says so.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np

# The number a legacy (non-zip) torch.save file starts with, as its first pickle.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Keys under which training scripts nest the state dict (open_clip: "state_dict";
# others "model"; DeepSpeed "module").
_WRAPPER_KEYS = ("state_dict", "model", "module")
_DATA_PARALLEL_PREFIX = "module."


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stands in for a `torch.*Storage` class in the pickle: only names the dtype of the
  storage bytes. Not callable, so a pickle cannot use it to construct anything."""
  name: str
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _TorchDtype:
  """Stands in for a `torch.<dtype>` object (torch pickles dtypes as `torch.float32`
  etc.; `_rebuild_tensor_v3` takes one)."""
  name: str
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _TorchClass:
  """Stands in for `torch.Tensor` as the type argument of `_rebuild_from_type_v2`."""
  name: str


_TENSOR_CLASS = _TorchClass("torch.Tensor")

# torch dtype name -> numpy dtype, for the dtypes numpy (with ml_dtypes) can hold.
_DTYPES = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "complex128": np.complex128,
    "complex64": np.complex64,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint64": np.uint64,
    "uint32": np.uint32,
    "uint16": np.uint16,
    "uint8": np.uint8,
    "bool": np.bool_,
}
# Newer torch dtypes exist in ml_dtypes only from some version on.
for _name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
              "float8_e8m0fnu"):
  if hasattr(ml_dtypes, _name):
    _DTYPES[_name] = getattr(ml_dtypes, _name)
_DTYPES = {name: np.dtype(dtype) for name, dtype in _DTYPES.items()}

# The legacy storage classes torch.save still names for the classic dtypes (newer dtypes
# are saved as an UntypedStorage plus a dtype, see _rebuild_tensor_v3).
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


def _strided_copy(storage, storage_offset, size, stride) -> np.ndarray:
  """The tensor `storage.as_strided(size, stride, storage_offset)` (offset and strides in
  elements) as a contiguous array that owns its data, so that views of one storage
  (tied weights, transposes, slices) each come out right and independent."""
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise pickle.UnpicklingError(f"a tensor's storage is a {type(storage).__name__}.")
  size, stride = tuple(size), tuple(stride)
  values = (storage_offset, *size, *stride)
  if (len(size) != len(stride) or not all(isinstance(v, int) for v in values)
      or min(values) < 0):
    raise pickle.UnpicklingError(
        f"invalid tensor layout: offset {storage_offset!r}, size {size!r}, stride {stride!r}.")
  if 0 in size:
    return np.empty(size, storage.dtype)
  # as_strided does no checking: an out-of-range layout would read arbitrary memory.
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise pickle.UnpicklingError(
        f"tensor layout (offset {storage_offset}, size {size}, stride {stride}) reaches "
        f"element {last} of a storage of {storage.size} elements.")
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=size,
      strides=tuple(s * storage.itemsize for s in stride), writeable=False)
  return np.array(view, copy=True, order="C")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, metadata=None):
  """numpy version of torch._utils._rebuild_tensor_v2 (the classic dtypes)."""
  del requires_grad, backward_hooks, metadata  # Autograd state; no meaning for arrays.
  return _strided_copy(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
  """numpy version of torch._utils._rebuild_tensor_v3: dtypes without a legacy storage
  class (uint16/32/64, float8) come as untyped bytes plus the dtype."""
  del requires_grad, backward_hooks, metadata
  if not isinstance(dtype, _TorchDtype) or not isinstance(storage, np.ndarray):
    raise pickle.UnpicklingError(f"_rebuild_tensor_v3 got dtype {dtype!r}.")
  data = storage.view(np.uint8)
  data = data[:data.size - data.size % dtype.dtype.itemsize]
  return _strided_copy(data.view(dtype.dtype), storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
  """An nn.Parameter is just its data here."""
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  """An nn.Parameter with Python attributes set on it: the attributes are dropped."""
  del requires_grad, backward_hooks, state
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  """A plain tensor with Python attributes set on it (torch pickles those through
  torch._tensor._rebuild_from_type_v2): the attributes are dropped. Only the tensor
  rebuild functions and `torch.Tensor` itself are accepted."""
  del state
  if func not in (_rebuild_tensor_v2, _rebuild_tensor_v3) or new_type is not _TENSOR_CLASS:
    raise pickle.UnpicklingError(
        f"_rebuild_from_type_v2 supports only torch.Tensor, got {new_type!r}.")
  return func(*args)


def _allowed_globals() -> dict[tuple[str, str], object]:
  allowed = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
      ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
      ("torch", "Tensor"): _TENSOR_CLASS,
  }
  for name, dtype in _STORAGE_DTYPES.items():
    allowed["torch", name] = _StorageType(name, _DTYPES[dtype])
  untyped = _StorageType("UntypedStorage", np.dtype(np.uint8))
  allowed["torch", "UntypedStorage"] = allowed["torch.storage", "UntypedStorage"] = untyped
  for name, dtype in _DTYPES.items():
    allowed["torch", name] = _TorchDtype(name, dtype)
  return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class _StateDictUnpickler(pickle.Unpickler):
  """Unpickles a torch.save data.pkl into numpy arrays, resolving only the globals of
  _ALLOWED_GLOBALS and reading storages from the archive's data/ records."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix
    self._names = set(archive.namelist())
    # Storage key -> its array: tensors that share a storage (views, tied weights) come
    # as repeated persistent ids with the same key.
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    try:
      return _ALLOWED_GLOBALS[module, name]
    except KeyError:
      raise pickle.UnpicklingError(
          f"data.pkl references the global {module}.{name}, which is not part of a tensor "
          "state dict; refusing to load it (unpickling arbitrary globals can execute "
          "code). Only tensors, nn.Parameters and (nested) dicts/lists of them are "
          "supported.") from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}.")
    _, storage_type, key, _, numel = pid  # The location (e.g. "cuda:0") does not matter.
    if isinstance(key, bytes):
      key = key.decode("ascii")
    if (not isinstance(storage_type, _StorageType) or not isinstance(key, str)
        or not isinstance(numel, int) or numel < 0):
      raise pickle.UnpicklingError(f"invalid storage reference {pid!r}.")
    if key not in self._storages:
      record = f"{self._prefix}data/{key}"
      if record not in self._names:
        raise pickle.UnpicklingError(f"storage record {record} is missing.")
      nbytes = numel * storage_type.dtype.itemsize
      data = self._archive.read(record)
      if len(data) < nbytes:
        raise pickle.UnpicklingError(
            f"storage record {record} has {len(data)} bytes, expected {nbytes}.")
      self._storages[key] = np.frombuffer(data, storage_type.dtype, count=numel)
    return self._storages[key]


class _NoGlobalsUnpickler(pickle.Unpickler):
  """For sniffing a legacy file's leading magic number, which is a plain int."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f"global {module}.{name}")


def _is_legacy(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      return _NoGlobalsUnpickler(f).load() == _LEGACY_MAGIC
  except Exception:  # Not a pickle at all: not legacy either. pylint: disable=broad-except
    return False


def _not_a_zip(path: str) -> ValueError:
  with open(path, "rb") as f:
    head = f.read(4)
  if head.startswith(b"PK"):
    return ValueError(f"{path}: truncated or corrupt zip archive (torch.save format); the "
                      "file is incomplete or damaged, download or save it again.")
  if head.startswith(b"\x80") and _is_legacy(path):  # \x80: a pickle's PROTO opcode.
    return ValueError(
        f"{path} is a PyTorch checkpoint in the legacy (pre-1.6, non-zip) format, which "
        "rrjax does not read. Re-save it with a current torch: "
        "`torch.save(torch.load(f), f)`, or as safetensors "
        "(`safetensors.torch.save_file(torch.load(f), 'model.safetensors')`).")
  return ValueError(f"{path} is not a PyTorch checkpoint (neither the zip format of "
                    "torch.save since torch 1.6 nor the legacy pickle format).")


def _find_prefix(path: str, names: list[str]) -> str:
  """The "<archive>/" folder holding data.pkl (named after the file torch.save wrote)."""
  candidates = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(candidates) != 1:
    raise ValueError(f"{path}: expected one <archive>/data.pkl in the zip, found "
                     f"{candidates or 'none'} (entries: {names[:10]}).")
  prefix = candidates[0].removesuffix("data.pkl")
  if prefix + "constants.pkl" in names:
    raise ValueError(f"{path} is a TorchScript archive (torch.jit.save), not a state dict; "
                     "save `model.state_dict()` with torch.save instead.")
  return prefix


def _unpickle(path: str) -> object:
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile:
    raise _not_a_zip(path) from None
  with archive:
    names = archive.namelist()
    prefix = _find_prefix(path, names)
    if prefix + "byteorder" in names:
      byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
      if byteorder != "little":
        raise ValueError(f"{path}: {byteorder}-endian checkpoints are not supported.")
    try:
      with archive.open(prefix + "data.pkl") as f:
        return _StateDictUnpickler(f, archive, prefix).load()
    except MemoryError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # Whatever fails inside the unpickling (a refused global, a bad layout, a CRC
      # error in a record, a malformed pickle) means the file cannot be loaded as a
      # state dict; the chained exception keeps the detail.
      raise ValueError(f"{path}: cannot load the PyTorch checkpoint: {e}") from e


def _is_state_dict(obj) -> bool:
  return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
          and all(isinstance(v, np.ndarray) for v in obj.values()))


def _describe(obj) -> str:
  if isinstance(obj, dict):
    items = [f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:8]]
    more = ", ..." if len(obj) > 8 else ""
    return f"a dict of {len(obj)} entries {{{', '.join(items)}{more}}}"
  return f"a {type(obj).__name__}"


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a `torch.save` checkpoint (zip format) without torch.

  Args:
    path: a file written by `torch.save` with torch >= 1.6, e.g. pytorch_model.bin.

  Returns:
    name -> contiguous numpy array owning its data, in the checkpoint's dtype (bfloat16
    and float8 as ml_dtypes types). The file holds either the state dict itself or a
    dict with exactly one of the keys "state_dict", "model", "module" holding it (other
    entries, e.g. an optimizer state, are ignored); a "module." prefix on every name
    (DataParallel / DistributedDataParallel) is removed. As with torch.load, a tensor
    saved under two names (tied weights) comes back as one array under both.

  Raises:
    ValueError: the file is in the legacy (pre-1.6) format, truncated or corrupt, refers
      to anything but tensors and containers (refused for safety), or does not hold a
      state dict.
  """
  path = os.fspath(path)
  obj = _unpickle(path)
  if _is_state_dict(obj):
    state = obj
  else:
    wrappers = [k for k in _WRAPPER_KEYS if isinstance(obj, dict) and k in obj]
    if len(wrappers) != 1 or not _is_state_dict(obj[wrappers[0]]):
      raise ValueError(
          f"{path}: expected a state dict (a dict of names to tensors), or one under "
          f"exactly one of the keys {list(_WRAPPER_KEYS)}; found {_describe(obj)}"
          + (f", with {wrappers[0]!r} holding {_describe(obj[wrappers[0]])}"
             if len(wrappers) == 1 else "") + ".")
    state = obj[wrappers[0]]
  if all(name.startswith(_DATA_PARALLEL_PREFIX) for name in state):
    return {name.removeprefix(_DATA_PARALLEL_PREFIX): v for name, v in state.items()}
  return dict(state)

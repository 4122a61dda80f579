"""Checkpoint files from a local directory or a Hugging Face hub id, one way for all models.

A name that looks like a path (or exists on disk) is a local directory; anything else is
a hub repo id, resolved through `huggingface_hub`'s download and cache (so
`HF_HUB_OFFLINE=1` and a populated `HF_HOME` work as usual). Errors say what to do:
an offline machine without the files in its cache is told to download them elsewhere
or to name a local directory.
"""

from __future__ import annotations

import hashlib
import os

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError


def check_name(name_or_path, field: str) -> str:
  """A hub id passes through; anything written as a path must be an existing directory."""
  if not isinstance(name_or_path, str) or not name_or_path:
    raise ValueError(f"{field} must be a Hugging Face hub id or a local directory, got "
                     f"{name_or_path!r}.")
  looks_local = name_or_path.startswith(("/", "./", "../", "~")) or os.path.exists(name_or_path)
  if looks_local and not os.path.isdir(os.path.expanduser(name_or_path)):
    raise FileNotFoundError(f"{field}={name_or_path!r}: no such directory; give a checkpoint "
                            "directory or a Hugging Face hub id.")
  return os.path.expanduser(name_or_path) if looks_local else name_or_path


def is_local(name_or_path: str) -> bool:
  return os.path.isdir(name_or_path)


def find_file(name_or_path: str, filename: str) -> str | None:
  """The local path of `filename` in a directory or hub repo (downloaded if needed and
  allowed), or None when the checkpoint does not have that file."""
  if is_local(name_or_path):
    path = os.path.join(name_or_path, filename)
    return path if os.path.isfile(path) else None
  try:
    return hf_hub_download(name_or_path, filename)
  except EntryNotFoundError:
    return None
  except LocalEntryNotFoundError as e:
    # Offline (HF_HUB_OFFLINE=1 or no network) and not in the local cache. The file may
    # simply not exist in the repo; only the caller knows whether it is required.
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
      return None
    raise FileNotFoundError(
        f"cannot reach the Hugging Face hub for {name_or_path!r} ({filename}) and it is not "
        "in the local cache: download it where there is a network (huggingface-cli download "
        f"{name_or_path}) or give a local directory.") from e


def require_file(name_or_path: str, candidates: tuple[str, ...], what: str) -> str:
  """The first of `candidates` that the checkpoint has; FileNotFoundError otherwise."""
  for filename in candidates:
    if path := find_file(name_or_path, filename):
      return path
  where = ("directory" if is_local(name_or_path) else
           "hub repo (or it is not in the local Hugging Face cache)")
  raise FileNotFoundError(f"{name_or_path!r}: no {what} found ({', '.join(candidates)}) in the "
                          f"{where}.")


def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def identity(name_or_path: str, paths: list[str]) -> dict:
  """What identifies a checkpoint's weights: the hash of each file used from a local
  directory; for a hub repo its id and the commit its cached files came from."""
  if is_local(name_or_path):
    return {"files": {os.path.basename(p): sha256_file(p) for p in sorted(paths)}}
  # hf_hub_download returns .../snapshots/<commit>/<filename>.
  commits = sorted({os.path.basename(os.path.dirname(p)) for p in paths})
  return {"hub_id": name_or_path, "commit": ",".join(commits)}

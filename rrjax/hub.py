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

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from huggingface_hub.file_download import repo_folder_name


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


def _in_cache(repo_id: str) -> bool:
  """Whether huggingface_hub's cache (HF_HUB_CACHE, default HF_HOME/hub) holds any
  snapshot of this model repo."""
  folder = os.path.join(constants.HF_HUB_CACHE, repo_folder_name(repo_id=repo_id,
                                                                 repo_type="model"))
  return os.path.isdir(os.path.join(folder, "snapshots"))


def find_file(name_or_path: str, filename: str) -> str | None:
  """The local path of `filename` in a directory or hub repo (downloaded if needed and
  allowed), or None when the checkpoint does not have that file."""
  if is_local(name_or_path):
    path = os.path.join(name_or_path, filename)
    return path if os.path.isfile(path) else None
  try:
    return hf_hub_download(name_or_path, filename)
  except LocalEntryNotFoundError as e:  # A subclass of EntryNotFoundError: caught first.
    # Offline (HF_HUB_OFFLINE=1) or no network, and the file is not in the local cache.
    if _in_cache(name_or_path):
      # The repo is cached, so the file may simply not exist in it (open_clip_config.json
      # in a transformers repo); only the caller knows whether it is required.
      return None
    # Not cached at all: say so here, not "no config found" in the caller.
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    raise FileNotFoundError(
        f"{name_or_path!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
        f"and {'HF_HUB_OFFLINE=1' if offline else 'the hub cannot be reached'}: download it "
        f"where there is a network (hf download {name_or_path}) into that cache, or give a "
        "local directory.") from e
  except EntryNotFoundError:  # The repo has no such file.
    return None


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

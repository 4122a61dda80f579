"""What the sources share (rrjax.data.sources): class lists by wnid, decoding, indices."""

from __future__ import annotations

import importlib.resources
import io
import re

import numpy as np
from PIL import Image

from rrjax.data import views


WNID_LISTS = ("imagenet100", "imagenet100b")

# An ImageNet class id (WordNet noun synset): what ImageNet folders name their classes.
WNID_PATTERN = re.compile(r"n\d{8}")


def load_wnids(name: str) -> list[str]:
  """A packaged wnid list ("imagenet100" or "imagenet100b"), in its file order."""
  if name not in WNID_LISTS:
    raise ValueError(f"data.wnids={name!r} must be one of {WNID_LISTS}, 'auto' (ImageNet-100 "
                     "for tfds imagenet2012, else the data's own classes) or '' (all classes).")
  text = importlib.resources.files("rrjax.data").joinpath(f"{name}_wnids.txt").read_text()
  return [line.strip() for line in text.splitlines() if line.strip()]


def decode_image(data: bytes, name: str) -> np.ndarray:
  """Encoded image bytes -> uint8 [H,W,3] RGB; a ValueError naming `name` if unreadable."""
  try:
    with Image.open(io.BytesIO(data)) as pil:
      return np.asarray(pil.convert("RGB"))
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ...).
    raise views.decode_error(name, e) from e


def check_index(i, n: int) -> int:
  i = int(i)
  if not 0 <= i < n:
    raise IndexError(f"index {i} out of range for a source of {n} examples.")
  return i

"""Draws one image under each corruption setting of the paper, like its Figure 11.

  python -m rrjax.tools.show_operators --image photo.jpg --out grid.png [--size 224]

The image is resized (shorter side) and centre-cropped to size x size; without --image a
generated test pattern is used. The grid has `--columns` tiles per row: the clean image,
then each setting of `rrjax.operators.PAPER_SETTINGS` in order, each under a label strip
of `label_height(size)` pixels with its `describe()` label. So the PNG is
columns * size wide and rows * (size + label_height(size)) high. Noisy images are clipped
to [0, 1] for display only.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from rrjax import operators


def label_height(size: int) -> int:
  return max(12, size // 8)


def load_image(path: str, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: shorter side resized to `size`, centre crop."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--image {path!r} does not exist; pass an image file.")
  with Image.open(path) as image:
    return np.asarray(ImageOps.fit(image.convert("RGB"), (size, size), Image.BICUBIC))


def synthetic_image(size: int) -> np.ndarray:
  """A colour test pattern with smooth areas, edges and fine detail (uint8 [size, size, 3])."""
  v, u = np.mgrid[0:size, 0:size] / size
  disc = (u - 0.6)**2 + (v - 0.4)**2 < 0.07
  stripes = np.sin(2 * np.pi * 12 * u * v) > 0
  rgb = np.stack([0.2 + 0.7 * u, 0.3 + 0.5 * v, np.where(stripes, 0.8, 0.3)], axis=-1)
  rgb[disc] = (0.95, 0.75, 0.1)
  return np.round(rgb * 255).astype(np.uint8)


def corrupt(image: np.ndarray, specs: Sequence, seed: int = 0) -> list[np.ndarray]:
  """The uint8 image under each spec; spec i uses key fold_in(key(seed), i)."""
  images01 = jnp.asarray(image, jnp.float32)[None] / 255
  outputs = []
  for i, spec in enumerate(specs):
    corrupted = jax.jit(operators.build(spec))(jax.random.fold_in(jax.random.key(seed), i), images01)
    outputs.append(np.round(np.clip(np.asarray(corrupted[0]), 0, 1) * 255).astype(np.uint8))
  return outputs


def _fitted_font(draw: ImageDraw.ImageDraw, text: str, width: int, height: int):
  """The largest default font (at most 60% of the strip height) whose text fits `width`."""
  font_size = max(6, int(0.6 * height))
  font = ImageFont.load_default(font_size)
  while font_size > 6 and draw.textlength(text, font=font) > width - 4:
    font_size -= 1
    font = ImageFont.load_default(font_size)
  return font


def make_grid(image: np.ndarray, specs: Sequence = operators.PAPER_SETTINGS, *,
              seed: int = 0, columns: int = 3) -> Image.Image:
  """The clean image and its corrupted versions as one labelled grid (see module doc)."""
  size = image.shape[0]
  strip = label_height(size)
  tiles = [("clean", image)] + list(
      zip([operators.describe(spec) for spec in specs], corrupt(image, specs, seed)))
  rows = math.ceil(len(tiles) / columns)
  grid = Image.new("RGB", (columns * size, rows * (size + strip)), "white")
  draw = ImageDraw.Draw(grid)
  for index, (label, tile) in enumerate(tiles):
    left, top = (index % columns) * size, (index // columns) * (size + strip)
    font = _fitted_font(draw, label, size, strip)
    draw.text((left + size / 2, top + strip / 2), label, fill="black", font=font, anchor="mm")
    grid.paste(Image.fromarray(tile), (left, top + strip))
  return grid


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--image", default="", help="image file (default: a test pattern)")
  parser.add_argument("--out", required=True, help="PNG file to write")
  parser.add_argument("--size", type=int, default=224, help="tile side in pixels")
  parser.add_argument("--columns", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.size < 1:
    raise ValueError(f"--size must be at least 1; got {args.size}.")
  if args.columns < 1:
    raise ValueError(f"--columns must be at least 1; got {args.columns}.")
  image = load_image(args.image, args.size) if args.image else synthetic_image(args.size)
  grid = make_grid(image, seed=args.seed, columns=args.columns)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  grid.save(args.out, format="PNG")
  print(f"wrote {args.out} ({grid.width}x{grid.height})")


if __name__ == "__main__":
  main()

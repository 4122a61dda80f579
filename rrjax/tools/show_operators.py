"""Draws one image under each corruption setting of the paper, like its Figure 11.

  python -m rrjax.tools.show_operators --image photo.jpg --out grid.png [--size 224]
  python -m rrjax.tools.show_operators --imagenet_c --out imagenet_c.png [--corruptions fog,snow]

The image is resized (shorter side) and centre-cropped to size x size; without --image a
generated test pattern is used. Every tile sits under a label strip of `label_height(size)`
pixels, so a grid of R rows and C columns is C * size wide and R * (size + label_height(size))
high. Noisy images are clipped to [0, 1] for display only.

By default the grid has `--columns` tiles per row: the clean image, then each setting of
`rrjax.operators.PAPER_SETTINGS` in order, labelled with its `describe()` label.

With --imagenet_c it has one row per ImageNet-C corruption (`rrjax.imagenet_c.NAMES`, 19
rows, or those named by --corruptions) and 6 columns: the clean image, labelled with the
corruption's name ("fog: clean"), then severities 1 to 5 ("severity 1" ... "severity 5").

Run time is almost all XLA compilation (one program per grid row; the operators then run
once on a 1-image batch). At 224 px on CPU, measured end to end on a busy 2-core machine:
--imagenet_c about 40 s (frost, spatter, glass_blur, fog and snow compile the longest), the
paper grid about 7 s. On CPU the programs are compiled at XLA's lowest backend optimisation
level, which halves the compile time; the operators' run time (~5 s of it) stays small.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from rrjax import imagenet_c, operators

# One grid tile: its label and the operator spec to draw, or None for the clean image.
Tile = tuple[str, Any]


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


def _compiler_options() -> dict[str, Any] | None:
  # Each program runs once on one image, so on CPU compiling is nearly all the time, and
  # XLA's lowest LLVM optimisation level roughly halves it (the ImageNet-C grid at 224 px:
  # ~60 s -> ~30 s). Other backends keep their defaults: not every one takes this option.
  return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


def corrupt(image: np.ndarray, specs: Sequence, seed: int = 0,
            first: int = 0) -> list[np.ndarray]:
  """The uint8 image under each spec, all in one jitted call (one compilation rather than
  one per spec); spec i uses key fold_in(key(seed), first + i)."""
  if not specs:
    return []
  ops = [operators.build(spec) for spec in specs]

  def run(key, images01):
    return [op(jax.random.fold_in(key, first + i), images01) for i, op in enumerate(ops)]

  images01 = jnp.asarray(image, jnp.float32)[None] / 255
  outputs = jax.jit(run, compiler_options=_compiler_options())(jax.random.key(seed), images01)
  return [np.round(np.clip(np.asarray(out[0]), 0, 1) * 255).astype(np.uint8)
          for out in outputs]


def paper_rows(columns: int = 3) -> list[list[Tile]]:
  """The clean image, then PAPER_SETTINGS under their describe() labels, `columns` a row."""
  tiles = [("clean", None)] + [(operators.describe(spec), spec)
                               for spec in operators.PAPER_SETTINGS]
  return [tiles[start:start + columns] for start in range(0, len(tiles), columns)]


def imagenet_c_rows(names: Sequence[str] = imagenet_c.NAMES) -> list[list[Tile]]:
  """One row per corruption: the clean image ("fog: clean"), then severities 1 to 5."""
  return [[(f"{name}: clean", None)] + [(f"severity {severity}",
                             {"kind": "imagenet_c", "corruption": name, "severity": severity})
                            for severity in imagenet_c.SEVERITIES] for name in names]


def _fitted_font(draw: ImageDraw.ImageDraw, text: str, width: int, height: int):
  """The largest default font (at most 60% of the strip height) whose text fits `width`."""
  font_size = max(6, int(0.6 * height))
  font = ImageFont.load_default(font_size)
  while font_size > 6 and draw.textlength(text, font=font) > width - 4:
    font_size -= 1
    font = ImageFont.load_default(font_size)
  return font


def make_grid(image: np.ndarray, rows: Sequence[Sequence[Tile]] | None = None, *,
              seed: int = 0) -> Image.Image:
  """The image under each tile's spec as one labelled grid, `rows` as laid out (default:
  `paper_rows()`; see module doc). Each row is one jitted call; the k-th spec in reading
  order uses key fold_in(key(seed), k), so a row's draws do not depend on the layout."""
  rows = paper_rows() if rows is None else rows
  size = image.shape[0]
  strip = label_height(size)
  columns = max(len(row) for row in rows)
  grid = Image.new("RGB", (columns * size, len(rows) * (size + strip)), "white")
  draw = ImageDraw.Draw(grid)
  specs_before = 0
  for row_index, row in enumerate(rows):
    specs = [spec for _, spec in row if spec is not None]
    corrupted = iter(corrupt(image, specs, seed, first=specs_before))
    specs_before += len(specs)
    for column, (label, spec) in enumerate(row):
      tile = image if spec is None else next(corrupted)
      left, top = column * size, row_index * (size + strip)
      font = _fitted_font(draw, label, size, strip)
      draw.text((left + size / 2, top + strip / 2), label, fill="black", font=font, anchor="mm")
      grid.paste(Image.fromarray(tile), (left, top + strip))
  return grid


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--image", default="", help="image file (default: a test pattern)")
  parser.add_argument("--out", required=True, help="PNG file to write")
  parser.add_argument("--size", type=int, default=224, help="tile side in pixels")
  parser.add_argument("--columns", type=int, default=None,
                      help="tiles per row of the paper grid (default 3)")
  parser.add_argument("--imagenet_c", action="store_true",
                      help="the ImageNet-C corruptions x severities 1-5 instead")
  parser.add_argument("--corruptions", default="",
                      help="with --imagenet_c: comma-separated names (default: all 19)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.size < 1:
    raise ValueError(f"--size must be at least 1; got {args.size}.")
  if args.columns is not None and args.columns < 1:
    raise ValueError(f"--columns must be at least 1; got {args.columns}.")
  if args.imagenet_c and args.columns is not None:
    raise ValueError("--columns does not apply to --imagenet_c: its rows are the clean "
                     "image and severities 1 to 5.")
  if args.corruptions and not args.imagenet_c:
    raise ValueError("--corruptions needs --imagenet_c.")
  if args.imagenet_c:
    names = [imagenet_c.parse_corruption("--corruptions", name.strip())
             for name in args.corruptions.split(",")] if args.corruptions else imagenet_c.NAMES
    rows = imagenet_c_rows(names)
  else:
    rows = paper_rows(3 if args.columns is None else args.columns)
  image = load_image(args.image, args.size) if args.image else synthetic_image(args.size)
  grid = make_grid(image, rows, seed=args.seed)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  grid.save(args.out, format="PNG")
  print(f"wrote {args.out} ({grid.width}x{grid.height})")


if __name__ == "__main__":
  main()

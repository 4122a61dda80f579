"""Downloads and prepares a tfds dataset in the array_record format that rrjax reads.

  pip install -e ".[prepare]"    # TensorFlow (CPU): tfds's dataset builders need it
  python -m rrjax.data.build_tfds imagenette [--data_dir DIR] [--manual_dir DIR]

This is `tfds build NAME --file_format=array_record` without the `tfds` command line,
which also needs Apache Beam at import (tensorflow-datasets 4.9). Datasets with files to
place by hand (ImageNet: `ILSVRC2012_img_{train,val}.tar`) read them from `--manual_dir`
(tfds's default: DATA_DIR/downloads/manual). Training then reads the result with
`data.source="tfds"` and `data.root` at DATA_DIR (empty: tfds's default data_dir).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Sequence


def build_command(name: str, data_dir: str | None = None) -> str:
  """The command that prepares tfds dataset `name` (under `data_dir`, else tfds's default)."""
  return f"python -m rrjax.data.build_tfds {name}" + (f" --data_dir {data_dir}" if data_dir
                                                        else "")


def _has_tensorflow() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def _missing_inputs(builder, manual_dir: str | None) -> str | None:
  """Why the build cannot start, before anything is downloaded; None when it can."""
  if not _has_tensorflow():
    return ("tfds's dataset builders need TensorFlow, which rrjax does not install; run "
            "`pip install -e \".[prepare]\"` (tensorflow-cpu) first.")
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    manual_dir = manual_dir or os.path.join(builder.data_dir_root, "downloads", "manual")
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
      first_sentence = " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split()).split(". ")[0]
      return (f"{builder.name} needs files placed by hand in {manual_dir} (--manual_dir): "
              f"{first_sentence.rstrip('.')}.")
  return None


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", help="tfds dataset name, e.g. imagenette or imagenet2012")
  parser.add_argument("--data_dir", default=None, help="default: tfds's (~/tensorflow_datasets)")
  parser.add_argument("--manual_dir", default=None,
                      help="where files placed by hand are (default: DATA_DIR/downloads/manual)")
  args = parser.parse_args(argv)
  # Heavy imports, after argument parsing (requests comes with tensorflow-datasets).
  import requests  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    builder = tfds.builder(args.name, data_dir=args.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    parser.exit(2, f"error: {str(e).splitlines()[0]}\n")
  problem = _missing_inputs(builder, args.manual_dir)
  if problem:
    parser.exit(2, f"error: {problem}\n")
  try:
    builder.download_and_prepare(file_format="array_record",
                                 download_config=tfds.download.DownloadConfig(
                                     manual_dir=args.manual_dir))
  except requests.exceptions.ConnectionError as e:
    url = getattr(getattr(e, "request", None), "url", None) or "its host"
    parser.exit(2, f"error: could not download {args.name} from {url}; check the network, or "
                f"prepare it where the host is reachable and copy {builder.data_dir} here.\n")
  print(f"prepared {args.name} under {builder.data_dir}; train on it with "
        f"--config.data.source=tfds --config.data.name={args.name}"
        + (f" --config.data.root={args.data_dir}" if args.data_dir else ""))
  return builder.data_dir


if __name__ == "__main__":
  main()

"""Wall time of the eval stage on configs' smoke variants (CPU, generated data, the tiny
random CLIP teacher).

For each config, the whole pipeline runs once (the eval stage's own time is what its
done.json records), then the eval stage again in the same workdir after removing its
done.json: what a rerun of a finished experiment's evaluation costs, with whatever the
first run left in the workdir. Each run is a fresh `rrjax.stages.run_stages` call, so
nothing is shared in memory between them; compilation is part of the time, as it is
for a user.

  python benchmarks/eval_stage.py [--configs configs/mask.py:smoke configs/adversarial.py:smoke]
      [--keep DIR]  # each config's workdir kept under DIR (its results.json to compare)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

from rrjax import config as config_lib
from rrjax import stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = ("configs/mask.py:smoke", "configs/adversarial.py:smoke")


def eval_seconds(config_arg: str, workdir: str) -> tuple[float, float]:
  """(first eval run, rerun) wall seconds of `config_arg` in `workdir`."""
  config = config_lib.load_config(os.path.join(REPO, config_arg))
  first = stages.run_stages(config, workdir)["eval"]["seconds"]
  os.remove(os.path.join(workdir, "eval", "done.json"))
  start = time.perf_counter()
  stages.run_stages(config, workdir)
  return first, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
  parser.add_argument("--keep", default="", help="keep each config's workdir under this "
                      "directory (default: temporary, removed)")
  args = parser.parse_args()
  for config_arg in args.configs:
    with contextlib.ExitStack() as stack:
      if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        workdir = tempfile.mkdtemp(dir=args.keep, prefix=os.path.basename(config_arg) + "_")
      else:
        workdir = stack.enter_context(tempfile.TemporaryDirectory())
      first, rerun = eval_seconds(config_arg, workdir)
    print(f"{config_arg}: eval stage {first:.1f} s, rerun {rerun:.1f} s"
          + (f" (workdir {workdir})" if args.keep else ""), flush=True)


if __name__ == "__main__":
  main()

"""python -m rrjax.benchmark: zero-shot accuracy of CLIPs, clean, corrupted and attacked.

  python -m rrjax.benchmark --model openai/clip-vit-base-patch32 --model WORKDIR \\
      --datasets cifar10,stl10 --attack apgd --eps 2,4 \\
      --corruptions "mask:p=0.9;imagenet_c:corruption=fog,severity=3" --out DIR
  python -m rrjax.benchmark prompts cifar10      # {"classnames": [...], "templates": [...]}

--model (repeatable): a hub id or directory of a CLIP (open_clip or transformers layout), an
rrjax workdir or an `rrjax.export --format rrjax` directory (`rrjax.benchmark.models`).
--datasets: tfds names (`rrjax.benchmark.prompts.DATASETS`, prepared as array_record under
--data_dir or tfds' default) or image folders DIR/<class>/<image>. --corruptions: operator
specs separated by ";", each `kind:field=value,...` (a value is read as JSON when it parses,
so compose/choice take `ops=[{...}, ...]`). --eps: linf budgets in units of 1/255.
A preflight opens every model's configs and every dataset before anything is compiled;
bad input ends with a short message naming the flag (exit 2; --debug shows the traceback).
Outputs in --out: results.jsonl, table.md, robust_accuracy.png, classifiers/, log.txt
(`rrjax.benchmark.records`); a rerun skips the records already there.
Multi-host: as `rrjax.main` (RRJAX_COORDINATOR, SLURM, TPU pods): every process runs the
same command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

USAGE_HINT = "(python -m rrjax.benchmark --help lists the flags)"


class InputError(Exception):
  """Bad input: one short message naming the flag and the fix; exit status 2."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # argparse's own: the whole usage, then the message.
    raise InputError(f"{message} {USAGE_HINT}")


def parse_value(text: str):
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def _split_top_level(text: str, separator: str) -> list[str]:
  """`text` split at `separator` outside brackets and braces."""
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    depth += ch in "[{"
    depth -= ch in "]}"
    if ch == separator and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  return [p.strip() for p in parts + [text[start:]] if p.strip()]


def parse_corruptions(text: str) -> list[dict]:
  """"mask:p=0.9;blur:kernel_size=21,sigma=5" -> operator spec dicts."""
  specs = []
  for item in _split_top_level(text, ";"):
    kind, _, fields = item.partition(":")
    spec = {"kind": kind.strip()}
    for field in _split_top_level(fields, ","):
      name, sep, value = field.partition("=")
      if not sep:
        raise InputError(f"--corruptions: {field!r} in {item!r} is not field=value; write "
                         "specs as kind:field=value,field=value;kind:...")
      spec[name.strip()] = parse_value(value.strip())
    specs.append(spec)
  return specs


def parse_eps(text: str) -> list[float]:
  try:
    values = [float(v) / 255 for v in text.split(",") if v.strip()]
  except ValueError:
    raise InputError(f"--eps={text!r}: give budgets in units of 1/255 separated by commas, "
                     "e.g. --eps 2,4.") from None
  if not values or any(not 0 < v <= 1 for v in values):
    raise InputError(f"--eps={text!r}: each budget must be in (0, 255] (units of 1/255).")
  return values


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m rrjax.benchmark", description=__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", action="append", required=True, help="repeat for more models")
  p.add_argument("--datasets", required=True, help="comma-separated tfds names or folders")
  p.add_argument("--out", required=True, help="results directory (resumed when it exists)")
  p.add_argument("--attack", choices=("none", "apgd"), default="none")
  p.add_argument("--eps", default="2,4", help="linf budgets x 1/255 (with --attack apgd)")
  p.add_argument("--steps", type=int, default=100, help="iterations of each APGD attack")
  p.add_argument("--corruptions", default="", help="operator specs separated by ';'")
  p.add_argument("--num_images", type=int, default=1000, help="images attacked per dataset")
  p.add_argument("--batch_size", type=int, default=256, help="global, a multiple of devices")
  p.add_argument("--data_dir", default=None, help="tfds data_dir (default: tfds' own)")
  p.add_argument("--seed", type=int, default=0, help="random starts and corruption draws")
  p.add_argument("--verbosity", type=int, default=0, help="1: library logs on the terminal")
  p.add_argument("--debug", action="store_true", help="tracebacks of input errors")
  return p


def preflight(args):
  """Everything checked before any weight is read or program compiled; returns the
  conditions. Raises InputError with the first problems found (at most 3 lines)."""
  from rrjax import sharding
  from rrjax.benchmark import datasets, models, run

  if args.steps < 1 or args.num_images < 1:
    raise InputError("--steps and --num_images must be at least 1.")
  try:
    sharding.check_batch_divisible(args.batch_size, sharding.make_mesh(), "--batch_size")
  except ValueError as e:
    raise InputError(str(e)) from None
  eps = parse_eps(args.eps) if args.attack == "apgd" else []
  try:
    conditions = run.conditions(parse_corruptions(args.corruptions), eps, args.steps)
  except ValueError as e:
    raise InputError(f"--corruptions: {e}") from None
  names = [d.strip() for d in args.datasets.split(",") if d.strip()]
  if not names:
    raise InputError("--datasets is empty; give tfds names or image folders, e.g. "
                     "--datasets cifar10,stl10.")
  problems = []
  for name in args.model:
    try:
      models.describe(name)
    except (OSError, ValueError) as e:
      problems.append(str(e))
  for name in names:
    try:
      datasets.open_dataset(name, args.data_dir)
    except (OSError, ValueError) as e:
      problems.append(str(e))
  try:
    os.makedirs(args.out, exist_ok=True)
  except OSError as e:
    problems.append(f"--out={args.out!r} cannot be created ({e}); choose another directory.")
  if problems:
    more = f" (and {len(problems) - 3} more problems)" if len(problems) > 3 else ""
    raise InputError("\n".join(problems[:3]) + more)
  return names, conditions


def _prompts(argv: list[str]) -> None:
  from rrjax.benchmark import prompts
  parser = _Parser(prog="python -m rrjax.benchmark prompts")
  parser.add_argument("dataset", help=f"one of {', '.join(prompts.DATASETS)}")
  dataset = parser.parse_args(argv).dataset
  if dataset not in prompts.DATASETS:
    raise InputError(f"prompts: unknown dataset {dataset!r}; choose one of "
                     f"{', '.join(prompts.DATASETS)}.")
  classnames, templates = prompts.load(dataset)
  print(json.dumps({"classnames": list(classnames), "templates": list(templates)}))


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  debug = "--debug" in argv
  try:
    if argv[:1] == ["prompts"]:
      return _prompts(argv[1:])
    args = _parser().parse_args(argv)
    _benchmark(args)
  except InputError as e:
    if debug:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _benchmark(args) -> None:
  import logging

  from rrjax import console
  from rrjax import main as rrjax_main
  # A terminal handler for console.quiet_terminal to set (warnings only by default);
  # without it a library's own basicConfig would print every INFO record.
  logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
  console.quiet_terminal(args.verbosity)
  rrjax_main.join_job()
  from rrjax.benchmark import run
  names, conditions = preflight(args)
  log_path = console.setup(args.out, args.verbosity)
  try:
    bench = run.Benchmark(args.out, args.model, names, conditions, num_images=args.num_images,
                          steps=args.steps, batch_size=args.batch_size,
                          data_dir=args.data_dir, seed=args.seed)
    bench.run()
  except (ValueError, FileNotFoundError) as e:
    if args.debug:
      raise
    console.error(f"{e}\n(traceback in {log_path}; --debug shows it here)")
    sys.exit(2)
  from rrjax.benchmark import records
  console.say(f"records: {os.path.join(args.out, records.RESULTS)}\n"
              f"table:   {os.path.join(args.out, records.TABLE)}\n"
              f"log:     {log_path}")


if __name__ == "__main__":
  main()

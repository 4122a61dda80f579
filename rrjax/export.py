"""A finished run's student as a checkpoint other code loads, with a model card.

  python -m rrjax.export WORKDIR --format hf --out DIR         # transformers CLIPModel
  python -m rrjax.export WORKDIR --format open_clip --out DIR  # open_clip "local-dir:DIR"
  python -m rrjax.export WORKDIR --format rrjax --out DIR      # rrjax.export.load(DIR)

Reads `WORKDIR/config.json` (written by `python -m rrjax.main`) and the final checkpoint
of the run's `student` stage. `hf` and `open_clip` (a `clip` student) write the teacher
checkpoint whole with its image tower replaced by the student: a drop-in robust CLIP
whose text tower, logit scale and preprocessing are the teacher's, so zero-shot prompts
work unchanged. transformers has no CLIP ResNet, so a ModifiedResNet student goes to
`open_clip`. `rrjax` (any student; the only one for `resnet*` students, whose
torchvision layout neither library loads as a CLIP) writes the student's variables under
their Flax paths and what `rrjax.models.build_model` needs to rebuild it. Every format
gets a README.md model card built only from facts in the workdir (config, step count,
final loss, `results.md`). DIR must be new or empty: saved work is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import jax
import ml_collections
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file, save_file

from rrjax import checkpoints, hub, models, operators, sharding, train
from rrjax.models import clip
from rrjax.models.clip import spec as spec_lib, tokenizer as tokenizer_lib
from rrjax.stages import student as student_stage
from rrjax.stages.context import Context

FORMATS = ("hf", "open_clip", "rrjax")
RRJAX_WEIGHTS = "model.safetensors"
RRJAX_CONFIG = "rrjax_model.json"
# The tokenizer files of a transformers CLIP checkpoint, copied with it when it has them.
HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                      "special_tokens_map.json")


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config, as `rrjax.main.write_run_info` saved it (tuples come back as lists)."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"WORKDIR {workdir!r} is not a directory; give the --workdir of an "
                            "rrjax run.")
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: WORKDIR must be the --workdir of a run of "
                            "`python -m rrjax.main`, which writes it.")
  return ml_collections.ConfigDict(_read_json(path))


def check_request(config, workdir: str, fmt: str, out: str) -> None:
  """Everything that can be refused before the checkpoint is read (cheap: configs only)."""
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r}; choose one of {', '.join(FORMATS)}.")
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise FileExistsError(f"--out={out!r} exists and is not an empty directory; rrjax.export "
                          "never overwrites saved work: give a new directory.")
  if not os.path.isfile(os.path.join(workdir, "student", "done.json")):
    elsewhere = config.student.restore_from
    hint = (f", or export {elsewhere!r}, whose student this run used (student.restore_from)"
            if elsewhere else "")
    raise FileNotFoundError(
        f"the student stage of {workdir!r} has not finished (no student/done.json): run it "
        "first (python -m rrjax.main with this run's --config and --workdir, stages "
        f"including 'student'){hint}.")
  if fmt == "rrjax":
    return
  if config.student.model != "clip":
    raise ValueError(
        f"--format={fmt} needs a CLIP student, but student.model={config.student.model!r} is a "
        "torchvision-layout ResNet that neither transformers nor open_clip loads as a CLIP "
        "image tower; use --format rrjax.")
  spec = student_checkpoint(config).spec
  to_config = spec_lib.to_hf_config if fmt == "hf" else spec_lib.to_open_clip_config
  try:
    to_config(spec)
  except ValueError as e:
    raise ValueError(f"--format={fmt} is not possible for this student: {e}") from e


def student_checkpoint(config) -> clip.Checkpoint:
  """The CLIP checkpoint a `clip` student's architecture (and text tower) comes from."""
  cfg = student_stage.model_config(config)
  return clip.open_checkpoint(cfg.teacher_name, "student.teacher_name")


def final_student(config, workdir: str) -> tuple[train.TrainState, int]:
  """(the student stage's final train state, the teacher's embedding dim), restored as
  `rrjax.stages.student.load` restores another run's student."""
  ctx = Context(config=config, workdir=workdir, mesh=sharding.make_mesh())
  like = student_stage.initial_state(ctx, 1)
  state = checkpoints.load_final_state(os.path.join(workdir, "student"), like, ctx.mesh)
  return jax.device_get(state), ctx.teacher.dim


def save_clip(out: str, checkpoint: clip.Checkpoint, image_variables: dict, fmt: str) -> None:
  """`checkpoint` whole, its image tower replaced by `image_variables`, in layout `fmt`;
  for "hf" with the checkpoint's own tokenizer files (CLIP's standard ones if it has
  none). open_clip needs no tokenizer files: it uses CLIP's standard BPE."""
  variables = clip.with_image_tower(checkpoint.variables(), image_variables)
  clip.save(out, checkpoint.spec, variables, fmt)
  if fmt != "hf":
    return
  found = {name: hub.find_file(checkpoint.name, name) if checkpoint.layout == "hf" else None
           for name in HF_TOKENIZER_FILES}
  if found["tokenizer.json"] or found["vocab.json"]:
    for name, path in found.items():
      if path:
        shutil.copyfile(path, os.path.join(out, name))
  else:
    tokenizer_lib.write_hf_files(out, checkpoint.spec.text.context_length)


def save_rrjax(out: str, config, num_outputs: int, variables: dict) -> None:
  """The student's variables under "/"-joined Flax paths and the `build_model` config."""
  cfg = student_stage.model_config(config)
  model = {key: cfg.get(key, "") for key in ("model", "init", "dtype", "width", "teacher_name")}
  if cfg.model == "clip":  # Where `load` finds the architecture again.
    name = student_checkpoint(config).name
    model["teacher_name"] = os.path.abspath(name) if hub.is_local(name) else name
  os.makedirs(out, exist_ok=True)
  flat = flatten_dict(variables, sep="/")
  save_file({path: np.asarray(value) for path, value in flat.items()},
            os.path.join(out, RRJAX_WEIGHTS), metadata={"format": "rrjax"})
  with open(os.path.join(out, RRJAX_CONFIG), "w") as f:
    json.dump({**model, "num_outputs": num_outputs, "image_size": config.data.image_size}, f,
              indent=2)


def load(directory: str):
  """(module, variables) of a student exported with --format rrjax:
  `module.apply(variables, images01)` -> (embeddings [B, num_outputs], aux), images01
  float [B, S, S, 3] in [0, 1] with S = rrjax_model.json's image_size."""
  meta = _read_json(os.path.join(directory, RRJAX_CONFIG))
  module = models.build_model(ml_collections.ConfigDict(meta), meta["num_outputs"])
  variables = unflatten_dict(load_file(os.path.join(directory, RRJAX_WEIGHTS)), sep="/")
  return module, variables


def _usage(fmt: str, out: str, image_size: int) -> str:
  if fmt == "hf":
    return (f"```python\nfrom transformers import CLIPModel, CLIPProcessor\n\n"
            f"model = CLIPModel.from_pretrained({out!r})\n"
            f"processor = CLIPProcessor.from_pretrained({out!r})\n```\n\n"
            "or, once uploaded to the Hugging Face hub, "
            "`CLIPModel.from_pretrained(\"USER/REPO\")`.")
  if fmt == "open_clip":
    return (f"```python\nimport open_clip\n\n"
            f"model, _, preprocess = open_clip.create_model_and_transforms('local-dir:{out}')\n"
            f"tokenizer = open_clip.get_tokenizer('local-dir:{out}')\n```\n\n"
            "or, once uploaded to the Hugging Face hub, `'hf-hub:USER/REPO'` in place of "
            "`'local-dir:...'`.")
  return (f"```python\nfrom rrjax.export import load\n\n"
          f"module, variables = load({out!r})\n"
          f"embeddings, _ = module.apply(variables, images01)  # [B, {image_size}, "
          f"{image_size}, 3] floats in [0, 1]\n```")


def model_card(config, workdir: str, fmt: str, out: str, step: int) -> str:
  """README.md of the export: what was trained, how to load it, the run's own results."""
  c = config
  operator = operators.describe(c.operator.to_dict())
  done = _read_json(os.path.join(workdir, "student", "done.json"))
  loss = done.get("summary", {}).get("final_metrics", {}).get("loss")
  results = os.path.join(workdir, "results.md")
  if os.path.isfile(results):
    with open(results) as f:
      evaluation = ("The run's own evaluation (`results.md`; top-1 as mean ± sem over "
                    f"{c.eval.repeats} corruption draws):\n\n{f.read()}")
  else:
    evaluation = "No evaluation was run in this workdir (it has no results.md)."
  student = (f"the image tower of `{student_stage.model_config(c).teacher_name}`"
             if c.student.model == "clip" else f"a {c.student.model} (width {c.student.width})")
  tower = (" Its text tower, logit scale and preprocessing are the teacher's, unchanged."
           if fmt != "rrjax" else "")
  rows = [("teacher", f"`{c.teacher.name}`"),
          ("student", f"{student}, initialised `{c.student.init}`"),
          ("operator", f"{operator} (`{json.dumps(c.operator.to_dict())}`)"),
          ("data", f"{c.data.name} ({c.data.train_split}), {c.data.image_size} px"),
          ("training", f"{step} steps, {c.num_epochs} epoch(s), global batch {c.batch_size}"),
          ("loss", f"{c.loss.kind}, temperature {c.loss.temperature}"
                   + (f"; final training loss {loss:.4f}" if loss is not None else "")),
          ("optimizer", f"AdamW, learning rate {c.optimizer.learning_rate}, weight decay "
                        f"{c.optimizer.weight_decay}")]
  table = "\n".join(f"| {k} | {v} |" for k, v in rows)
  return (f"# Robust student of {c.teacher.name}\n\n"
          f"A CLIP-space image encoder trained by rrjax so that its embedding of an image "
          f"corrupted by {operator} matches the teacher's embedding of the clean image "
          "(Ravula et al., \"Inverse Problems Leveraging Pre-trained Contrastive "
          f"Representations\", NeurIPS 2021).{tower} Exported with `python -m rrjax.export "
          f"{workdir} --format {fmt}`.\n\n| | |\n| --- | --- |\n{table}\n\n"
          f"## Loading\n\n{_usage(fmt, out, c.data.image_size)}\n\n"
          f"## Evaluation\n\n{evaluation}\n")


def export(workdir: str, fmt: str, out: str) -> str:
  """Writes the final student of `workdir` to `out` in format `fmt`; returns `out`."""
  config = read_config(workdir)
  check_request(config, workdir, fmt, out)
  state, num_outputs = final_student(config, workdir)
  variables = {"params": state.params, **state.model_state}
  # Written next to `out`, then renamed: an interrupted export leaves no partial `out`.
  staging = f"{out.rstrip(os.sep)}.partial-{os.getpid()}"
  try:
    if fmt == "rrjax":
      save_rrjax(staging, config, num_outputs, variables)
    else:
      save_clip(staging, student_checkpoint(config), variables, fmt)
    with open(os.path.join(staging, "README.md"), "w") as f:
      f.write(model_card(config, workdir, fmt, out, int(state.step)))
    os.replace(staging, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m rrjax.export", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdir", metavar="WORKDIR", help="the --workdir of a finished run")
  parser.add_argument("--format", required=True, choices=FORMATS)
  parser.add_argument("--out", required=True, help="a new (or empty) directory")
  args = parser.parse_args(argv)
  try:
    out = export(args.workdir, args.format, args.out)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote {out} ({args.format})")


if __name__ == "__main__":
  main()

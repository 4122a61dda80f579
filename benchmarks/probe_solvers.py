"""Adam against L-BFGS linear probes on real photos and a real pretrained teacher.

Runs `configs/no_contrastive.py` (probes on the teacher's embeddings of corrupted
images, SPEC E11) once per solver on an image folder, with a TensorFlow Lite image
encoder as a plug-in teacher, and prints each probe's test top-1 beside the L-BFGS
probe's chosen l2 and its accuracy on held-out training images. This is the check that
a probe "fitted to convergence" does at least as well as the paper's Adam probe on real
features, which random tiny models cannot show.

  pip install ai-edge-litert  # the LiteRT interpreter, only for this benchmark
  python benchmarks/probe_solvers.py --root ../shared/realdata/imagenette10 \
      --tflite ../shared/realdata/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite

`--root` is an image folder `ROOT/{train,val}/<class>/*.jpg`; `--tflite` an embedding
extractor with one uint8 [1, S, S, 3] input and one [1, ..., dim] output (quantised or
float). About 11 minutes for 2,000 training images on a 2-core CPU (two Adam
learning rates and L-BFGS).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile

import ml_collections
import numpy as np

from rrjax import config as config_lib
from rrjax import stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TFLiteTeacher:
  """A `.tflite` image encoder with the plug-in teacher interface (`rrjax.teachers.plugin`):
  uint8 RGB images in (the model normalises them itself), dequantised float32 out."""

  def __init__(self, path: str, num_threads: int):
    from ai_edge_litert.interpreter import Interpreter
    self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
    (self._input,), (self._output,) = (self._interpreter.get_input_details(),
                                       self._interpreter.get_output_details())
    if self._input["dtype"] != np.uint8 or self._input["shape"][1] != self._input["shape"][2]:
      raise ValueError(f"teacher.name={path!r}: needs one uint8 [1, S, S, 3] input, has "
                       f"{self._input['dtype'].__name__} {list(self._input['shape'])}.")
    self.image_size = int(self._input["shape"][1])
    self.dim = int(np.prod(self._output["shape"][1:]))
    with open(path, "rb") as f:
      self.fingerprint = "tflite:" + hashlib.sha256(f.read()).hexdigest()
    self._batch = 0

  def embed(self, images: np.ndarray) -> np.ndarray:
    if len(images) != self._batch:  # The interpreter's batch size is fixed until resized.
      self._interpreter.resize_tensor_input(self._input["index"], [len(images),
                                                                   *self._input["shape"][1:]])
      self._interpreter.allocate_tensors()
      self._batch = len(images)
    self._interpreter.set_tensor(self._input["index"], np.ascontiguousarray(images))
    self._interpreter.invoke()
    out = self._interpreter.get_tensor(self._output["index"]).reshape(len(images), self.dim)
    scale, zero_point = self._output["quantization"]
    return ((out.astype(np.float32) - zero_point) * scale if scale else
            out.astype(np.float32))


def tflite_teacher(cfg) -> TFLiteTeacher:
  """The plug-in factory: `teacher.name` is the `.tflite` file."""
  return TFLiteTeacher(cfg.name, num_threads=os.cpu_count() or 1)


def add_real_photo_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of every benchmark on real photos: the folder, the teacher, the mask's p,
  the test draws, the seed, the view-cutting workers and where to keep the workdirs."""
  parser.add_argument("--root", required=True, help="image folder ROOT/{train,val}/<class>/")
  parser.add_argument("--tflite", required=True, help="the teacher's .tflite file")
  parser.add_argument("--p", type=float, default=0.9, help="mask operator's p")
  parser.add_argument("--repeats", type=int, default=3, help="test corruption draws")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_workers", type=int, default=2)
  parser.add_argument("--keep", default="", help="keep the workdirs under this directory")


def on_real_photos(config: ml_collections.ConfigDict, args) -> None:
  """Points the unlocked `config` at the folder and `.tflite` teacher of `args` (flags of
  `add_real_photo_arguments`), with their seed and test draws."""
  config.seed = args.seed
  config.data.update(source="folder", root=os.path.abspath(args.root), name="realdata",
                     wnids="", eval_split="val", num_workers=args.num_workers)
  config.teacher.update(kind="python", name=os.path.abspath(args.tflite),
                        factory="probe_solvers:tflite_teacher")
  config.eval.repeats = args.repeats


def probe_config(solver: str, learning_rate: float | None, args) -> ml_collections.ConfigDict:
  """The no_contrastive config on the folder and teacher of `args`; `learning_rate` is
  the Adam probe's (None for L-BFGS, which has none)."""
  config = config_lib.load_config(os.path.join(
      REPO, f"configs/no_contrastive.py:features=teacher,p={args.p}"))
  with config.unlocked():
    on_real_photos(config, args)
    config.probe.solver = solver
    if learning_rate is not None:
      config.probe.learning_rate = learning_rate
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  add_real_photo_arguments(parser)
  parser.add_argument("--adam_learning_rates", nargs="+", type=float, default=[1e-3, 1e-2],
                      help="one Adam probe per learning rate (the paper's is 1e-3)")
  args = parser.parse_args()
  root = args.keep or tempfile.mkdtemp(prefix="probe_solvers_")
  lines = ["| probe | test top-1 (%) | chosen l2 | held-out top-1 (%) | training features |",
           "| --- | --- | --- | --- | --- |"]
  runs = [("adam", lr, f"adam_{lr:g}") for lr in args.adam_learning_rates]
  for solver, learning_rate, name in [*runs, ("lbfgs", None, "lbfgs")]:
    workdir = os.path.join(root, name)
    stages.run_stages(probe_config(solver, learning_rate, args), workdir)
    with open(os.path.join(workdir, "results.json")) as f:
      (row,) = json.load(f)["results"]
    with open(os.path.join(workdir, "probe", "done.json")) as f:
      fit = json.load(f)["summary"]["fractions"]["1"]
    selection = (f"{row['l2']:.3g} | {row['holdout_top1']:.1f}" if solver == "lbfgs"
                 else "– | –")
    lines.append(f"| {name.replace('_', ' lr ')} | {row['top1']['mean']:.1f} ± "
                 f"{row['top1']['sem']:.1f} | {selection} | {fit.get('num_features', '–')} |")
  print(f"teacher {os.path.basename(args.tflite)} on {args.root}, mask p={args.p}, "
        f"{args.repeats} test draws (workdirs in {root}):")
  print("\n".join(lines))


if __name__ == "__main__":
  main()

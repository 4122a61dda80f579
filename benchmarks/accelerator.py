"""One accelerator benchmark: every throughput the GPU/TPU numbers need, in one JSON file.

  python benchmarks/accelerator.py --out results/accelerator_h100.json     # one GPU, < 8 min
  python benchmarks/accelerator.py --quick --out tmp/accelerator.json      # CPU, < 1 min
  python benchmarks/accelerator.py --sections student e2e                  # some sections

Sections (each records device kind and count, jax version, date, dtype and its own wall
time; one that fails records its error and the others still run):
- "student": the student's training step (cached teacher targets, mask p=0.9), images/s
  and MFU (where the device's peak is in `rrjax.train.PEAK_FLOPS`; the compiled step's
  `cost_analysis()` FLOPs are one device's share) for resnet50, resnet101, the paper's
  CLIP RN101 student and CLIP ViT-B/32, at batch 128 and 256 (`train_step.py`'s code);
- "teacher": random CLIP ViT-B/32 and ViT-L/14 image towers (`common.RandomCLIPTower`):
  the forward alone, host decode + crop, and the teacher-cache build, images/s
  (`teacher_cache.py`'s code);
- "pipeline": the training loader (decode + random-resized-crop + batch, 224 px) with
  `os.cpu_count()` workers, images/s and images per CPU-second (`input_pipeline.py`);
- "e2e": a real `python -m rrjax.main` run (stages cache + student, a ResNet-50 student,
  a random ViT-B/32 teacher plugged in through `teacher.factory`) on a generated image
  folder of ImageNet-sized JPEGs: the training loop's window-averaged images/s and input
  wait from its metrics.jsonl, against the step alone (the student section's number for
  the same student, batch and size; else that run's step compiled here, as
  `loop_overhead.py` does).
All compute in --dtype (bfloat16 by default). --quick shrinks everything to CPU size
(32 px, batch 8, tiny towers, 16 images). Prints a table at the end.

  python benchmarks/accelerator.py --plan --out results/plan.json           # no device

--plan runs nothing on a device: for the paper's two RN101 students, CLIP ViT-B/32 and
ViT-L/14 at 224 px in --dtype, it compiles one device's training step (cached targets,
mask p=0.9, AdamW) here at two batch sizes and prints what a user needs before renting
an accelerator: training FLOPs per image (XLA's cost analysis), parameter,
optimizer-state and activation bytes per device (the compiled step's memory analysis),
and the largest per-device batch (a multiple of 8) whose step fits --device_gb. These
are computed on this machine's XLA, not measured on an accelerator: XLA:GPU and TPU fuse
and schedule differently, so treat the batch as an estimate and leave headroom.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if HERE not in sys.path:  # common, train_step, ... when imported as a teacher factory.
  sys.path.insert(0, HERE)
# The e2e section's `rrjax.main` child shares the accelerator with this process: neither
# may take 75% of its memory up front (JAX's default).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402
import input_pipeline  # noqa: E402
import loop_overhead  # noqa: E402
import teacher_cache  # noqa: E402
import train_step  # noqa: E402
from rrjax import config as config_lib  # noqa: E402
from rrjax import models, objectives, operators, sharding, stages, train  # noqa: E402
from rrjax.cache import TeacherForward, build_cache  # noqa: E402
from rrjax.data import pipeline, sources, synthetic, views, workers  # noqa: E402
from rrjax.models import clip, resnet  # noqa: E402
from rrjax.teachers import validate_teacher  # noqa: E402

SECTIONS = ("student", "teacher", "pipeline", "e2e")
OPERATOR = {"kind": "mask", "p": 0.9}
# --plan's students at 224 px and the two per-device batches whose compiled steps give
# the fixed and the per-image bytes.
PLAN = dict(image_size=224, students=("resnet101", "clip_rn101", "clip_vit_b32",
                                      "clip_vit_l14"), batch_sizes=(8, 16))
PLAN_QUICK = dict(image_size=32, students=("clip_rn101", "clip_vit_b32"), batch_sizes=(8, 16))


def vit_l14(image_size: int = 224) -> clip.CLIPSpec:
  """CLIP ViT-L/14's image tower (embedding dim 768)."""
  return clip.CLIPSpec(embed_dim=768, vision=clip.VisionSpec(
      kind="vit", image_size=image_size, width=1024, layers=24, heads=16, patch_size=14,
      mlp_dim=4096), text=None)


def tower_spec(name: str, image_size: int) -> clip.CLIPSpec:
  """Full-size towers ("rn101", "vit_b32", "vit_l14") or the test-sized ones ("tiny_rn",
  "tiny_vit", `clip.tiny_spec`)."""
  if name == "vit_l14":
    return vit_l14(image_size)
  if name in ("tiny_rn", "tiny_vit"):
    return clip.tiny_spec("resnet" if name == "tiny_rn" else "vit", image_size)
  return common.clip_spec(name, image_size)


def random_tower(name: str, dtype: str = "float32", image_size: int = 224):
  """`common.RandomCLIPTower` for any tower of `tower_spec`."""
  return common.RandomCLIPTower(name, dtype, image_size, spec=tower_spec(name, image_size))


def teacher_factory(cfg):
  """`teacher.kind="python"`, `teacher.factory="accelerator:teacher_factory"`,
  `teacher.name="<tower>:<px>"` (e.g. "vit_b32:224"): a random tower, no download."""
  name, _, px = cfg.name.partition(":")
  return random_tower(name, cfg.get("dtype", "float32"), int(px or 224))


# Sizes of the full (one GPU, < 8 min) and --quick (CPU, < 1 min) runs.
FULL = dict(image_size=224, students=("resnet50", "resnet101", "clip_rn101", "clip_vit_b32"),
            student_towers={}, batch_sizes=(128, 256), teachers=("vit_b32", "vit_l14"),
            teacher_batch=256, forward_batches=10, num_images=1024, image_px=440,
            pipeline_batch=256, pipeline_batches=3, e2e_student="resnet50", e2e_width=64,
            e2e_teacher="vit_b32", e2e_batch=128, e2e_epochs=6, e2e_log_every=8)
QUICK = dict(image_size=32, students=("clip_vit_b32",),
             student_towers={"rn101": "tiny_rn", "vit_b32": "tiny_vit"}, batch_sizes=(8,),
             teachers=("tiny_vit", "tiny_rn"), teacher_batch=8, forward_batches=2,
             num_images=16, image_px=40, pipeline_batch=8, pipeline_batches=2,
             e2e_student="clip_vit_b32", e2e_width=8, e2e_teacher="tiny_vit", e2e_batch=8,
             e2e_epochs=3, e2e_log_every=2)


def device_fields(dtype: str) -> dict:
  devices = jax.devices()
  return {"device_kind": devices[0].device_kind, "device_count": len(devices),
          "backend": jax.default_backend(), "jax_version": jax.__version__,
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "dtype": dtype}


def image_folder(root: str, sizes: dict) -> str:
  """`root/{train,val}/<class>/*.jpg`: `num_images` training JPEGs with sides around
  `image_px` (440: 330-550, ImageNet-sized), 4 validation ones per class."""
  if not os.path.isdir(os.path.join(root, "train")):
    synthetic.make_image_folder(root, num_classes=4, per_class=-(-sizes["num_images"] // 4),
                                splits=("train",), size=sizes["image_px"], seed=0)
    synthetic.make_image_folder(root, num_classes=4, per_class=1, splits=("val",),
                                size=sizes["image_px"], seed=1)
  return root


def student_section(args, sizes: dict, workdir: str, finished: dict) -> dict:
  mesh = sharding.make_mesh()
  peak = train.PEAK_FLOPS.get(jax.devices()[0].device_kind, 0.0)
  operator = operators.build(OPERATOR)
  size = sizes["image_size"]
  towers = functools.cache(lambda name: random_tower(sizes["student_towers"].get(name, name),
                                                  args.dtype, size))
  rows = []
  for name in args.students or sizes["students"]:
    dim = towers(train_step.CLIP_STUDENTS[name]).dim if name in train_step.CLIP_STUDENTS else 512
    module, variables = train_step.make_student(name, dim, size, args.dtype, towers)
    for batch_size in sizes["batch_sizes"]:
      rng = np.random.default_rng(0)
      batch = sharding.shard_batch(
          {"image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
           "target": rng.normal(size=(batch_size, dim)).astype(np.float32)}, mesh)
      seconds, flops = train_step.step_seconds(module, variables, operator, batch, mesh)
      rows.append({"student": name, "batch_size": batch_size, "image_size": size,
                   "step_seconds": seconds, "images_per_s": batch_size / seconds,
                   "flops_per_device": flops,
                   "mfu": flops / seconds / peak if peak and flops else None})
      print(f"  student {name} batch {batch_size}: {batch_size / seconds:.1f} img/s",
            flush=True)
  return {"operator": OPERATOR, "peak_flops_per_device": peak or None, "results": rows}


def teacher_section(args, sizes: dict, workdir: str, finished: dict) -> dict:
  source = sources.ImageFolderSource(image_folder(os.path.join(workdir, "images"), sizes),
                                     "train")
  num_workers = os.cpu_count()
  rows = []
  for name in sizes["teachers"]:
    teacher = validate_teacher(random_tower(name, args.dtype, sizes["image_size"]),
                               f"random {name}", online=True)
    spec = views.ViewSpec(size=teacher.image_size, resize_size=teacher.image_size * 256 // 224)
    forward = TeacherForward(teacher, sharding.make_mesh(jax.local_devices()))
    forward_rate = teacher_cache.forward_images_per_s(
        forward, sizes["teacher_batch"], teacher.image_size, sizes["forward_batches"])
    host_rate = teacher_cache.host_images_per_s(source, spec, num_workers)
    report = build_cache(teacher, source, os.path.join(workdir, f"cache_{name}"),
                         view_spec=spec, views=[1], seed=0, batch_size=sizes["teacher_batch"],
                         dataset={"name": "accelerator"}, forward=forward,
                         num_workers=num_workers, overwrite=True)
    rows.append({"teacher": name, "image_size": teacher.image_size, "dim": teacher.dim,
                 "batch_size": sizes["teacher_batch"], "num_images": len(source),
                 "forward_images_per_s": forward_rate, "host_images_per_s": host_rate,
                 "cache_build_images_per_s": report.images_per_s,
                 "build_over_forward": report.images_per_s / forward_rate})
    print(f"  teacher {name}: forward {forward_rate:.1f}, build {report.images_per_s:.1f} "
          "img/s", flush=True)
  return {"num_workers": num_workers, "results": rows}


def pipeline_section(args, sizes: dict, workdir: str, finished: dict) -> dict:
  source = sources.ImageFolderSource(image_folder(os.path.join(workdir, "images"), sizes),
                                     "train")
  num_workers = os.cpu_count()
  size = sizes["image_size"]
  spec = views.ViewSpec(size=size, resize_size=size * 256 // 224)
  with workers.ViewCutter(source, spec, 0, num_workers) as cutter:
    loader = pipeline.TrainLoader(source, global_batch_size=sizes["pipeline_batch"], view=spec,
                                  num_views=10, seed=0, process_index=0, process_count=1,
                                  cutter=cutter)
    try:
      wall, cpu, images = input_pipeline._measure(loader, cutter, sizes["pipeline_batches"])
    finally:
      loader.close()
  return {"num_workers": num_workers, "image_size": size, "batch_size": sizes["pipeline_batch"],
          "images": images, "images_per_s": images / wall, "images_per_cpu_s": images / cpu}


def e2e_overrides(sizes: dict, root: str, dtype: str, workdir: str) -> dict:
  """`--config.*` of the e2e run. A ResNet student is randomly initialised; --quick's
  "clip_vit_b32" is the tiny CLIP ViT (`clip.create_tiny_clip`, the student section's
  tiny tower) initialised from its checkpoint, as `student.model="clip"` is."""
  size = sizes["image_size"]
  student = {"student.model": sizes["e2e_student"], "student.init": "random"}
  if sizes["e2e_student"] == "clip_vit_b32":
    if sizes["image_size"] != 32 or sizes["e2e_teacher"] != "tiny_vit":
      raise ValueError("a CLIP e2e student needs a checkpoint: only --quick's tiny one.")
    checkpoint = os.path.join(workdir, "tiny_clip_vit")
    if not os.path.isdir(checkpoint):
      clip.create_tiny_clip(checkpoint, vision="vit", image_size=32)
    student = {"student.model": "clip", "student.init": "teacher",
               "student.teacher_name": checkpoint}
  return {
      "stages": '("cache","student")', "data.source": "folder", "data.name": "accelerator",
      "data.root": root, "data.wnids": "", "data.eval_split": "val",
      "data.image_size": size, "data.resize_size": size * 256 // 224,
      "data.num_workers": os.cpu_count(), "teacher.kind": "python",
      "teacher.factory": "accelerator:teacher_factory",
      "teacher.name": f"{sizes['e2e_teacher']}:{size}", "teacher.dtype": dtype,
      "cache.num_views": sizes["e2e_epochs"], "cache.batch_size": sizes["e2e_batch"],
      **student, "student.width": sizes["e2e_width"], "student.dtype": dtype,
      "batch_size": sizes["e2e_batch"], "num_epochs": sizes["e2e_epochs"],
      "log_every_steps": sizes["e2e_log_every"], "checkpoint_every_steps": 10**9}


def e2e_section(args, sizes: dict, workdir: str, finished: dict) -> dict:
  root = image_folder(os.path.join(workdir, "images"), sizes)
  run_dir = os.path.join(workdir, f"e2e_{time.time_ns()}")
  overrides = e2e_overrides(sizes, root, args.dtype, workdir)
  config_path = os.path.join(REPO, "configs", "mask.py")
  command = [sys.executable, "-m", "rrjax.main", f"--config={config_path}",
             f"--workdir={run_dir}", *(f"--config.{k}={v}" for k, v in overrides.items())]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (HERE, REPO, os.environ.get("PYTHONPATH", "")) if p),
      RRJAX_COMPILATION_CACHE=os.path.join(workdir, "xla_cache"))
  start = time.perf_counter()
  done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
  run_seconds = time.perf_counter() - start
  if done.returncode:
    raise RuntimeError(f"rrjax.main exited {done.returncode}: {done.stderr[-3000:]}")
  steps, loop_seconds, waiting = loop_overhead.loop_windows(run_dir)
  records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
  windows = [r for r in records if "student/images_per_sec" in r]
  # Windows after the first (which holds the warm-up steps), weighted by their images.
  later = [(now["step"] - before["step"], now["student/images_per_sec"])
           for before, now in zip(windows, windows[1:])]
  later_rate = (sum(n for n, _ in later) / sum(n / rate for n, rate in later)
                if later else None)
  last = windows[-1]

  batch_size = sizes["e2e_batch"]
  loop_rate = steps * batch_size / loop_seconds
  alone_rate, alone_source = step_alone_rate(args, sizes, overrides, config_path, run_dir,
                                             steps, finished)
  return {"student": sizes["e2e_student"], "teacher": overrides["teacher.name"],
          "batch_size": batch_size, "image_size": sizes["image_size"],
          "num_images": sizes["num_images"], "epochs": sizes["e2e_epochs"],
          "num_workers": os.cpu_count(), "timed_steps": steps,
          "images_per_s": loop_rate,
          "images_per_s_after_first_window": later_rate,
          "last_window_images_per_s": last["student/images_per_sec"],
          "windows": [{k: r[k] for k in r if k == "step" or k.startswith("student/")}
                      for r in windows],
          "input_wait_fraction": waiting / loop_seconds,
          "step_alone_images_per_s": alone_rate, "step_alone_from": alone_source,
          "loop_over_step": loop_rate / alone_rate,
          "loop_over_step_after_first_window": later_rate / alone_rate if later_rate else None,
          "run_seconds": run_seconds, "workdir": run_dir}


def same_step(sizes: dict, student: dict | None) -> float | None:
  """images/s of the e2e run's student at its batch and size in the student section's
  results (`student`: that section, or None), else None."""
  for row in (student or {}).get("results", ()):
    if (row["student"], row["batch_size"], row["image_size"]) == (
        sizes["e2e_student"], sizes["e2e_batch"], sizes["image_size"]):
      return row["images_per_s"]
  return None


def step_alone_rate(args, sizes, overrides, config_path, run_dir, steps,
                    finished: dict) -> tuple[float, str]:
  """(images/s, where from) of the e2e student's compiled step alone: the student
  section's number for the same student, batch and size when it ran, else the run's own
  step compiled here on a batch of its loader (loop_overhead.py's code)."""
  known = same_step(sizes, finished.get("student"))
  if known:
    return known, "student section"
  config = config_lib.load_config(config_path)
  config.unlock()
  for key, value in overrides.items():
    parent, _, field = key.rpartition(".")
    target = config_lib.get_field(config, parent) if parent else config
    target[field] = ("cache", "student") if key == "stages" else value
  ctx = stages.Context(config=config, workdir=run_dir, mesh=sharding.make_mesh())
  _, batch = loop_overhead.loader_alone(ctx, batches=1)
  ctx.close()  # The loader's worker processes.
  alone = loop_overhead.step_alone(ctx, batch, repeats=max(3, min(steps, 20)))
  return sizes["e2e_batch"] / alone, "compiled here"


def write_json(path: str, results: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=2)


RUNNERS = {"student": student_section, "teacher": teacher_section,
           "pipeline": pipeline_section, "e2e": e2e_section}


def table(results: dict) -> str:
  lines = [f"{'section':9s} {'what':34s} {'images/s':>10s}  notes"]
  for name, section in results["sections"].items():
    if section.get("error"):
      lines.append(f"{name:9s} {'ERROR':34s} {'':>10s}  {section['error'].splitlines()[-1]}")
      continue
    if name == "student":
      for r in section["results"]:
        mfu = f"MFU {100 * r['mfu']:.1f}%" if r["mfu"] else "MFU n/a"
        lines.append(f"{name:9s} {r['student'] + ' b' + str(r['batch_size']):34s} "
                     f"{r['images_per_s']:10.1f}  {mfu}")
    elif name == "teacher":
      for r in section["results"]:
        lines.append(f"{name:9s} {r['teacher'] + ' forward':34s} "
                     f"{r['forward_images_per_s']:10.1f}")
        lines.append(f"{name:9s} {r['teacher'] + ' cache build':34s} "
                     f"{r['cache_build_images_per_s']:10.1f}  {r['build_over_forward']:.2f} of "
                     f"forward; host decode {r['host_images_per_s']:.1f}")
    elif name == "pipeline":
      what = f"train loader, {section['num_workers']} workers"
      lines.append(f"{name:9s} {what:34s} "
                   f"{section['images_per_s']:10.1f}  {section['images_per_cpu_s']:.1f} per "
                   "CPU-second")
    elif name == "e2e":
      what = f"{section['student']} b{section['batch_size']} loop"
      lines.append(f"{name:9s} {what:34s} "
                   f"{section['images_per_s']:10.1f}  {section['loop_over_step']:.2f} of the "
                   f"step alone ({section['step_alone_images_per_s']:.1f}); input wait "
                   f"{100 * section['input_wait_fraction']:.1f}%; after the first window "
                   f"{section['images_per_s_after_first_window'] or 0:.1f}")
  return "\n".join(lines)


def plan_student(name: str, image_size: int, dtype: str, towers: dict):
  """(module, variable shapes, embedding dim) of a --plan student, without weights."""
  compute = models.parse_dtype(dtype, "--dtype")
  if name.startswith("clip_"):  # The tower's own architecture, no extra head.
    tower = name[len("clip_"):]
    spec = tower_spec(towers.get(tower, tower), image_size)
    module, dim = clip.CLIPImageEncoder(spec, compute), spec.embed_dim
  else:
    module, dim = resnet.resnet(name, 512, compute), 512
  shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  return module, shapes, dim


def step_analysis(module, shapes: dict, dim: int, batch_size: int, image_size: int) -> dict:
  """FLOPs and memory of one device's compiled training step (the program `train.fit`
  runs) at `batch_size`, compiled for this machine's first device."""
  mesh = sharding.make_mesh(jax.devices()[:1])
  replicated = sharding.replicated(mesh)
  tx = train.make_optimizer(learning_rate=1e-4, total_steps=1000, weight_decay=1e-4)
  state = jax.eval_shape(lambda: train.create_state(
      shapes["params"], {k: v for k, v in shapes.items() if k != "params"}, tx))
  loss_fn = objectives.student_loss(module, operators.build(OPERATOR), kind="student_teacher",
                                    temperature=0.1)
  step = train.jitted_step(loss_fn, jax.tree.map(lambda _: replicated, state), mesh)
  batch = {"image": jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.uint8),
           "target": jax.ShapeDtypeStruct((batch_size, dim), jnp.float32)}
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch, jax.random.key(0), None,
                          jax.ShapeDtypeStruct((1,), jnp.bool_)).compile()
  memory = compiled.memory_analysis()
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  return {"flops": float(compiled.cost_analysis()["flops"]),
          "parameter_bytes": nbytes(state.params), "optimizer_bytes": nbytes(state.opt_state),
          "model_state_bytes": nbytes(state.model_state),
          "activation_bytes": memory.temp_size_in_bytes,
          # Inputs and outputs alive together, less the donated state they share.
          "peak_bytes": (memory.argument_size_in_bytes + memory.output_size_in_bytes
                         - memory.alias_size_in_bytes + memory.temp_size_in_bytes)}


def largest_batch(small: tuple[int, int], large: tuple[int, int], budget: float) -> int:
  """The largest multiple of 8 whose peak bytes fit `budget`, on the line through the
  (batch, peak bytes) points `small` and `large` (the step's bytes are affine in the
  batch: fixed state plus activations per image)."""
  per_image = (large[1] - small[1]) / (large[0] - small[0])
  fixed = small[1] - per_image * small[0]
  return max(0, int((budget - fixed) // per_image) // 8 * 8)


def plan(args) -> dict:
  sizes = PLAN_QUICK if args.quick else PLAN
  towers = QUICK["student_towers"] if args.quick else {}
  size, (small, large) = sizes["image_size"], sizes["batch_sizes"]
  budget = args.device_gb * 1e9
  rows = []
  for name in sizes["students"]:
    start = time.perf_counter()
    module, shapes, dim = plan_student(name, size, args.dtype, towers)
    at_small, at_large = (step_analysis(module, shapes, dim, b, size) for b in (small, large))
    # Slopes between the two batches: per image, without the per-step optimizer update.
    slope = lambda field: (at_large[field] - at_small[field]) / (large - small)
    rows.append({
        "student": name, "image_size": size, "dtype": args.dtype,
        "train_flops_per_image": slope("flops"),
        "parameter_bytes": at_large["parameter_bytes"],
        "optimizer_bytes": at_large["optimizer_bytes"],
        "model_state_bytes": at_large["model_state_bytes"],
        "activation_bytes_per_image": slope("activation_bytes"),
        "steps_compiled_at": {str(small): at_small, str(large): at_large},
        "largest_batch_per_device": largest_batch((small, at_small["peak_bytes"]),
                                                  (large, at_large["peak_bytes"]), budget),
        "seconds": time.perf_counter() - start})
    print(f"  {name}: {plan_line(rows[-1])}", flush=True)
  return {**device_fields(args.dtype), "quick": args.quick, "device_gb": args.device_gb,
          "computed_on": jax.devices()[0].platform, "results": rows}


def plan_line(row: dict) -> str:
  return (f"{row['train_flops_per_image'] / 1e9:.1f} GFLOP/image, params "
          f"{row['parameter_bytes'] / 2**20:.0f} MiB, optimizer "
          f"{row['optimizer_bytes'] / 2**20:.0f} MiB, activations "
          f"{row['activation_bytes_per_image'] / 2**20:.1f} MiB/image, largest batch "
          f"{row['largest_batch_per_device']}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="accelerator.json")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--quick", action="store_true", help="CPU-sized, under a minute")
  parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
  parser.add_argument("--students", nargs="+", default=None,
                      help="student section's students (default: the four of the paper)")
  parser.add_argument("--workdir", default="", help="generated images, caches, runs")
  parser.add_argument("--plan", action="store_true",
                      help="no device: FLOPs, bytes and the largest batch per device")
  parser.add_argument("--device_gb", type=float, default=80.0,
                      help="--plan: one device's memory in GB (1e9 bytes)")
  args = parser.parse_args()
  if args.plan:
    results = plan(args)
    write_json(args.out, results)
    print(f"computed on {results['computed_on']} for {args.dtype}, {args.device_gb:g} GB per "
          f"device; {args.out}")
    return
  sizes = QUICK if args.quick else FULL
  workdir = args.workdir or tempfile.mkdtemp(prefix="rrjax_accelerator_")
  if jax.default_backend() != "cpu":  # Each step is compiled twice (cost analysis, timing).
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
  total = time.perf_counter()
  results = {**device_fields(args.dtype), "quick": args.quick, "host_cpus": os.cpu_count(),
             "sections": {}}
  for name in args.sections:
    print(f"[{name}]", flush=True)
    start = time.perf_counter()
    section = device_fields(args.dtype)
    try:
      section.update(RUNNERS[name](args, sizes, workdir, results["sections"]))
      section["error"] = None
    except Exception:  # Recorded; the other sections still run.
      section["error"] = traceback.format_exc()
      print(section["error"], file=sys.stderr, flush=True)
    section["wall_seconds"] = time.perf_counter() - start
    results["sections"][name] = section
  results["wall_seconds"] = time.perf_counter() - total
  write_json(args.out, results)
  print(f"{results['device_count']} x {results['device_kind']}, jax {results['jax_version']}, "
        f"{args.dtype}{', quick' if args.quick else ''}; {results['wall_seconds']:.0f} s; "
        f"{args.out}")
  print(table(results))


if __name__ == "__main__":
  main()

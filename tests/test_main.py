"""`python -m rrjax.main` end to end on generated data with a tiny random CLIP teacher:
the whole pipeline, kill-and-resume to identical parameters, and bad input refused
before anything compiles."""

import concurrent.futures
import glob
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from rrjax import config as config_lib
from rrjax import preflight, smoke, stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "mask.py") + ":smoke"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("smoke_assets")
  environment = dict(os.environ, RRJAX_SMOKE_DIR=str(root))
  os.environ["RRJAX_SMOKE_DIR"] = str(root)  # For configs built in this process too.
  return environment


def _command(workdir, *overrides):
  return [sys.executable, "-m", "rrjax.main", f"--config={SMOKE}", f"--workdir={workdir}",
          *overrides]


@pytest.fixture(scope="module")
def full_run(env, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  done = subprocess.run(_command(workdir), env=env, capture_output=True, text=True, cwd=REPO)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir, done


def _student_params(workdir):
  directory = workdir / "student" / "checkpoints"
  last = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  restored = ocp.PyTreeCheckpointer().restore(str(directory / str(last) / "state"))
  return last, restored["params"]


@pytest.mark.numerics  # Learning on a handful of images, on every instruction set.
def test_pipeline_end_to_end(full_run):
  workdir, done = full_run
  report = json.loads((workdir / "results.json").read_text())
  rows = {(r["evaluator"], r["method"], r["operator"]): r for r in report["results"]}
  trained = rows["agreement", "agreement", "mask p=0.9"]
  initial = rows["agreement", "agreement_initial", "mask p=0.9"]
  # The student starts as the teacher (the paper's setting) and learns to map corrupted
  # images to the teacher's clean embeddings: agreement on held-out corrupted images rises
  # above the teacher's own on them. The cosine is a mean over 96 images x 2 draws and
  # rises by about 0.25 (seen on AVX, AVX2 and AVX-512 CPUs): a margin of 0.02 holds on
  # any CPU. Retrieval@1 among 96 images stays near chance (1/96) for this tiny random
  # teacher, a count of 0-3 hits that rounding alone can move, so only its range is
  # checked here; tests/test_evaluate.py checks its arithmetic.
  assert trained["cosine"]["mean"] > initial["cosine"]["mean"] + 0.02, (trained, initial)
  for row in (trained, initial):
    assert 0 <= row["retrieval_at_1"]["mean"] <= 1, row
  probe = rows["classification", "student_probe", "mask p=0.9"]
  assert probe["top1"]["mean"] > 40 and probe["solver"] == "adam"  # 4 classes: chance 25%.
  # Zero-shot side by side: the student and the teacher on corrupted images, and the
  # teacher's clean ceiling once.
  assert {k for k in rows if k[0] == "zero_shot"} == {
      ("zero_shot", "zero_shot", "mask p=0.9"), ("zero_shot", "zero_shot_teacher", "mask p=0.9"),
      ("zero_shot", "zero_shot_teacher_clean", "identity")}
  assert len(report["results"]) == 6
  for name in ("config.json", "versions.json", "results.md", "metrics.jsonl"):
    assert (workdir / name).exists(), name
  assert os.listdir(workdir / "tensorboard")
  for stage in ("cache", "student", "probe", "eval"):
    assert json.loads((workdir / stage / "done.json").read_text())["seconds"] > 0
  assert "| ours | 1 | adam | mask p=0.9 |" in done.stdout
  # A console for people: a line per stage and where things are; library INFO logs only
  # in log.txt (absl's format starts "I<month><day> ").
  assert "[2/4] student: trains the clip student on mask p=0.9" in done.stdout
  assert f"tensorboard --logdir {workdir / 'tensorboard'}" in done.stdout
  assert not re.search(r"^I\d{4} ", done.stderr, re.M), done.stderr[:2000]
  assert (done.stdout + done.stderr).count("\n") < 60  # Bars redraw with \r, not \n.
  log = (workdir / "log.txt").read_text()
  assert "checkpoint_manager.py" in log and "[4/4] eval:" in log
  versions = json.loads((workdir / "versions.json").read_text())
  assert versions["jax"] == importlib.metadata.version("jax")
  assert versions["tokenizers"] == importlib.metadata.version("tokenizers")


def test_rerun_skips_finished_stages(full_run, env):
  workdir, _ = full_run
  before = (workdir / "results.json").read_text()
  done = subprocess.run(_command(workdir), env=env, capture_output=True, text=True, cwd=REPO)
  assert done.returncode == 0, done.stderr[-3000:]
  assert (workdir / "results.json").read_text() == before
  assert "[1/4] cache: finished before, skipped" in done.stdout


def _logged_steps(workdir, prefix="student/"):
  path = workdir / "metrics.jsonl"
  lines = path.read_text().splitlines() if path.exists() else []
  return [r["step"] for r in map(json.loads, lines) if any(k.startswith(prefix) for k in r)]


def _wait_for_step(process, workdir, step, timeout=300):
  """Waits until the run logged training step `step` or later (it logs every 5)."""
  deadline = time.time() + timeout
  while max(_logged_steps(workdir), default=0) < step:
    assert process.poll() is None, "the run ended before the step to interrupt it at"
    assert time.time() < deadline, f"no step {step} within {timeout} s"
    time.sleep(0.05)


def _descendants(pid):
  """Process ids of every descendant of `pid` (Linux /proc)."""
  children = {}
  for stat in glob.glob("/proc/[0-9]*/stat"):
    try:
      fields = open(stat).read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
  found, todo = set(), [pid]
  while todo:
    for child in children.get(todo.pop(), []):
      found.add(child)
      todo.append(child)
  return found


def _running(pid):
  try:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def _shared_memory(pids):
  names = set()
  for pid in pids:
    try:
      names |= {line.split()[-1] for line in open(f"/proc/{pid}/maps") if "/dev/shm/" in line}
    except OSError:
      pass
  return names


@pytest.mark.numerics  # Exact resume, on every instruction set.
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads processes from /proc")
def test_sigkill_sigterm_and_resume_give_the_uninterrupted_parameters(full_run, env, tmp_path):
  """SIGKILL after a periodic checkpoint leaves no process or shared memory behind;
  SIGTERM later checkpoints the step in flight and says how to resume; the rerun ends
  with exactly the uninterrupted run's parameters."""
  reference_dir, _ = full_run
  # The stages up to the student are enough: the reference ran the same ones first.
  command = _command(tmp_path, '--config.stages=("cache","student")',
                     "--config.checkpoint_every_steps=10")
  start = lambda: subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
  killed = start()
  _wait_for_step(killed, tmp_path, 15)
  checkpoint = tmp_path / "student" / "checkpoints" / "10"
  while not checkpoint.exists():  # Saved asynchronously: committed once it has its name.
    assert killed.poll() is None
    time.sleep(0.05)
  helpers = _descendants(killed.pid)  # The view-cutting forkserver, workers, tracker.
  segments = _shared_memory(helpers)
  assert len(helpers) >= 3 and segments, (helpers, segments)
  killed.kill()
  killed.communicate()
  deadline = time.time() + 10
  while (any(map(_running, helpers)) or any(map(os.path.exists, segments))) and (
      time.time() < deadline):
    time.sleep(0.1)
  assert not [p for p in helpers if _running(p)] and not [
      s for s in segments if os.path.exists(s)], "left behind by a SIGKILLed run"

  stopped = start()
  _wait_for_step(stopped, tmp_path, 30)
  stopped.send_signal(signal.SIGTERM)
  stdout, stderr = stopped.communicate(timeout=60)
  assert stopped.returncode == 128 + signal.SIGTERM, stderr[-3000:]
  assert re.search(r"^student: resumed from step [12]0 ", stdout, re.M), stdout[-3000:]
  saved = re.search(r"stopped by SIGTERM; student saved step (\d+) of 48", stdout)
  assert saved and 30 <= int(saved[1]) < 48, stdout[-2000:]
  assert f"resume with the same command: python -m rrjax.main --config={SMOKE}" in stdout
  assert (tmp_path / "student" / "checkpoints" / saved[1]).is_dir()
  assert not (tmp_path / "student" / "done.json").exists()

  resumed = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
  assert resumed.returncode == 0, resumed.stderr[-12000:]
  assert f"student: resumed from step {saved[1]}" in resumed.stdout
  step, params = _student_params(tmp_path)
  reference_step, reference = _student_params(reference_dir)
  assert step == reference_step
  flat, reference_flat = (ocp.tree.to_flat_dict(p) for p in (params, reference))
  assert flat.keys() == reference_flat.keys()
  for key in flat:
    np.testing.assert_array_equal(flat[key], reference_flat[key], err_msg=str(key))


# Flag-time mistakes, each with what the message must name (the key, file or argument)
# and what it must offer instead (the nearest valid key, or the valid choices).
FLAG_ERRORS = {
    "unknown key": (["--config=configs/mask.py", "--config.frobnicate=1"],
                    ["--config.frobnicate", "batch_size, cache,"]),
    "misspelt key": (["--config=configs/mask.py", "--config.batchsize=8"],
                     ["--config.batchsize", "did you mean batch_size"]),
    "misspelt nested key": (["--config=configs/mask.py", "--config.probe.sover=adam"],
                            ["--config.probe.sover", "did you mean probe.solver"]),
    "missing file": (["--config=configs/nope.py"], ["configs/nope.py", "mask.py"]),
    "unknown config argument": (["--config=configs/mask.py:nonsense"],
                                ["'nonsense'", "'smoke'"]),
    "bad value": (["--config=configs/mask.py", "--config.batch_size=abc"],
                  ["--config.batch_size=abc", "--helpshort"]),
    "override first": (["--config.seed=1", "--config=configs/mask.py"],
                       ["--config.seed comes before --config=FILE"]),
}


def test_flag_time_errors_are_short_and_name_what_to_fix(tmp_path):
  """Each mistake ends in at most 3 lines and exit status 2, before any JAX work; the
  commands run side by side (each is an interpreter start and a config load)."""
  processes = {name: subprocess.Popen(
      [sys.executable, "-m", "rrjax.main", *args, f"--workdir={tmp_path / 'w'}"], cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for name, (args, _) in FLAG_ERRORS.items()}
  for name, process in processes.items():
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, (name, stderr[-2000:])
    assert stdout == "" and len(stderr.splitlines()) <= 3, (name, stderr[-2000:])
    assert stderr.startswith("error: "), (name, stderr)
    for text in FLAG_ERRORS[name][1]:
      assert text in stderr, (name, text, stderr)
  assert not (tmp_path / "w").exists()


def test_unknown_field_accepts_every_field_and_negated_booleans():
  config = config_lib.load_config(SMOKE)
  for field in ("seed", "probe.solver", "operator.p", "evals.zero_shot.templates",
                "noshard_params"):
    assert config_lib.unknown_field(config, field) is None, field
  assert "operator.kind is a value" in config_lib.unknown_field(config, "operator.kind.x")


def _smoke_config(**changes):
  config = config_lib.load_config(SMOKE)
  config.unlock()  # Values of other types (e.g. another operator) replace whole fields.
  for field, value in changes.items():
    parent = config_lib.get_field(config, field.rsplit(".", 1)[0]) if "." in field else config
    parent[field.rsplit(".", 1)[-1]] = value
  return config


@pytest.mark.parametrize("changes,field", [
    ({"data.root": "/no/such/data"}, "data.root"),
    ({"operator": {"kind": "mask", "p": 1.5}}, "p"),
    ({"operator": {"kind": "blur", "kernel_size": 4, "sigma": 1.0}}, "kernel_size"),
    ({"batch_size": 12}, "batch_size"),
    ({"stages": ("cache", "train")}, "stages"),
    ({"loss.kind": "cosine"}, "loss.kind"),
    ({"student.batch_norm": "sync"}, "student.batch_norm"),
])
def test_bad_config_fails_before_any_work_naming_the_field(env, changes, field):
  with pytest.raises(ValueError, match=field):
    config_lib.check_config(_smoke_config(**changes), num_devices=8)


def test_preflight_names_a_bad_compute_dtype(env, tmp_path):
  with pytest.raises(preflight.PreflightError, match=r"student.dtype='float64'.*'auto'"):
    preflight.preflight(_smoke_config(**{"student.dtype": "float64"}), str(tmp_path), 8)


def test_cache_of_another_config_is_refused_before_training(env, tmp_path):
  config = _smoke_config(stages=("cache",))
  stages.run_stages(config, str(tmp_path))
  other = _smoke_config(stages=("student",), seed=1)
  with pytest.raises(ValueError, match="seed"):
    stages.run_stages(other, str(tmp_path))
  assert not (tmp_path / "student").exists()


def test_preflight_checks_data_before_the_teacher_and_dry_run_only_plans(env, tmp_path):
  done = subprocess.run(
      _command(tmp_path / "run", "--config.data.root=/no/such/data",
               "--config.teacher.name=rrjax-test/not-downloaded"),
      env=dict(env, HF_HUB_OFFLINE="1"), capture_output=True, text=True, cwd=REPO)
  assert done.returncode == 2
  assert done.stderr.startswith("error: data.root='/no/such/data'"), done.stderr
  assert "Traceback" not in done.stderr
  done = subprocess.run(_command(tmp_path / "run", "--config.teacher.name=rrjax-test/absent",
                                 "--dry_run"), env=dict(env, HF_HUB_OFFLINE="1"),
                        capture_output=True, text=True, cwd=REPO)
  assert done.returncode == 2 and "hf download rrjax-test/absent" in done.stderr
  done = subprocess.run(_command(tmp_path / "plan", "--dry_run"), env=env,
                        capture_output=True, text=True, cwd=REPO)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "data: 96 training and 96 evaluation images, 4 classes" in done.stdout
  assert "stage student: 48 training steps in float32 (student.dtype=auto)" in done.stdout
  assert "input: views cut by 2 worker processes (data.num_workers=2;" in done.stdout
  assert sorted(os.listdir(tmp_path / "plan")) == ["log.txt"]  # Nothing else was done.


def test_a_stage_never_trains_what_it_needs_but_names_the_stage(env, tmp_path):
  config = _smoke_config(stages=("eval",))
  with pytest.raises(FileNotFoundError, match=r"'student' stage.*add 'student' to config.stages"):
    stages.run_stages(config, str(tmp_path))
  assert not (tmp_path / "student").exists()


def test_lbfgs_probe_on_another_runs_student(full_run, env, tmp_path):
  """probe.solver="lbfgs" fits a converged probe on the trained student's features, and
  the eval stage reports which solver produced each row."""
  workdir, _ = full_run
  config = _smoke_config(stages=("probe", "eval"), **{"student.restore_from": str(workdir),
                                                      "probe.solver": "lbfgs",
                                                      "eval.repeats": 2})
  config.evals = config_lib.evals("classification")
  stages.run_stages(config, str(tmp_path))
  summary = json.loads((tmp_path / "probe" / "done.json").read_text())["summary"]
  assert summary["solver"] == "lbfgs" and summary["fractions"]["1"]["l2"] > 0
  (row,) = json.loads((tmp_path / "results.json").read_text())["results"]
  assert (row["method"], row["solver"]) == ("student_probe", "lbfgs")
  assert row["top1"]["mean"] > 40


def test_smoke_assets_are_reused(env):
  first = smoke.assets()
  assert smoke.assets() == first
  assert os.path.isdir(os.path.join(first["data"], "train"))


def test_student_trains_at_a_lower_resolution_than_its_teacher(env, tmp_path, monkeypatch):
  """24 px student views, a 32 px teacher: the cache holds the teacher's embeddings of the
  same views cut at 32 px, and the student trains on its own, here with each device's
  BatchNorm statistics (`student.batch_norm`: the stage gives the loss the run's mesh)."""
  from rrjax import objectives
  meshes = []
  forward = objectives.training_forward
  monkeypatch.setattr(objectives, "training_forward",
                      lambda model, mesh=None: meshes.append(mesh) or forward(model, mesh))
  config = _smoke_config(stages=("cache", "student"), num_epochs=1,
                         **{"data.image_size": 24, "data.resize_size": 28,
                            "student.model": "resnet18", "student.init": "random",
                            "student.width": 8, "student.batch_norm": "per_device"})
  summaries = stages.run_stages(config, str(tmp_path))
  assert [mesh.devices.size for mesh in meshes] == [8]
  assert summaries["student"]["summary"]["final_metrics"]["loss"] > 0
  metadata = json.loads(next((tmp_path / "teacher_cache").rglob("cache.json")).read_text())
  assert metadata["fingerprint"]["preprocessing.size"] == 32


def test_cache_stage_compiles_the_teacher_once_for_both_caches(env, tmp_path, monkeypatch):
  """With an agreement evaluator the stage caches training and held-out views: one
  teacher program (same batch shape) serves both builds, so it is traced and compiled
  once, not once per cache."""
  config = _smoke_config(stages=("cache", "student", "eval"))
  assert "agreement" in config_lib.eval_types(config)
  from rrjax import objectives
  traces = []
  to_unit_range = objectives.to_unit_range  # The CLIP teacher's first step, run when traced.
  monkeypatch.setattr(objectives, "to_unit_range",
                      lambda images: traces.append(images.shape) or to_unit_range(images))
  ctx = stages.Context(config=config, workdir=str(tmp_path), mesh=None)
  summary = stages.cache.run(ctx)
  ctx.close()
  assert set(summary) == {"train", "eval"}
  assert len(traces) == 1  # Every batch of both caches reuses the one compiled program.


def _plug_in(config):
  config.teacher.kind, config.teacher.name = "python", ""
  config.teacher.factory = "support.plugin_teacher:make"
  config.data.wnids = "auto"  # A folder that is not ImageNet: its own classes, no override.
  return config


def test_an_embed_only_plug_in_teacher_runs_the_teacher_probe_end_to_end(env, tmp_path):
  """configs/no_contrastive.py:features=teacher (Table 13's baseline) with the README's
  minimal plug-in teacher, on the smoke folder (classes class_000...), without data.wnids."""
  config = config_lib.load_config(os.path.join(REPO, "configs", "no_contrastive.py")
                                  + ":smoke,features=teacher")
  config.unlock()
  config = _plug_in(config)
  config.probe.num_epochs, config.eval.repeats = 2, 1
  config_lib.check_config(config, num_devices=8)
  stages.run_stages(config, str(tmp_path))
  (row,) = json.loads((tmp_path / "results.json").read_text())["results"]
  assert row["method"] == "teacher_probe" and 0 <= row["top1"]["mean"] <= 100


def test_workdir_check_holds_for_processes_that_share_the_workdir(tmp_path):
  """The processes of a multi-host job check one workdir at the same time; with one shared
  probe file, one process's removal failed another's check (seen in test_multihost)."""
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda _: preflight._check_workdir(str(tmp_path), 0), range(400)))
  assert not os.listdir(tmp_path)
  (tmp_path / "file").write_text("")
  with pytest.raises(preflight.PreflightError, match="--workdir=.*is not writable"):
    preflight._check_workdir(str(tmp_path / "file" / "run"), 0)


@pytest.mark.parametrize("case", ["teacher_dir", "corrupt_jpeg", "corrupt_skipped"])
def test_bad_input_ends_in_a_short_message_and_loses_nothing(env, tmp_path, case):
  data = tmp_path / "data"
  shutil.copytree(smoke.assets()["data"], data)
  broken = sorted((data / "train").rglob("*.*"))[3]
  broken.write_bytes(b"\xff\xd8 not really a jpeg")
  overrides = [f"--config.data.root={data}", '--config.stages=("cache",)']
  if case == "teacher_dir":
    overrides.append("--config.teacher.name=/no/such/teacher")
  if case == "corrupt_skipped":
    overrides.append("--config.data.skip_corrupt=True")
  done = subprocess.run(_command(tmp_path / "run", *overrides), env=env, capture_output=True,
                        text=True, cwd=REPO)
  if case == "corrupt_skipped":
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "cache" / "done.json").exists()
    return
  assert done.returncode == 2, done.stderr[-2000:]
  message = [line for line in done.stderr.splitlines() if not re.match(r"[IW]\d{4} ", line)]
  assert len(message) <= 10, done.stderr
  expected = {"teacher_dir": ("teacher.name='/no/such/teacher'", "checkpoint directory"),
              "corrupt_jpeg": (broken.name, "data.skip_corrupt=True")}[case]
  assert all(text in done.stderr for text in expected), done.stderr
  assert not (tmp_path / "run" / "cache" / "done.json").exists()

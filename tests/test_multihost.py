"""The multi-host launch path on one machine, and the launch scripts.

Two `python -m rrjax.main` processes joined by jax.distributed on localhost (4 simulated
CPU devices each, gloo collectives, one shared workdir) must build the same teacher cache
and train the same student as one process with 8 devices. The launch scripts run against
stand-ins for python, srun/scontrol and gcloud that record what they were asked to do.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rrjax import smoke
from rrjax.cache.store import TeacherCache
from support.xla_flags import with_device_count

# Numerically sensitive: multi-process runs against one process.
# .ci/run runs these tests again with XLA's CPU code capped at AVX.
pytestmark = pytest.mark.numerics


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "mask.py") + ":smoke"
# The cache and student stages of the smoke pipeline, 24 steps, one checkpoint at the end.
# A float32 cache, so that the runs' targets differ only by float32 rounding (float16
# would turn a last-bit difference into a whole float16 step for a few embeddings).
OVERRIDES = ['--config.stages=("cache","student")', "--config.num_epochs=4",
             "--config.cache.dtype=float32", "--config.checkpoint_every_steps=1000",
             "--config.log_every_steps=1"]
SCRIPTS = ("local_gpus.sh", "slurm.sbatch", "tpu_pod.sh")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir, log, env, devices, **distributed):
  """A `rrjax.main` process writing its output to `log` (a pipe nobody reads could fill
  up and stall a process that its peer then waits for)."""
  env = dict(env, XLA_FLAGS=with_device_count(devices), **distributed)
  with open(log, "w") as f:
    return subprocess.Popen(
        [sys.executable, "-m", "rrjax.main", f"--config={SMOKE}", f"--workdir={workdir}",
         *OVERRIDES], env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  assets = tmp_path_factory.mktemp("smoke_assets")
  smoke.assets(str(assets))  # Created once here, not raced for by several processes.
  return dict(os.environ, RRJAX_SMOKE_DIR=str(assets))


def _start_pair(workdir, logs, env):
  """The two processes of one job (4 devices each); their logs are logs/process{i}.txt."""
  coordinator = f"localhost:{_free_port()}"
  return [_start(workdir, logs / f"process{i}.txt", env, 4, RRJAX_COORDINATOR=coordinator,
                 RRJAX_NUM_PROCESSES="2", RRJAX_PROCESS_ID=str(i)) for i in range(2)]


def _wait(processes, logs, timeout=900):
  """Return codes of `processes` (named by their log files), killing them on a timeout."""
  try:
    for p in processes.values():
      p.wait(timeout=timeout)
  finally:
    for p in processes.values():
      p.kill()
  return {name: (p.returncode, (logs / name).read_text()) for name, p in processes.items()}


def _logged_steps(workdir):
  path = workdir / "metrics.jsonl"
  lines = path.read_text().splitlines() if path.exists() else []
  return [r["step"] for r in map(json.loads, lines) if "student/loss" in r]


PAIR_LOGS = ("process0.txt", "process1.txt")


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
  """(one-process workdir, two-process workdir, what the pair printed when stopped): the
  one process runs through; process 1 of the pair gets SIGTERM mid-training, and the
  pair then runs the same command again to the end, at the same time."""
  single, multi = tmp_path_factory.mktemp("one_process"), tmp_path_factory.mktemp("two")
  logs, resumed_logs = tmp_path_factory.mktemp("logs"), tmp_path_factory.mktemp("resumed")
  one = {"single.txt": _start(single, logs / "single.txt", env, 8)}
  pair = _start_pair(multi, logs, env)
  deadline = time.time() + 600
  while max(_logged_steps(multi), default=0) < 8:
    assert all(p.poll() is None for p in pair) and time.time() < deadline, "no step 8"
    time.sleep(0.05)
  pair[1].send_signal(signal.SIGTERM)
  stopped = _wait(dict(zip(PAIR_LOGS, pair)), logs, timeout=120)
  resumed = _wait(dict(zip(PAIR_LOGS, _start_pair(multi, resumed_logs, env))), resumed_logs)
  for name, (code, log) in {**_wait(one, logs), **resumed}.items():
    assert code == 0, f"{name} failed:\n{log[-6000:]}"
  return single, multi, stopped, resumed


def test_sigterm_to_one_process_stops_both_at_one_step_and_the_rerun_resumes_there(runs):
  """Process 1 alone got SIGTERM mid-training: both processes finished the same step,
  checkpointed it together and exited 143 (the resumed run's parameters are compared with
  the uninterrupted one-process run below)."""
  _, multi, stopped, resumed = runs
  for name, (code, log) in stopped.items():
    assert code == 128 + signal.SIGTERM, f"{name}:\n{log[-6000:]}"
  saved = re.search(r"stopped by a signal to another process; student saved step (\d+) of 24",
                    stopped["process0.txt"][1])
  assert saved and 8 <= int(saved[1]) < 24, stopped["process0.txt"][1][-3000:]
  assert f"student: resumed from step {saved[1]} " in resumed["process0.txt"][1]


def _final_student(workdir):
  """(step, flat params) of the last student checkpoint, read as numpy arrays (the
  two-process checkpoint names devices this test process does not have)."""
  directory = workdir / "student" / "checkpoints"
  step = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  path = str(directory / str(step) / "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = checkpointer.restore(path, restore_args=restore_args)
  return step, ocp.tree.to_flat_dict(state["params"])


def _done(workdir, stage):
  return json.loads((workdir / stage / "done.json").read_text())["summary"]


def test_two_processes_build_the_same_teacher_cache(runs):
  single, multi, _, _ = runs
  path = os.path.join("teacher_cache", "train", "train_views")
  reference, shared = (TeacherCache.open(str(w / path)) for w in runs[:2])
  assert shared.is_complete
  # Same embeddings up to float32 rounding: the teacher saw batches of 2 vs 4 rows per
  # device, so XLA blocks its matmuls differently (and differently again per instruction
  # set), and each of the tiny tower's ~10 layers adds reduction-order error of a few
  # float32 eps times sqrt(its width). 1e-4 of the largest entry (~800 eps) bounds that
  # with room; another view or example would differ by ~1e-1.
  embeddings, expected = shared.to_numpy(), reference.to_numpy()
  np.testing.assert_allclose(embeddings, expected, rtol=0,
                             atol=1e-4 * np.abs(expected).max())
  # Each process built its share of the chunks (process 0 reports its own).
  built_alone, built_shared = (_done(w, "cache")["train"] for w in runs[:2])
  assert built_alone["chunks_this_process"] == built_alone["num_chunks"]
  assert built_shared["chunks_this_process"] == -(-built_alone["num_chunks"] // 2)


def _trajectory(workdir):
  """{step: metrics} of every student step (logged one by one), timings left out: they
  differ between runs by nature."""
  timing = {"steps_per_sec", "images_per_sec", "input_wait_fraction", "mfu"}
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: {k: v for k, v in r.items() if k.startswith("student/")
                      and k.split("/")[1] not in timing}
          for r in records if any(k.startswith("student/") for k in r)}


def test_two_processes_train_the_same_student(runs):
  single, multi, _, _ = runs
  trajectory, shared_trajectory = _trajectory(single), _trajectory(multi)
  assert sorted(trajectory) == sorted(shared_trajectory) == list(range(1, 25))
  # Step 1 is about the split alone: the same parameters, the same global batch, targets
  # that differ by float32 rounding, and the loss and gradient reduced across processes
  # by gloo instead of in one process: ~1e-7 relative apart (seen: 3e-7). Another split
  # of the batch, or a gradient of one process's share alone, changes them by 1e-2 or more.
  first, shared_first = trajectory[1], shared_trajectory[1]
  assert first.keys() == shared_first.keys()
  for name, value in first.items():
    np.testing.assert_allclose(shared_first[name], value, rtol=1e-5, err_msg=name)
  # Training then amplifies that rounding: Adam divides each gradient element by its own
  # running scale, so where a true gradient is ~0 (a key bias, to which attention is
  # invariant; biases before a normalisation) noise becomes steps of ~lr, and the runs'
  # losses drift apart about 2x per step (seen: 6e-6 at step 2, 1e-3 by step 13), on
  # every CPU differently. The parameters as a whole stay together: their norm agrees
  # to ~1e-7 at every step (seen: at most 6e-7), and after 24 steps the parameter vectors
  # differ by ~1e-3 of their norm (seen: 1.3e-3, most of it in the key bias and the
  # normalisation biases).
  for step, metrics in trajectory.items():
    np.testing.assert_allclose(shared_trajectory[step]["student/param_norm"],
                               metrics["student/param_norm"], rtol=1e-5, err_msg=step)
  step, reference = _final_student(single)
  shared_step, shared = _final_student(multi)
  assert step == shared_step == 24
  assert reference.keys() == shared.keys()
  keys = sorted(reference)
  flat, shared_flat = (np.concatenate([t[k].ravel() for k in keys]) for t in (reference, shared))
  difference = np.linalg.norm(shared_flat - flat) / np.linalg.norm(flat)
  assert difference < 1e-2, difference


def test_only_process_zero_writes_shared_files(runs):
  single, multi, _, _ = runs
  lines = [(w / "metrics.jsonl").read_text().splitlines() for w in runs[:2]]
  logged = [[tuple(sorted(k for k in json.loads(l) if k != "time")) + (json.loads(l)["step"],)
             for l in text] for text in lines]
  assert logged[1] == logged[0]  # Every record once: process 1 wrote none.
  for name in ("config.json", "versions.json", "cache/done.json", "student/done.json"):
    assert (multi / name).exists(), name


# ------------------------------------------------------------------- launch scripts


def _executable(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


@pytest.fixture
def fake_python(tmp_path):
  """A stand-in interpreter that logs its arguments, working directory and RRJAX_*/XLA_*
  environment as one JSON line per call."""
  log = tmp_path / "python_calls.jsonl"
  script = _executable(tmp_path / "fake_python", f"""#!{sys.executable}
import json, os, sys

record = {{"argv": sys.argv[1:], "cwd": os.getcwd(),
          "env": {{k: v for k, v in os.environ.items() if k.startswith(("RRJAX_", "XLA_"))}}}}
with open({str(log)!r}, "a") as f:
  f.write(json.dumps(record) + "\\n")
""")
  return script, lambda: [json.loads(l) for l in log.read_text().splitlines()]


def _main_args(config, workdir, *overrides):
  return ["-m", "rrjax.main", f"--config={config}", f"--workdir={workdir}", *overrides]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_refuse_missing_arguments(script):
  path = os.path.join(REPO, "launch", script)
  assert subprocess.run(["bash", "-n", path]).returncode == 0
  assert os.access(path, os.X_OK)
  done = subprocess.run(["bash", path, "configs/mask.py"], capture_output=True, text=True,
                        env=dict(os.environ, TPU_NAME="", TPU_ZONE=""))
  assert done.returncode == 2 and "usage:" in done.stderr


def test_local_gpus_script(fake_python):
  python, calls = fake_python
  override = "--config.data.root=/data/with space"
  env = dict(os.environ, PYTHON=python, XLA_FLAGS="--xla_dump_to=/tmp/x")
  env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
  subprocess.run([os.path.join(REPO, "launch", "local_gpus.sh"), "configs/mask.py:p=0.5",
                  "work dir", override], env=env, check=True)
  [call] = calls()
  assert call["argv"] == _main_args("configs/mask.py:p=0.5", "work dir", override)
  assert call["env"]["XLA_FLAGS"].split() == [
      "--xla_gpu_enable_latency_hiding_scheduler=true", "--xla_dump_to=/tmp/x"]
  assert call["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"


def test_slurm_script(fake_python, tmp_path):
  # SIGTERM to every task before the time limit, so that rrjax checkpoints and stops.
  assert "\n#SBATCH --signal=TERM@" in (pathlib.Path(REPO) / "launch" / "slurm.sbatch").read_text()
  python, calls = fake_python
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _executable(bin_dir / "scontrol", "#!/bin/sh\n[ \"$*\" = \"show hostnames gpu[07-08]\" ] "
              "&& printf 'gpu07\\ngpu08\\n'\n")
  # srun: drop its options, start the task once per process id, as SLURM would per node.
  _executable(bin_dir / "srun", "#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"
              "for id in 0 1; do SLURM_PROCID=$id \"$@\" || exit; done\n")
  env = dict(os.environ, PYTHON=python, PATH=f"{bin_dir}:{os.environ['PATH']}",
             SLURM_JOB_NODELIST="gpu[07-08]", SLURM_JOB_ID="4242", SLURM_NTASKS="2")
  env.pop("RRJAX_PORT", None)
  subprocess.run([os.path.join(REPO, "launch", "slurm.sbatch"), "configs/noise.py",
                  "/shared/w", "--config.seed=1"], env=env, check=True, capture_output=True)
  recorded = calls()
  assert [c["argv"] for c in recorded] == [
      _main_args("configs/noise.py", "/shared/w", "--config.seed=1")] * 2
  assert [c["env"]["RRJAX_PROCESS_ID"] for c in recorded] == ["0", "1"]
  for call in recorded:
    assert call["env"]["RRJAX_COORDINATOR"] == "gpu07:14242"  # 10000 + 4242 % 50000
    assert call["env"]["RRJAX_NUM_PROCESSES"] == "2"


def test_tpu_pod_script(fake_python, tmp_path):
  """gcloud's scp copies into a fake home and its ssh runs the command there, so the
  shipped code, the remote quoting and the install step are all exercised."""
  if subprocess.run(["git", "-C", REPO, "rev-parse"], capture_output=True).returncode:
    pytest.skip("the TPU script ships a git commit; this checkout is not a git repository")
  python, calls = fake_python
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  home.mkdir()
  bin_dir.mkdir()
  gcloud_log = tmp_path / "gcloud.txt"
  _executable(bin_dir / "gcloud", f"""#!/bin/bash
echo "$*" >> "{gcloud_log}"
[[ "$1 $2 $3" == "compute tpus tpu-vm" ]] || exit 1
case "$4" in
  scp) cp "$5" "$HOME/${{6#*:}}" ;;
  ssh) for a in "$@"; do [[ $a == --command=* ]] && command="${{a#--command=}}"; done
       cd "$HOME" && bash -c "$command" ;;
esac
""")
  override = "--config.data.root=/mnt/data/it's here"
  env = dict(os.environ, PYTHON=python, PATH=f"{bin_dir}:{os.environ['PATH']}",
             HOME=str(home), TPU_NAME="rr-v4-32", TPU_ZONE="us-central2-b",
             RRJAX_INSTALL="1")
  subprocess.run([os.path.join(REPO, "launch", "tpu_pod.sh"), "configs/mask.py:p=0.9",
                  "/mnt/shared/w", override], env=env, check=True, capture_output=True)
  install, run = calls()
  remote = home / "rrjax"
  assert install["argv"] == ["-m", "pip", "install", "-e", ".[tpu]"]
  assert run["argv"] == _main_args("configs/mask.py:p=0.9", "/mnt/shared/w", override)
  assert install["cwd"] == run["cwd"] == str(remote)
  assert (remote / "rrjax" / "main.py").exists() and (remote / "setup.cfg").exists()
  for line in gcloud_log.read_text().splitlines():
    assert "rr-v4-32" in line and "--zone=us-central2-b" in line and "--worker=all" in line

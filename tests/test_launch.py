"""What a process needs to know about the job it is part of, without a cluster.

Joining a multi-process job (`rrjax.main.initialize_distributed`) under the environments
of SLURM, a Cloud TPU VM pod slice and explicit RRJAX_* variables, with JAX's cluster
detection stubbed where it would need a real metadata server; which GPUs each SLURM task
drives; what `launch/slurm.sbatch` asks srun for; and how many processes cut views
(`data.num_workers`).
"""

import os
import re
import stat
import subprocess
import sys
import time

import jax
import pytest
from jax._src import clusters
from jax._src.clusters import cloud_tpu_cluster

from rrjax import config as config_lib
from rrjax import main as rrjax_main
from rrjax import preflight
from rrjax.data import workers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH = os.path.join(REPO, "launch", "slurm.sbatch")
# Variables through which a launcher describes a job, to JAX's detection or to rrjax.
_JOB_VARIABLES = ("SLURM_", "OMPI_", "TPU_", "MEGASCALE_", "RRJAX_", "JAX_LOCAL_DEVICE_IDS",
                  "JAX_COORDINATOR", "CUDA_VISIBLE_DEVICES")


@pytest.fixture
def initialize(monkeypatch):
  """No job in the environment, and `jax.distributed.initialize` recording its calls
  (the real one refuses once the backend runs, as it does in every test process)."""
  for name in list(os.environ):
    if name.startswith(_JOB_VARIABLES):
      monkeypatch.delenv(name)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  return calls


def _slurm_task(monkeypatch, *, tasks_per_node, nodes, local_id, gpus=8, **extra):
  """The environment srun gives one task."""
  environment = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[07-08]",
                 "SLURM_NTASKS": str(tasks_per_node * nodes),
                 "SLURM_PROCID": str(local_id), "SLURM_LOCALID": str(local_id),
                 "SLURM_NODEID": "0", "SLURM_STEP_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})",
                 "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus))), **extra}
  for name, value in environment.items():
    monkeypatch.setenv(name, value)
  return environment


def test_a_plain_machine_joins_no_job_and_asks_no_metadata_server(initialize, monkeypatch):
  def no_metadata(key):
    raise AssertionError(f"asked the metadata server for {key}")
  monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", no_metadata)
  start = time.monotonic()
  rrjax_main.initialize_distributed()
  assert initialize == [] and rrjax_main.detected_cluster() is None
  assert time.monotonic() - start < 1


@pytest.mark.parametrize("workers_in_pod", [4, 1])
def test_a_cloud_tpu_vm_pod_slice_found_by_jax_is_joined(initialize, monkeypatch,
                                                         workers_in_pod):
  """`gcloud ... tpu-vm ssh --worker=all` starts rrjax with no TPU_WORKER_* variables; JAX
  finds the workers through the GCE metadata server (stubbed here). A single-host TPU VM
  is no job."""
  monkeypatch.setattr(clusters.GceTpuCluster, "is_env_present", classmethod(lambda cls: True))
  monkeypatch.setattr(clusters.GceTpuCluster, "get_process_count",
                      classmethod(lambda cls: workers_in_pod))
  rrjax_main.initialize_distributed()
  if workers_in_pod > 1:
    assert rrjax_main.detected_cluster() is clusters.GceTpuCluster
    assert initialize == [{"local_device_ids": None}]  # JAX finds the rest itself.
  else:
    assert initialize == []


def test_srun_with_several_tasks_is_joined_with_every_gpu_of_the_node(initialize, monkeypatch):
  _slurm_task(monkeypatch, tasks_per_node=1, nodes=2, local_id=0)
  rrjax_main.initialize_distributed()
  assert initialize == [{"local_device_ids": list(range(8))}]
  monkeypatch.setenv("SLURM_NTASKS", "1")
  monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "1")
  initialize.clear()
  rrjax_main.initialize_distributed()
  assert initialize == []


def test_explicit_job_switches_jax_slurm_detection_off(initialize, monkeypatch):
  """With RRJAX_* given, JAX would still restrict a task driving all 8 GPUs of its node to
  the one numbered SLURM_LOCALID: rrjax turns its detection off."""
  _slurm_task(monkeypatch, tasks_per_node=1, nodes=2, local_id=0)
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # Where SLURM names no GPUs, JAX would choose.
  explicit = ("gpu07:14242", 2, 0)
  assert clusters.ClusterEnv.auto_detect_unset_distributed_params(
      *explicit, None, None, 300)[3] == [0]
  for name, value in zip(("RRJAX_COORDINATOR", "RRJAX_NUM_PROCESSES", "RRJAX_PROCESS_ID"),
                         explicit):
    monkeypatch.setenv(name, str(value))
  rrjax_main.initialize_distributed()
  assert initialize == [dict(coordinator_address="gpu07:14242", num_processes=2, process_id=0,
                             local_device_ids=None, cluster_detection_method="deactivate")]


def test_explicit_job_missing_a_variable_is_named(initialize, monkeypatch):
  monkeypatch.setenv("RRJAX_COORDINATOR", "host:1234")
  monkeypatch.setenv("RRJAX_PROCESS_ID", "0")
  with pytest.raises(ValueError, match="RRJAX_NUM_PROCESSES=''.*set RRJAX_NUM_PROCESSES"):
    rrjax_main.initialize_distributed()
  assert initialize == []


def test_main_refuses_an_incomplete_job_in_one_line(tmp_path):
  environment = {k: v for k, v in os.environ.items() if not k.startswith(_JOB_VARIABLES)}
  done = subprocess.run(
      [sys.executable, "-m", "rrjax.main", "--config=configs/mask.py",
       f"--workdir={tmp_path}"], env=dict(environment, RRJAX_COORDINATOR="host:1234"),
      capture_output=True, text=True, cwd=REPO)
  assert done.returncode == 2
  assert done.stderr.startswith("error: RRJAX_NUM_PROCESSES=''") and "Traceback" not in done.stderr


@pytest.mark.parametrize("tasks_per_node,local_id,extra,expected", [
    (1, 0, {}, list(range(8))),  # One task drives the node's GPUs.
    (8, 3, {}, [3]),  # A task per GPU, all seeing the node's 8 GPUs: its own.
    (2, 1, {}, [4, 5, 6, 7]),
    (8, 3, {"SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "3"}, [0]),  # SLURM bound it.
    (8, 3, {"JAX_LOCAL_DEVICE_IDS": "5"}, None),  # The user's choice, left to JAX.
    (8, 3, {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None),  # No GPUs.
    (4, 2, {"SLURM_STEP_TASKS_PER_NODE": "8,4", "SLURM_NODEID": "1",
            "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, [2]),  # The second node runs 4 tasks.
])
def test_each_slurm_task_drives_its_own_gpus(monkeypatch, tasks_per_node, local_id, extra,
                                             expected):
  environment = _slurm_task(monkeypatch, tasks_per_node=tasks_per_node, nodes=2,
                            local_id=local_id, **extra)
  assert rrjax_main.local_device_ids(environment) == expected


def test_gpus_that_tasks_cannot_share_evenly_are_refused(monkeypatch):
  environment = _slurm_task(monkeypatch, tasks_per_node=3, nodes=1, local_id=0)
  with pytest.raises(ValueError, match="8 GPUs of this node do not split evenly among its 3"):
    rrjax_main.local_device_ids(environment)
  assert rrjax_main.local_device_ids({"CUDA_VISIBLE_DEVICES": "0,1"}) is None  # Not SLURM.


def _executable(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


@pytest.mark.parametrize("cpus_per_task", ["4", None])
def test_sbatch_lets_tasks_finish_their_checkpoint_and_keep_their_cpus(tmp_path,
                                                                       cpus_per_task):
  """srun must not kill the tasks still checkpointing when the first exits with 143 after
  SIGTERM, and must give each task the CPUs sbatch granted it."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _executable(bin_dir / "scontrol", "#!/bin/sh\necho gpu07\n")
  srun_log = tmp_path / "srun.txt"
  _executable(bin_dir / "srun", f"#!/bin/sh\necho \"$@\" > {srun_log}\n")
  environment = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
                     SLURM_JOB_NODELIST="gpu07", SLURM_JOB_ID="1", SLURM_NTASKS="8")
  environment.pop("SLURM_CPUS_PER_TASK", None)
  if cpus_per_task:
    environment["SLURM_CPUS_PER_TASK"] = cpus_per_task
  subprocess.run([SBATCH, "configs/mask.py", "/shared/w"], env=environment, check=True,
                 capture_output=True)
  options = srun_log.read_text().split(" bash -c ")[0].split()
  assert options == ["--kill-on-bad-exit=0"] + (
      [f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else [])


def test_documented_sbatch_commands_ask_for_a_nodes_worth_of_cpus():
  """--cpus-per-task counts per task: a task per GPU must lower the header's value, or
  eight tasks would ask for eight times a node's share."""
  script = open(SBATCH).read()
  header = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script, re.M))
  node_cpus = int(header["ntasks-per-node"]) * int(header["cpus-per-task"])
  documents = script + open(os.path.join(REPO, "launch", "README.md")).read()
  commands = re.findall(r"sbatch (--ntasks-per-node=[^\n]*)", documents)
  assert commands
  for command in commands:
    options = dict(re.findall(r"--([\w-]+)=(\S+)", command))
    assert int(options["ntasks-per-node"]) * int(options["cpus-per-task"]) == node_cpus, command


def test_num_workers_default_follows_the_cpus_this_process_may_use(monkeypatch):
  assert config_lib.base_config().data.num_workers == -1
  for cpus, expected in ((8, 7), (2, 1), (1, 1)):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
    assert workers.resolve_num_workers(-1) == expected
  assert workers.resolve_num_workers(0) == 0 and workers.resolve_num_workers(3) == 3
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
  cutter = workers.ViewCutter(source=None, view=None, seed=0, num_workers=-1)
  try:
    assert cutter.num_workers == 2  # No process starts before the first batch.
  finally:
    cutter.close()


def test_num_workers_below_minus_one_is_refused_naming_the_field():
  config = config_lib.base_config()
  config.data.num_workers = -2
  with pytest.raises(ValueError, match=r"data.num_workers=-2 must be -1 \(one worker per CPU"):
    config_lib.check_config(config, num_devices=1)


@pytest.mark.parametrize("resolved,setting,expected", [
    (7, -1, "input: views cut by 7 worker processes (data.num_workers=-1; 8 CPUs usable"),
    (1, -1, "input: views cut by 1 worker process (data.num_workers=-1; 8 CPUs usable"),
    (0, 0, "input: views cut by the main process (data.num_workers=0; 8 CPUs usable"),
])
def test_the_plan_says_how_many_processes_cut_views(resolved, setting, expected):
  plan = preflight.Plan(("student",), 8, 96, 96, 4, {"student": 48}, 0, "/w/teacher_cache",
                        resolved, setting, 8, "bfloat16", "auto")
  assert expected in plan.describe()
  assert "stage student: 48 training steps in bfloat16 (student.dtype=auto)" in plan.describe()

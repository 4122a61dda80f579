"""rrjax's entry point: `python -m rrjax.main --config=configs/mask.py --workdir=DIR`.

Checks the config, the data, the teacher and the workdir first (`rrjax.preflight`), then
runs the stages the config names (`rrjax.stages`), resuming whatever an earlier run
left unfinished. `--config.x=y` overrides any field; misspelt fields are rejected.
`--dry_run` only checks and prints the plan. The terminal shows one line per stage,
progress bars, warnings and the results; all logs go to WORKDIR/log.txt (`--verbosity=1`
shows them here too). Bad input ends with a short message (`--debug`: the traceback).
Multi-host: set RRJAX_COORDINATOR=host:port, RRJAX_NUM_PROCESSES and RRJAX_PROCESS_ID
(or run under srun or mpirun with several tasks, or on a TPU pod slice, where JAX's
cluster detection finds the job) and every process runs this same command (`launch/`).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shlex
import sys
from collections.abc import Mapping

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for caches, checkpoints, results.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Only check the input and print the plan.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show tracebacks of input errors too.")
flags.mark_flags_as_required(["config", "workdir"])

_VERSIONED = ("rrjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "huggingface_hub",
              "tokenizers", "tensorflow-datasets", "numpy")


def initialize_distributed(environ: Mapping[str, str] = os.environ) -> None:
  """Joins a multi-process job when the environment describes one.

  RRJAX_COORDINATOR=host:port, RRJAX_NUM_PROCESSES and RRJAX_PROCESS_ID name the job
  (`launch/slurm.sbatch` sets them), and JAX's cluster detection is switched off: under
  srun it would still give each process only the GPU numbered SLURM_LOCALID. Otherwise
  the job is the one JAX's cluster detection finds (`detected_cluster`), if it has
  several processes. Each process drives the GPUs of `local_device_ids`. Raises
  ValueError for an incomplete RRJAX_* description or GPUs that tasks cannot share.
  """
  import jax
  device_ids = local_device_ids(environ)
  if environ.get("RRJAX_COORDINATOR"):
    jax.distributed.initialize(
        coordinator_address=environ["RRJAX_COORDINATOR"],
        num_processes=_environment_int(environ, "RRJAX_NUM_PROCESSES"),
        process_id=_environment_int(environ, "RRJAX_PROCESS_ID"),
        local_device_ids=device_ids, cluster_detection_method="deactivate")
  elif detected_cluster() is not None:
    jax.distributed.initialize(local_device_ids=device_ids)


def join_job() -> None:
  """`initialize_distributed`, or one `error:` line and exit status 2 for a job it cannot
  join (before any log file exists: the message alone, as for flags)."""
  try:
    initialize_distributed()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _environment_int(environ: Mapping[str, str], name: str) -> int:
  value = environ.get(name, "")
  if not value.strip().isdigit():
    raise ValueError(f"{name}={value!r}: RRJAX_COORDINATOR is set, so {name} must be a "
                     "number too; set RRJAX_NUM_PROCESSES (the job's processes) and "
                     "RRJAX_PROCESS_ID (0 for the coordinator's host) for every process.")
  return int(value)


def detected_cluster() -> type | None:
  """JAX's cluster environment of this process (the `ClusterEnv` subclass that
  `jax.distributed.initialize()` would use), or None where there is none or it describes
  only this process.

  Those of mpirun (OMPI_*), srun (SLURM_*), a TPU slice on GKE (TPU_WORKER_HOSTNAMES) and
  a Cloud TPU VM pod slice, where no variable names the workers and JAX asks the GCE
  metadata server (`gcloud ... tpu-vm ssh --worker=all` starts rrjax in a plain shell).
  JAX asks that server only when it found TPU chips and libtpu when it was imported, so
  elsewhere this costs no network request. Not Kubernetes (its detection queries the API
  server from any pod that has the kubernetes client) nor mpi4py (opt-in in JAX too).
  """
  from jax._src import clusters  # JAX's detection itself: what initialize() would find.
  environments = (clusters.OmpiCluster, clusters.SlurmCluster, clusters.GkeTpuCluster,
                  clusters.GceTpuCluster)  # In JAX's order of detection.
  found = next((env for env in environments if env.is_env_present()), None)
  return found if found is not None and found.get_process_count() > 1 else None


def local_device_ids(environ: Mapping[str, str]) -> list[int] | None:
  """The GPUs this process drives, numbered among those it sees; None: JAX's choice.

  Only srun tasks with GPUs (SLURM_LOCALID, CUDA_VISIBLE_DEVICES) get ids: every GPU the
  task sees, unless several tasks on its node see the same GPUs (a task per GPU under
  --gpus-per-node, where SLURM binds none to each task); then the task's equal share, by
  SLURM_LOCALID, so that no process preallocates memory on its peers' GPUs. Explicit ids
  also keep JAX's SLURM detection from restricting a task that drives all of its node's
  GPUs to the one numbered SLURM_LOCALID. JAX_LOCAL_DEVICE_IDS, when set, is left to JAX.
  Raises ValueError when the GPUs do not split evenly among the node's tasks.
  """
  visible = environ.get("CUDA_VISIBLE_DEVICES", "")
  # SLURM writes NoDevFiles where the job has no GPUs on a node that has some.
  if ("SLURM_LOCALID" not in environ or environ.get("JAX_LOCAL_DEVICE_IDS")
      or visible in ("", "NoDevFiles")):
    return None
  num_gpus = len(visible.split(","))
  tasks = _slurm_tasks_on_node(environ)
  if tasks == 1 or "SLURM_GPUS_PER_TASK" in environ:  # --gpus-per-task: SLURM binds them.
    return list(range(num_gpus))
  if num_gpus % tasks:
    raise ValueError(f"the {num_gpus} GPUs of this node do not split evenly among its "
                     f"{tasks} SLURM tasks; run one task per node or one per GPU (sbatch "
                     f"--ntasks-per-node=1 or ={num_gpus}), or give each its GPUs with "
                     "--gpus-per-task.")
  share = num_gpus // tasks
  first = int(environ["SLURM_LOCALID"]) * share
  return list(range(first, first + share))


def _slurm_tasks_on_node(environ: Mapping[str, str]) -> int:
  """The tasks of this srun step on this node: SLURM_STEP_TASKS_PER_NODE ("8(x2),4": eight
  on each of the first two nodes, then four) at SLURM_NODEID; 1 outside a step."""
  counts = []
  for group in environ.get("SLURM_STEP_TASKS_PER_NODE", "1").split(","):
    count, _, repeat = group.partition("(x")
    counts += [int(count)] * int(repeat.rstrip(")") or 1)
  return counts[int(environ.get("SLURM_NODEID", "0")) if len(counts) > 1 else 0]


def library_versions() -> dict[str, str]:
  versions = {"python": sys.version.split()[0]}
  for name in _VERSIONED:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = "not installed"
  return versions


def write_run_info(config, workdir: str) -> None:
  """The resolved config and library versions, next to the results they produced."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  with open(os.path.join(workdir, "versions.json"), "w") as f:
    json.dump(library_versions(), f, indent=2)


def resume_command() -> str:
  """The command this process runs, to be run again (it resumes where this one stopped)."""
  return shlex.join(["python", "-m", "rrjax.main", *sys.argv[1:]])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rrjax import console
  console.quiet_terminal(flags.FLAGS.verbosity)
  join_job()
  import jax
  if jax.default_backend() != "cpu":
    # Compiled programs persist across runs (resumes, sweeps, re-runs). Not on CPU: there,
    # multi-device programs with collectives loaded from the cache deadlock in XLA's
    # in-process rendezvous (seen with jax 0.10.2 and 8 simulated devices).
    jax.config.update("jax_compilation_cache_dir", os.environ.get(
        "RRJAX_COMPILATION_CACHE",
        os.path.join(os.path.expanduser("~"), ".cache", "rrjax", "xla")))
  from rrjax import preemption, preflight, stages
  config, workdir = _CONFIG.value, _WORKDIR.value
  log_path = console.setup(workdir, flags.FLAGS.verbosity)
  try:
    plan = preflight.preflight(config, workdir, jax.device_count())
    console.say(plan.describe())
    if _DRY_RUN.value:
      return
    if jax.process_index() == 0:
      write_run_info(config, workdir)
    logging.info("rrjax: %d processes, %d devices; workdir %s", jax.process_count(),
                 jax.device_count(), workdir)
    summaries = stages.run_stages(config, workdir)
  except preemption.Stopped as e:
    console.say(f"rrjax: {e}; resume with the same command: {resume_command()}")
    sys.exit(e.exit_status)
  except (preflight.PreflightError, ValueError, FileNotFoundError) as e:
    if _DEBUG.value:
      raise
    console.error(f"{e}\n(traceback in {log_path}; --debug shows it here)")
    sys.exit(2)
  if "eval" in summaries:
    with open(os.path.join(workdir, "results.md")) as f:
      console.say(f.read())
  console.say(console.where_things_are(workdir, config))


class FlagError(Exception):
  """A command line rrjax cannot run: one short message, exit status 2."""


def check_argv_order(argv: list[str]) -> None:
  """absl needs --config=FILE before any --config.x=y override; say so plainly."""
  for arg in argv[1:]:
    if arg.startswith(("--config=", "-config=")) or arg in ("--config", "-config"):
      return
    if arg.startswith(("--config.", "-config.")):
      raise FlagError(f"{arg.split('=')[0]} comes before --config=FILE; put --config=FILE "
                      "first, then the --config.x=y overrides.")


def _config_argument(argv: list[str]) -> str | None:
  """The FILE[:ARGS] of `--config=FILE[:ARGS]` or `--config FILE[:ARGS]` (None if absent)."""
  for i, arg in enumerate(argv):
    name, sep, value = arg.lstrip("-").partition("=")
    if arg.startswith("-") and name == "config":
      return value if sep else (argv[i + 1] if i + 1 < len(argv) else None)
  return None


def _override_keys(argv: list[str]) -> list[str]:
  """The dotted fields of the `--config.x.y=value` overrides."""
  return [arg.lstrip("-").partition("=")[0][len("config."):] for arg in argv[1:]
          if arg.startswith(("--config.", "-config."))]


def check_config_argument(argv: list[str]) -> None:
  """The config file, its arguments and every override's field, checked before absl and
  ml_collections parse them (their errors are tracebacks); raises FlagError naming the
  file, the argument or the field, and what is valid instead."""
  from rrjax import config as config_lib
  argument = _config_argument(argv)
  if argument is None:
    return  # absl reports the missing required flag.
  path = argument.partition(":")[0]
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    configs = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(
        folder) else []
    raise FlagError(f"--config={argument}: no such file {path!r}" + (
        f"; the configs in {folder}/ are {', '.join(configs)}." if configs else "."))
  try:
    config = config_lib.load_config(argument)
  except ValueError as e:  # An unknown or malformed FILE:ARGS argument, named by the config.
    raise FlagError(f"--config={argument}: {e}") from e
  for key in _override_keys(argv):
    problem = config_lib.unknown_field(config, key)
    if problem:
      raise FlagError(f"--config.{key}: {problem}")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with short errors (exit 2) instead of tracebacks; `--debug`
  lets a failure inside a config file show its traceback."""
  try:
    check_argv_order(argv)
    if "--debug" not in argv:
      check_config_argument(argv)
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:  # A bad value or an unknown flag.
      raise FlagError(f"{e}\n(python -m rrjax.main --helpshort lists the flags)") from e
  except FlagError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  """Console-script entry point (`rrjax --config=... --workdir=...`)."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()

#!/usr/bin/env bash
# A Cloud TPU VM pod slice (e.g. v4-32: 4 workers): ships the repository's current commit
# to every worker and starts the same rrjax command on all of them with
# `gcloud compute tpus tpu-vm ssh --worker=all`. jax.distributed finds the pod by itself:
# rrjax.main calls jax.distributed.initialize() when jax's cluster detection, which asks
# the TPU VM's metadata server for the workers, finds several; no coordinator address is
# needed.
#
#   TPU_NAME=NAME TPU_ZONE=ZONE launch/tpu_pod.sh CONFIG WORKDIR [--config.field=value ...]
#
#   # first time: also install rrjax with TPU jax on every worker
#   RRJAX_INSTALL=1 TPU_NAME=rr-v4-32 TPU_ZONE=us-central2-b launch/tpu_pod.sh \
#       configs/mask.py:p=0.9 /mnt/shared/workdirs/mask90 --config.cache.path=gs://b/cache
#
# WORKDIR must be a directory every worker sees (an NFS/Filestore or gcsfuse mount):
# checkpoints are written jointly and results by worker 0. The teacher cache may also be
# a gs:// path (--config.cache.path). Run this from tmux/screen: the job lives as long as
# the ssh sessions.
#
# Environment it reads:
#   TPU_NAME, TPU_ZONE  the TPU VM (required); TPU_PROJECT  its project (default: gcloud's)
#   RRJAX_REMOTE_DIR    where the code goes on the workers (default: rrjax, in $HOME)
#   RRJAX_INSTALL=1     run pip install -e ".[tpu]" on every worker before the job
#   PYTHON              the interpreter on the workers (default: python3)
# Environment it sets on the workers: none. An ssh session on a TPU VM usually has no
# TPU_WORKER_* variables (those are GKE's); jax reads each worker's number and the list of
# workers from the GCE metadata server (agent-worker-number, worker-network-endpoints),
# derives the process ids from them and makes worker 0 the coordinator.
set -euo pipefail

if [[ $# -lt 2 || -z "${TPU_NAME:-}" || -z "${TPU_ZONE:-}" ]]; then
  echo "usage: TPU_NAME=NAME TPU_ZONE=ZONE $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
remote_dir=${RRJAX_REMOTE_DIR:-rrjax}
gcloud_args=(--zone="$TPU_ZONE" --worker=all)
if [[ -n "${TPU_PROJECT:-}" ]]; then
  gcloud_args+=(--project="$TPU_PROJECT")
fi

# Every worker runs the same commit (uncommitted changes are not shipped).
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
archive=$(mktemp -d)/rrjax.tar.gz
git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:rrjax.tar.gz" "${gcloud_args[@]}"

python=${PYTHON:-python3}
install=":"
if [[ "${RRJAX_INSTALL:-0}" == 1 ]]; then
  install="$(printf '%q' "$python") -m pip install -e '.[tpu]'"
fi
run=$(printf '%q ' "$python" -m rrjax.main --config="$config" --workdir="$workdir" "$@")
remote="set -e; mkdir -p $(printf '%q' "$remote_dir"); \
tar -xzf ~/rrjax.tar.gz -C $(printf '%q' "$remote_dir"); cd $(printf '%q' "$remote_dir"); \
$install; $run"
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --command="$remote"

#!/usr/bin/env bash
# One host, all of its GPUs: a single rrjax process drives every visible GPU (the data
# mesh spans them; no jax.distributed needed).
#
#   launch/local_gpus.sh CONFIG WORKDIR [--config.field=value ...]
#
#   pip install -e ".[cuda12]"                  # once: jax with CUDA 12 wheels
#   launch/local_gpus.sh configs/quickstart.py workdirs/quickstart
#   CUDA_VISIBLE_DEVICES=0,1,2,3 launch/local_gpus.sh configs/mask.py:p=0.9 \
#       workdirs/mask90 --config.data.root=/data/imagenet100
#
# Environment it sets (values already in the environment win):
#   XLA_FLAGS  prepends --xla_gpu_enable_latency_hiding_scheduler=true, so XLA overlaps
#              the gradient all-reduce with the backward pass.
#   XLA_PYTHON_CLIENT_MEM_FRACTION=0.9  lets JAX preallocate 90% of GPU memory (default 75%).
# Environment it reads:
#   CUDA_VISIBLE_DEVICES  which GPUs to use (default: all).
#   PYTHON                the interpreter with rrjax installed (default: python).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2

export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true ${XLA_FLAGS:-}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

exec "${PYTHON:-python}" -m rrjax.main --config="$config" --workdir="$workdir" "$@"

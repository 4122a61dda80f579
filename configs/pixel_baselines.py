"""Pixel-space baselines (SPEC E7, Tables 7 and 8): restore the image first, then classify
it with a clean classifier: the teacher plus a linear probe trained on clean teacher
embeddings. `restore=nlm` (non-local means, for noise) or `restore=deep_decoder` (an
untrained generator fitted to each image for 5000 steps; inpainting for masks, denoising
otherwise). No student is trained.

  python -m rrjax.main --config=configs/pixel_baselines.py:restore=nlm,kind=noise,sigma=0.3 \
      --workdir=workdirs/pixel/nlm_noise0.3
  python -m rrjax.main --config=configs/pixel_baselines.py:restore=deep_decoder,kind=mask,p=0.9 \
      --workdir=workdirs/pixel/dd_mask0.9
  python -m rrjax.main --config=configs/pixel_baselines.py:smoke --workdir=/tmp/pixel

Sized for 8 GPUs: the Deep Decoder fits 5000 Adam steps per test image and draw (about
140 MiB of accelerator memory per 224 px image, batched on device; see
benchmarks/deep_decoder.py), so use few draws (`--config.eval.repeats=1`); NLM runs on
the host CPUs. The paper reports both far below the student (Tables 7-8).
"""

from rrjax import config as config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, restore="nlm", kind="noise", p=0.9, sigma=0.3,
                              **config_lib.COMMON_ARGS)
  c = config_lib.base_config()
  c.experiment = "E7"
  c.stages = ("cache", "probe", "eval")
  c.operator = ({"kind": "mask", "p": args.p} if args.kind == "mask"
                else {"kind": "noise", "sigma": args.sigma})
  c.probe.features = "clean_teacher"
  c.evals = config_lib.evals("restoration")
  c.evals.restoration.restore = args.restore
  c.eval.repeats = 1
  config_lib.apply_common_args(c, args)
  if args.smoke:
    c.evals.restoration.steps = 20
  return c


def get_sweep():
  return ["restore=nlm,kind=noise,sigma=0.1", "restore=nlm,kind=noise,sigma=0.3",
          "restore=nlm,kind=noise,sigma=0.5", "restore=deep_decoder,kind=mask,p=0.5",
          "restore=deep_decoder,kind=mask,p=0.75", "restore=deep_decoder,kind=mask,p=0.9"]

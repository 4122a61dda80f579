"""No contrastive step (SPEC E11, Table 13): linear probes on a frozen network's
embeddings of distorted images, without training a student: the teacher itself
(`features=teacher`) or a supervised ImageNet ResNet-101 (`features=imagenet`).

  python -m rrjax.main --config=configs/no_contrastive.py:features=teacher,p=0.9 --workdir=...
  python -m rrjax.main --config=configs/no_contrastive.py:features=imagenet,sigma=0.3,kind=noise \
      --workdir=...
  python -m rrjax.main --config=configs/no_contrastive.py:smoke --workdir=/tmp/nc

Distorted images reach the teacher as 8-bit images (clipped and rounded). Sized for 1-8
GPUs (frozen forward passes and a probe only: about an hour). Paper (Table 13): the
teacher's accuracy on distorted images falls far below the student's (e.g. tens of
points at 90% masking).
"""

from rrjax import config as config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, features="teacher", kind="mask", p=0.9, sigma=0.3,
                              **config_lib.COMMON_ARGS)
  c = config_lib.base_config()
  c.experiment = "E11"
  c.stages = ("probe", "eval")
  c.operator = ({"kind": "mask", "p": args.p} if args.kind == "mask"
                else {"kind": "noise", "sigma": args.sigma})
  c.probe.features = args.features
  c.evals = config_lib.evals("classification")
  config_lib.apply_common_args(c, args)
  if args.smoke and args.features == "imagenet":
    c.probe.imagenet_init = "resnet18:random"  # No ImageNet weights offline.
  return c


def get_sweep():
  return [f"features={f},{setting}" for f in ("teacher", "imagenet")
          for setting in ("kind=mask,p=0.5", "kind=mask,p=0.75", "kind=mask,p=0.9",
                          "kind=noise,sigma=0.1", "kind=noise,sigma=0.3",
                          "kind=noise,sigma=0.5")]

"""Transfer (SPEC E4, Table 2): freeze a student trained on ImageNet-100 by an E1 run and
fit linear probes on other data sets under the same distortion.

`student=WORKDIR` names the E1 run whose student to reuse (its config's operator and
teacher must be repeated here: pass the same distortion, e.g. `p=0.9`); `dataset` is
one of cifar10, cifar100, stl10 (tfds), imagenet100b (tfds imagenet2012 restricted to
ImageNet-100B) or covid (an image folder with train/ and test/: pass its path as
`root=DIR`; binary, so AUC is reported too).

  python -m rrjax.main --config=configs/transfer.py:student=workdirs/mask/p0.9,dataset=cifar10 \
      --workdir=workdirs/transfer/cifar10_mask0.9
  python -m rrjax.main --config=configs/transfer.py:smoke --workdir=/tmp/transfer

Sized for 1-8 GPUs: only the frozen student's forward passes and a linear probe (minutes
to an hour). Paper (SPEC §7, mask-range model on COVID-19 X-rays): 84.0% accuracy,
AUC 0.918.
"""

from rrjax import config as config_lib

DATASETS = {
    # name: (source, tfds name, wnids, train split, eval split, view mode)
    "cifar10": ("tfds", "cifar10", "", "train", "test", "resize"),
    "cifar100": ("tfds", "cifar100", "", "train", "test", "resize"),
    "stl10": ("tfds", "stl10", "", "train", "test", "resize"),
    "imagenet100b": ("tfds", "imagenet2012", "imagenet100b", "train", "validation", "crop"),
    "covid": ("folder", "covid", "", "train", "test", "crop"),
}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, student="", dataset="cifar10", root="", kind="mask",
                              p=0.9, sigma=0.3, **config_lib.COMMON_ARGS)
  if args.dataset not in DATASETS:
    raise ValueError(f"dataset={args.dataset!r}; choose one of {sorted(DATASETS)}.")
  c = config_lib.base_config()
  c.experiment = "E4"
  c.stages = ("probe", "eval")
  c.student.restore_from = args.student
  c.operator = ({"kind": "mask", "p": args.p} if args.kind == "mask"
                else {"kind": "noise", "sigma": args.sigma})
  source, name, wnids, train_split, eval_split, mode = DATASETS[args.dataset]
  c.data.source, c.data.name, c.data.wnids, c.data.root = source, name, wnids, args.root
  c.data.train_split, c.data.eval_split, c.data.view_mode = train_split, eval_split, mode
  # Zero-shot on these data sets is CLIP's own transfer result, not this experiment's.
  c.evals = config_lib.evals("classification")
  config_lib.apply_common_args(c, args)
  if args.smoke and not args.student:
    c.stages = ("cache", "student", "probe", "eval")  # Trains its own tiny student.
  return c


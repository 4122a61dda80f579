"""Adversarial robustness (E14) in the same trainer: FARE (Schlarmann et al. 2024, "Robust
CLIP: Unsupervised Adversarial Fine-Tuning of Vision Embeddings for Robust Large
Vision-Language Models"; chs20/RobustVLM). A CLIP ViT-B/32 student, initialised from the
teacher (`openai/clip-vit-base-patch32`), is trained on PGD images S(x + delta) (10 steps
of 1/255 inside the linf ball eps = `eps`/255, found anew every step against the current
student) to stay at the cached clean teacher embedding R(x); `loss=mse` is FARE (the
attack and the training loss both the squared distance of L2-normalised embeddings,
`loss.kind="mse"`), `loss=train` the contrastive variant (SPEC §2 `student_teacher`
loss, attacked and minimised).

Two runs, because an attack needs the student's training loss: run 1 trains the student
and evaluates zero-shot (clean; APGD-CE and APGD-DLR, 100 steps, on 1000 images at eps
2/255 and 4/255, student and teacher); run 2 (`student=WORKDIR` of run 1) fits linear
probes on clean images with the frozen robust student and attacks them too.

  python -m rrjax.main --config=configs/adversarial.py:eps=4 --workdir=workdirs/adv/fare4
  python -m rrjax.main --config=configs/adversarial.py:eps=2 --workdir=workdirs/adv/fare2
  python -m rrjax.main --config=configs/adversarial.py:eps=4,loss=train --workdir=workdirs/adv/ct4
  python -m rrjax.main --config=configs/adversarial.py:eps=4,student=workdirs/adv/fare4 \
      --workdir=workdirs/adv/fare4_probe
  python -m rrjax.main --config=configs/adversarial.py:smoke --workdir=/tmp/adv  # CPU, 2-3 min

Data: ImageNet-100 (as configs/mask.py; FARE trains on all of ImageNet for 2 epochs,
about 20k steps of 128: here 10 epochs of ImageNet-100, about 9.9k steps). Optimiser as
FARE: AdamW, learning rate 1e-5, weight decay 1e-4, batch 128, 7% warmup, cosine.
Sized for one A100/H100-class GPU (estimated from FLOPs, not measured yet): a step costs
about 11 forward-backward passes of ViT-B/32 (10 attack steps, then the update), ~0.15
TFLOP per image, so the 10 epochs (1.27M images) take on the order of 1 GPU-hour
(float32; `data.num_workers` >= 8 to cut views fast enough), the cache of 10 views about
10 minutes, and the evaluation's attacks (2 models x 2 losses x 2 budgets x 100 steps on
1000 images) minutes.

Paper (FARE, ViT-L/14 at 224 px, zero-shot accuracy averaged over its 13 zero-shot data
sets, clean / APGD eps=2/255 / eps=4/255): OpenAI CLIP 73.1 / 0.0 / 0.0; FARE^4 (trained
at eps 4/255) 61.1 / 45.9 / 32.4. Expect the same pattern from B/32 on ImageNet-100: the
teacher at 0% robust accuracy, the student far above it at a few points of clean accuracy.
"""

from rrjax import config as config_lib

LOSSES = {"mse": "mse", "train": "student_teacher"}  # attack loss -> config.loss.kind


def get_config(arg=None):
  args = config_lib.parse_arg(arg, eps=4, loss="mse", student="", **config_lib.COMMON_ARGS)
  if args.loss not in LOSSES:
    raise ValueError(f"loss={args.loss!r}; choose 'mse' (FARE) or 'train' (contrastive).")
  c = config_lib.base_config()
  c.experiment = "E14"
  c.teacher.name = "openai/clip-vit-base-patch32"
  c.loss.kind = LOSSES[args.loss]
  c.operator = {"kind": "pgd", "eps": args.eps / 255, "steps": 10, "step_size": 1 / 255,
                "norm": "linf", "loss": args.loss}
  c.cache.num_views = 10
  c.num_epochs = 10
  c.batch_size = 128
  c.optimizer.learning_rate = 1e-5
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_steps = 700
  c.stages = ("cache", "student", "eval")
  c.eval.operators = ({"kind": "identity"},)  # Attacks are the adversarial evaluator's.
  c.evals = config_lib.evals("zero_shot", "adversarial")
  c.evals.adversarial.eps = (2 / 255, 4 / 255)
  if args.student:
    # Run 2: probes on clean images, fitted on the frozen student of run 1.
    c.stages = ("probe", "eval")
    c.student.restore_from = args.student
    c.operator = {"kind": "identity"}
    c.evals = config_lib.evals("classification", "adversarial")
    c.evals.adversarial.eps = (2 / 255, 4 / 255)
    c.evals.adversarial.methods = ("probe",)
  config_lib.apply_common_args(c, args)
  c.eval.repeats = 1  # Clean test images: no corruption draws to repeat.
  if args.smoke:
    if not args.student:
      c.operator.steps, c.operator.step_size = 2, 2 / 255
    c.evals.adversarial.eps = (4 / 255,)
    c.evals.adversarial.steps = 5
    c.evals.adversarial.losses = ("ce",)  # One attack program per model to compile.
    c.evals.adversarial.num_images = 16
  return c


def get_sweep():
  """FARE at both budgets and the contrastive variant (run 2 of each takes its workdir)."""
  return ["eps=2", "eps=4", "eps=4,loss=train"]

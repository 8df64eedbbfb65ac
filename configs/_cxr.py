"""Shared base of configs/cxr_{simclr,clip,convirt,joint}.py (not itself a config): image-only vs image+report
vs joint pretraining on chest X-rays with reports, as compared by Huang et al. 2023 (MIDL), "Radiology reports
improve visual representations learned from radiographs".

One recipe, four objectives, so that only the objective differs between the arms:
  simclr   two augmented views, NT-Xent (image only; the report is not read)
  clip     one view + its report, symmetric InfoNCE, learnable temperature (Radford et al. 2021)
  convirt  one view + one random sentence of its report (a new draw each epoch), lambda = 0.75 image->text
           weighting (Zhang et al. 2020)
  joint    view 0 + report (ConVIRT loss) and SimCLR on views 1-2 with its own projector (SLIP, Mu et al. 2022)

Variants:
  (none)   paper scale, a GPU job: MIMIC-CXR-JPG 2.0.0 frontal images with their reports (manual download,
           tfds_builders/mimic_cxr), ResNet-50 at 224 px, a WordPiece tokenizer trained on the training
           reports, then the frozen encoder linear-probed on CheXpert (mode transfer: config.transfer.targets;
           label fractions with --config.eval.train_subset=1% / 10% / "" (all)) and on MIMIC's own labels, the
           MIMIC-trained classifiers also scored on CheXpert and NIH test images (config.ood.targets: the OOD
           matrix's MIMIC row, shared findings only).
  :cpu     the synthetic paired CXR dataset (synthetic_cxr/64px: 2048 train images whose reports describe the
           drawn findings), ResNet-18 x0.25 at 64 px, 800 steps: a 2-core CPU comparison of the four arms.
  :quick   synthetic_cxr/tiny (32 px, 64 images), ResNet-18 x0.125, a 32-wide text tower, 6 steps: CI smoke.
Every variant ends with the linear probe (100% labels, plus a random encoder) and, for the image-text arms,
image<->report retrieval recall@k on the test split (<workdir>/retrieval.md).
"""
from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.augment import views as views_lib
from medssl_jax.evals import ood
from tfds_builders.chexpert.chexpert_dataset_builder import LABELS as CHEXPERT_LABELS
from tfds_builders.nih_chestxray14.nih_chestxray14_dataset_builder import FINDINGS as NIH_FINDINGS

OBJECTIVES = ("simclr", "clip", "convirt", "joint")
# Grayscale radiographs: brightness / contrast only; crops keep most of the chest (findings are local).
_GRAY = dict(saturation=0.0, hue=0.0, grayscale_p=0.0, crop_scale=(0.5, 1.0), blur_p=0.3)


def _views(objective: str, size: int):
  v = views_lib.default_view(crop_size=size, **_GRAY)
  # Laterality matters in reports ("left effusion"): no horizontal flips when a report is paired with the view.
  paired = views_lib.default_view(crop_size=size, **dict(_GRAY, flip_p=0.0))
  return {"simclr": [v, v], "clip": [paired], "convirt": [paired], "joint": [paired, v, v]}[objective]


def base(objective: str):
  """The paper-scale config of one arm (see the module docstring)."""
  if objective not in OBJECTIVES:
    raise ValueError(f"objective {objective!r}: expected one of {OBJECTIVES}")
  c = experiment.default_config()
  c.mode = "pretrain_and_probe"
  c.data.builder = "mimic_cxr"
  c.data.builder_config = "frontal_u_ones_256"
  c.data.image_size = 224
  c.data.channels = 1
  c.data.mean = (0.5,)
  c.data.std = (0.5,)
  c.data.fit = "pad"
  c.data.val_split = "validation"
  c.model.encoder = "resnet50"
  c.model.projector_hidden_dims = (2048,)
  c.model.projector_dim = 512
  c.objective.name = objective
  c.objective.temperature = 0.1
  c.objective.image_text.temperature = 0.1
  # CLIP learns its temperature; ConVIRT (and the joint arm's ConVIRT loss) keeps t = 0.1 fixed, as its paper.
  c.objective.image_text.learn_temperature = objective == "clip"
  c.text.key = "report"
  c.text.sample_sentences = objective == "convirt"  # ConVIRT's text view: one random sentence per report.
  c.text.vocab_size = 8000
  c.text.max_length = 128
  c.text.width = 256
  c.text.depth = 4
  c.text.heads = 4
  c.augment.views = _views(objective, 224)
  c.train.batch_size = 256
  c.train.num_steps = 30000
  c.train.optimizer = "adamw"
  c.train.base_learning_rate = 1e-3
  c.train.warmup_steps = 1000
  c.train.weight_decay = 1e-4
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.eval.compare_random_init = True
  c.eval.bootstrap_samples = 0
  # The OOD matrix's MIMIC row: the MIMIC-trained probe (and fine-tuned network) scored unchanged on CheXpert's
  # test split (the same 14 labels) and NIH ChestX-ray14's (the 7 findings they share; evals/ood.py). The other
  # rows: run mode transfer, or this recipe with data.builder=chexpert / nih_chestxray14 and these targets swapped.
  c.ood.targets = (
      {"name": "chexpert", "builder": "chexpert", "builder_config": "frontal_u_ones_320", "split": "test",
       "label_map": ood.cxr_label_map(CHEXPERT_LABELS, CHEXPERT_LABELS)},
      {"name": "nih_chestxray14", "builder": "nih_chestxray14", "builder_config": "256", "split": "test",
       "label_map": ood.cxr_label_map(CHEXPERT_LABELS, NIH_FINDINGS)},
  )
  c.transfer.targets = (
      {"name": "chexpert", "builder": "chexpert", "builder_config": "frontal_u_ones_320", "image_size": 224,
       "fit": "pad", "val_split": ""},
      {"name": "nih_chestxray14", "builder": "nih_chestxray14", "builder_config": "256", "image_size": 224,
       "fit": "pad", "val_split": ""},
  )
  return c


def cpu(c):
  """synthetic_cxr/64px on the 2-core CPU: ResNet-18 x0.25 at 64 px, batch 128, 800 steps, probes at 100%."""
  c.data.builder = "synthetic_cxr"
  c.data.builder_config = "64px"
  c.data.image_size = 64
  c.data.fit = "squash"
  c.data.val_split = ""
  c.model.encoder = "resnet18"
  c.model.width_multiplier = 0.25
  c.model.projector_hidden_dims = (512,)
  c.model.projector_dim = 128
  c.text.vocab_size = 400
  c.text.max_length = 48
  c.text.width = 64
  c.text.depth = 2
  c.text.heads = 4
  c.augment.views = _views(c.objective.name, 64)
  c.train.batch_size = 128
  c.train.num_steps = 800
  c.train.base_learning_rate = 2e-3
  c.train.warmup_steps = 50
  c.train.log_every = 50
  c.train.checkpoint_every = 200
  c.eval.batch_size = 256
  c.transfer.targets = ()
  c.ood.targets = ()  # No multi-label CXR test set in ../shared (NIH1000 there is normal vs abnormal).


def quick(c):
  """synthetic_cxr/tiny (32 px, 64 train / 32 test images), tiny towers, 6 steps: the CI smoke run."""
  cpu(c)
  c.data.builder_config = "tiny"
  c.data.image_size = 32
  c.model.width_multiplier = 0.125
  c.model.projector_hidden_dims = (64,)
  c.model.projector_dim = 32
  c.text.width = 32
  c.text.depth = 1
  c.text.heads = 2
  c.text.max_length = 40
  c.augment.views = _views(c.objective.name, 32)
  c.train.batch_size = 16
  c.train.num_steps = 6
  c.train.warmup_steps = 1
  c.train.log_every = 3
  c.train.checkpoint_every = 6
  c.eval.batch_size = 32
  c.eval.max_iter = 50


def get(objective: str, arg=None):
  """The config of one arm with its variant applied."""
  return config_lib.with_variant(base(objective), arg, {"cpu": cpu, "quick": quick})

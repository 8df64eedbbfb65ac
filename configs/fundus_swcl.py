"""SWCL: semi-weakly supervised contrastive learning for retinal fundus images, every stage in one command.

Reproduces: Yap & Ng 2021, "Semi-weakly Supervised Contrastive Representation Learning for Retinal Fundus
            Images" (arXiv:2108.02122): (1) a semi-supervised pseudo-labeller trained on a small labelled
            set plus a large unlabelled pool (FixMatch here), (2) pseudo-labels and class activation maps
            propagated over the pool, (3) five patches per image (four corners + centre, right eyes
            mirrored onto left), each with an abnormality score from the activation map, (4) contrastive
            pretraining where two patches are positives when they share patient, position and thresholded
            abnormality (objective.swcl.scheme), (5) transfer to classification and to vessel
            segmentation (U-Net decoder on the encoder).
Command:    python main.py --config=configs/fundus_swcl.py:<variant> --workdir=/tmp/swcl
            (mode "swcl" runs stages 1-5 in order; rerunning resumes. One stage alone:
            --config.mode=pseudo_label | propagate | patches | pretrain | transfer | segmentation.)
            Outputs: pseudo_labeller/, propagation/ (images, CAMs, pseudo_labels.csv, cam_grid.png),
            patches/ (TFDS dataset, summary.json, patches_grid.png), checkpoints/, transfer/<target>/,
            segmentation/ (results.md / .json, overlay PNGs).
Variants:   (none): the paper's setting: labelled ODIR-5K (8 diseases, multi-label), unlabelled EyePACS train,
              448 px images, 224 px patches, ResNet-18; transfer to APTOS 2019 DR grading (AUROC + quadratic
              kappa), REFUGE glaucoma, RFMiD multi-disease; CHASE_DB1 vessel segmentation. A GPU job; the
              datasets must be downloaded by hand (see each builder's MANUAL_DOWNLOAD_INSTRUCTIONS).
            `pair`: objective.swcl.scheme ("pair",), SimCLR on the same patches (the SimCLR baseline).
            `refuge_disc_cup`: segmentation transfer to REFUGE optic disc / cup (mask_mode "classes").
            `cpu`: the real data in $MEDSSL_SHARED_DATA on a 2-core CPU: labelled HRF (27 training images,
              healthy / DR / glaucoma), unlabelled pool = all 45 HRF images + the 20 CHASE_DB1 training
              images; 256 px images, 128 px patches, ResNet-18 x0.25; transfer to RetinaMNIST DR grading and
              HRF; CHASE_DB1 vessel segmentation (20 train / 8 test, native 999x960).
            `cpu_pair`: `cpu` with objective.swcl.scheme ("pair",): SimCLR on the same patches, the SimCLR baseline of
              the CHASE_DB1 table (configs/table_chase_db1_swcl.py).
            `cpu_byol`, `cpu_dino`: `cpu` pretrained with BYOL / DINO (their configs/fundus_<name>.py
              recipes) on the same patches: the table's other SSL baselines. The `cpu` run also transfers
              its stage-1 pseudo-labeller backbone (supervised CE + FixMatch on HRF labels): the
              supervised-pretraining baseline.
            `quick`: the embedded synthetic fundus data, a tiny model, every stage in about a minute (CI).
Expected / wall-clock (2-core CPU shared with other jobs, 2026-11-24): `cpu` stages 1-4 in 8.5 min (stage 1:
            300 steps, val AUROC on 9 HRF images; pretraining 600 steps), then transfer (1 min) and
            segmentation (about 1.5 min per encoder and seed). Results: the CHASE_DB1 table in
            docs/tables/chase_db1_swcl_cpu.md (SWCL 0.7445 +- 0.0095 Dice / 0.9634 AUROC over 5 seeds; random
            init 0.7312 / 0.9590; published U-Net 0.7783 / 0.9772). `quick`: about 40 s.
"""
from medssl_jax import config as config_lib
from medssl_jax.augment import views
from medssl_jax.data import shared

_fundus = config_lib.sibling(__file__, "_fundus")


def _views(crop: int, scale=(0.3, 1.0)):
  view = dict(crop_size=crop, crop_scale=scale, hue=0.02, saturation=0.2, blur_p=0.3, solarize_p=0.0)
  return [views.default_view(**view), views.default_view(**dict(view, blur_p=0.1))]


def get_config(arg=None):
  c = _fundus.base("swcl")
  c.mode = "swcl"
  c.data.builder = "swcl_patches"  # Built by stage 3 inside the workdir (data_dir / manual_dir left empty).
  c.data.builder_config = ""
  c.data.image_size = 224
  c.data.val_split = ""
  c.data.test_split = "train"
  c.model.width_multiplier = 1.0
  c.objective.temperature = 0.1  # The paper's SupCon temperature.
  c.objective.swcl.scheme = ("patient", "position", "abnormality")
  c.objective.swcl.abnormality_threshold = 0.4  # The paper's threshold on the pseudo-abnormality.
  c.augment.views = _views(224, scale=(0.2, 1.0))
  c.train.optimizer = "adamw"  # The paper: Adam, lr 1e-3, 40 epochs, 128-d projector.
  c.train.base_learning_rate = 1e-3  # At batch 256 (scaled with the batch).
  c.model.projector_dim = 128
  c.train.batch_size = 256
  c.train.num_steps = 20000
  c.train.checkpoint_every = 1000

  s = c.swcl
  s.labelled.builder = "odir5k"
  s.labelled.builder_config = "512"
  s.labelled.train_split = "train"
  s.labelled.val_split = "validation"
  s.pool = ({"builder": "eyepacs", "builder_config": "512", "split": "train"},)
  s.image_size = 448
  s.patch_size = 224
  s.classifier_image_size = 224
  s.fit = "pad"
  s.steps = 20000
  s.batch_size = 64
  s.unlabelled_ratio = 7
  s.normal_classes = ("N",)

  c.eval.protocol = "linear_probe"
  c.transfer.targets = (
      {"name": "aptos2019_dr", "builder": "aptos2019", "builder_config": "512", "image_size": 224,
       "fit": "pad", "ordinal": True},
      {"name": "refuge_glaucoma", "builder": "refuge", "builder_config": "512", "image_size": 224, "fit": "pad"},
      {"name": "rfmid_multidisease", "builder": "rfmid", "builder_config": "512", "image_size": 224, "fit": "pad"},
  )
  g = c.segmentation
  g.builder, g.builder_config, g.fov = "chase_db1", "original", "auto"
  g.patch_size, g.steps, g.batch_size = 256, 4000, 16
  g.encoders = ("pretrained", "random", "pseudo_labeller")
  g.seeds = (0, 1, 2)
  return _fundus.with_quick(c, arg, quick=quick, pair=pair, refuge_disc_cup=refuge_disc_cup, cpu=cpu, cpu_pair=cpu_pair, cpu_byol=_cpu_baseline("byol"),
                            cpu_dino=_cpu_baseline("dino"))


def cpu(c):
  """Real shared data (HRF, CHASE_DB1, RetinaMNIST) at a 2-core CPU budget."""
  data = shared.shared_data_dir()
  c.model.width_multiplier = 0.25
  c.model.projector_hidden_dims = (512,)
  s = c.swcl
  s.labelled.builder = "hrf"
  s.labelled.builder_config = "classification_512"
  s.labelled.manual_dir = str(data / "hrf")
  s.labelled.train_split = "train"
  s.labelled.val_split = "validation"
  hrf = {"builder": "hrf", "builder_config": "classification_512", "manual_dir": str(data / "hrf")}
  # Only CHASE_DB1's training children: its 8 test images stay unseen until the segmentation test.
  s.pool = (dict(hrf, split="train"), dict(hrf, split="validation"), dict(hrf, split="test"),
            {"builder": "chase_db1", "builder_config": "512", "manual_dir": str(data / "chase_db1"), "split": "train"})
  s.image_size = 256
  s.patch_size = 128
  s.classifier_image_size = 128
  s.steps = 300
  s.batch_size = 16
  s.unlabelled_ratio = 2
  s.eval_every = 100
  s.normal_classes = ("healthy",)
  c.data.image_size = 128
  c.augment.views = _views(64)
  c.train.batch_size = 64
  c.train.base_learning_rate = 4e-3  # lr 1e-3 at batch 64, the paper's Adam learning rate.
  c.train.num_steps = 600
  c.train.warmup_steps = 30
  c.train.checkpoint_every = 100
  c.train.log_every = 25
  c.eval.batch_size = 64
  c.transfer.targets = (
      {"name": "retinamnist_dr", "builder": "medmnist", "builder_config": "retinamnist",
       "manual_dir": str(data / "retinamnist"), "image_size": 64, "fit": "squash", "ordinal": True},
      {"name": "hrf_3class", "builder": "hrf", "builder_config": "classification_512",
       "manual_dir": str(data / "hrf"), "image_size": 128, "fit": "pad"},
  )
  g = c.segmentation
  g.manual_dir = str(data / "chase_db1")
  g.patch_size, g.steps, g.batch_size = 128, 800, 8
  g.learning_rate = 2e-3
  g.seeds = (0, 1, 2, 3, 4)  # Seed-to-seed spread (about 0.01 Dice) is as large as the gaps between encoders.
  g.encoders = ("pretrained", "random", "pseudo_labeller")


def _cpu_baseline(objective: str):
  """`cpu` pretrained with another objective on the same patches, with that objective's fundus recipe
  (configs/fundus_<objective>.py: heads, views, momentum, temperatures) and `cpu`'s steps, batch and lr."""
  def variant(c):
    cpu(c)
    other = config_lib.load(f"fundus_{objective}")
    swcl = c.objective.swcl  # The patches' thresholds stay this run's.
    c.objective = other.objective.copy_and_resolve_references()
    c.objective.swcl = swcl
    for k in ("projector_hidden_dims", "projector_dim", "predictor_hidden_dims"):
      c.model[k] = other.model[k]
    c.augment.views = list(other.augment.views)
    c.train.grad_clip_norm = other.train.grad_clip_norm
    if objective == "dino":  # Teacher temperature warm-up over the first 30% of this run, as in fundus_dino.
      c.objective.dino.teacher_temperature_warmup_steps = int(0.3 * c.train.num_steps)
    c.segmentation.encoders = ("pretrained",)  # Random init and the pseudo-labeller come from the `cpu` run.
  return variant


def refuge_disc_cup(c):
  """The paper-scale run with optic disc / cup segmentation on REFUGE (class-id masks: 1 rim, 2 cup)
  instead of CHASE_DB1 vessels; results report per-class Dice and the whole-disc Dice (`dice_ge_1`)."""
  g = c.segmentation
  g.builder, g.builder_config, g.mask_key, g.mask_mode, g.fov = "refuge", "512", "mask", "classes", "auto"
  g.train_split, g.test_split, g.image_size, g.patch_size = "train", "test", 0, 256


def pair(c):
  """Positives = the two views of one patch only: SimCLR on the same patches."""
  c.objective.swcl.scheme = ("pair",)
  c.segmentation.encoders = ("pretrained",)  # The random-init and supervised rows come from the SWCL run.


def cpu_pair(c):
  """`cpu` with pair-only positives (SimCLR on the same patches)."""
  cpu(c)
  pair(c)


def quick(c):
  """Every stage on synthetic_fundus/tiny (32 px) with a tiny model: a smoke run for CI."""
  _fundus.quick(c)
  c.data.builder = "swcl_patches"  # _fundus.quick points data at synthetic_fundus/small; patches stay.
  c.data.builder_config = ""
  c.data.image_size = 32
  c.model.stem = "cifar"
  c.augment.views = [views.default_view(crop_size=32, crop_scale=(0.5, 1.0), brightness=0.2, contrast=0.2,
                                        saturation=0.2, hue=0.0, grayscale_p=0.0, blur_p=0.0)] * 2
  c.train.num_steps = 20
  c.train.checkpoint_every = 10
  s = c.swcl
  s.labelled.builder, s.labelled.builder_config = "synthetic_fundus", "tiny"
  s.labelled.data_dir = s.labelled.manual_dir = ""
  s.pool = ({"builder": "synthetic_fundus", "builder_config": "tiny", "split": "test"},)
  s.image_size, s.patch_size, s.classifier_image_size = 64, 32, 32
  s.steps, s.batch_size, s.unlabelled_ratio, s.eval_every = 20, 8, 1, 10
  s.normal_classes = ("healthy",)
  c.transfer.targets = ({"name": "synthetic_grading", "builder": "synthetic_fundus", "builder_config": "tiny",
                         "image_size": 32, "fit": "squash"},)
  c.eval.max_iter = 50
  c.eval.bootstrap_samples = 0
  g = c.segmentation
  g.builder, g.builder_config, g.manual_dir, g.fov = "synthetic_fundus", "vessels", "", "fov_mask"
  g.patch_size, g.steps, g.batch_size, g.seeds = 32, 20, 8, (0,)
  g.encoders = ("pretrained", "random", "pseudo_labeller")

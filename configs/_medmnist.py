"""Shared base of the configs/medmnist_<recipe>.py family (not itself a config): the `:<dataset>[,quick]`
argument and MedMNIST v2's data and encoder settings (28 px, mean/std 0.5, CIFAR-stem ResNet-18)."""
from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.augment import views
from medssl_jax.data import shared
from tfds_builders.medmnist import DATASETS


def parse(arg, *, config_file: str):
  """'<dataset>[,quick]' -> (dataset, quick); the default dataset is RetinaMNIST. Multi-label datasets
  are refused (these recipes are single-label)."""
  name, quick, _ = parse_flags(arg, config_file=config_file)
  return name, quick


def parse_flags(arg, *, config_file: str, flags=()):
  """'<dataset>[,quick][,<flag>...]' -> (dataset, quick, the set of `flags` given); as `parse`."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  names = [p for p in parts if p != "quick" and p not in flags]
  name = names[0] if names else "retinamnist"
  if name not in DATASETS or names[1:]:
    forms = ["<dataset>", "<dataset>,quick", *(f"<dataset>,{f}[,quick]" for f in flags)]
    raise config_lib.unknown_variant(arg, forms, what=f"{config_file} variant",
                                    rest=f"with <dataset> in {sorted(DATASETS)}")
  if DATASETS[name][0] == "multi-label":
    raise ValueError(f"{name} is multi-label; {config_file} covers the single-label datasets")
  return name, "quick" in parts, {p for p in parts if p in flags}


def base(name: str):
  """A base config reading medmnist/<name> (28 px) with MedMNIST v2's ResNet-18 (28) encoder."""
  task, channels, _, _ = DATASETS[name]
  c = experiment.default_config()
  c.data.builder = "medmnist"
  c.data.builder_config = name
  c.data.manual_dir = str(shared.shared_data_dir() / name)
  c.data.image_size = 28
  c.data.channels = channels
  c.data.mean = (0.5,) * channels
  c.data.std = (0.5,) * channels
  c.data.val_split = "validation"
  c.eval.ordinal = task == "ordinal-regression"  # RetinaMNIST's DR grades: quadratic-weighted kappa too.
  c.model.encoder = "resnet18"
  c.model.stem = "cifar"
  c.model.width_multiplier = 1.0
  return c


def supervised_recipe(c, *, batch_size: int, eval_batch_size: int):
  """MedMNIST v2's training recipe, shared by its 2D and 3D benchmarks (configs/medmnist_supervised.py,
  configs/volume_supervised.py): a random init trained with labels (mode "supervised", the fine-tuning protocol),
  Adam 1e-3 without weight decay, 100 epochs with lr x0.1 at epochs 50 and 75, no augmentation, the checkpoint with
  the best validation AUC (scored every epoch) tested. Epochs count the dataset actually opened (steps at run
  time), so another dataset by override trains as long."""
  c.mode = "supervised"
  c.eval.protocol = "finetune"
  c.eval.compare_random_init = False
  c.eval.batch_size = eval_batch_size
  c.eval.finetune_epochs = 100
  c.eval.finetune_batch_size = batch_size
  c.eval.finetune_learning_rate = 1e-3
  c.eval.finetune_weight_decay = 0.0
  c.eval.finetune_schedule = "multistep"
  c.eval.finetune_milestones = (0.5, 0.75)
  c.eval.finetune_augment = False
  c.eval.finetune_eval_every_epoch = True


# Background augmentation per dataset: (mask derived from the images, how the background is replaced). Chest
# X-rays keep their lung fields and take another image's surroundings (ribs, heart, markers, body outline);
# fundus photographs keep their field of view, whose black surround is alike in every image, so it gets noise.
BACKGROUNDS = {"pneumoniamnist": ("lung_intensity", "swap"), "retinamnist": ("fundus_fov", "noise")}


def with_background(c, name: str, *, p: float = 0.2):
  """Background augmentation (Ryali et al. 2021) on every view of `c` with probability p, with the dataset's
  mask and fill (BACKGROUNDS)."""
  if name not in BACKGROUNDS:
    raise ValueError(f"background augmentation has a mask for {sorted(BACKGROUNDS)}, not {name!r}; set "
                     "config.augment.derived_mask / mask_key and the views' background_p yourself")
  mask, mode = BACKGROUNDS[name]
  c.augment.derived_mask = mask
  c.augment.views = [views.default_view(**dict(v.to_dict(), background_p=p, background=mode)) for v in c.augment.views]
  return c

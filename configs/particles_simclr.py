"""SimCLR on BCCD blood-cell crops, evaluated as particle embeddings (the therapeutic-protein
particle study's questions on public microscopy data).

Reproduces: no published number; the protocol of the particle study: SimCLR (Chen et al. 2020) pretrained on
            BCCD/64 cell crops of the training split WITHOUT the held-out class (WBC), then, for the
            pretrained and a random encoder (medssl_jax/evals/particles.py): cosine silhouette and kNN
            purity of the test embeddings, a t-SNE map (WBC highlighted), few-label logistic regression with
            1 / 5 / 10 labelled crops per known class (RBC, Platelets; 3 seeds), and the novelty AUROC of
            WBC crops against the known types.
Command:    python main.py --config=configs/particles_simclr.py:cpu --workdir=/tmp/particles_simclr
            (needs the shared BCCD folder: $MEDSSL_SHARED_DATA/bccd, default ../shared/data/bccd)
Variants:   (none) 3000 steps, batch 256 (not run on the 2-core CPU); `:cpu` 600 steps, batch 128;
            `:quick` 20 steps of a ResNet-18 x0.125 (smoke run).
Views:      microscopy crops have no canonical scale or orientation but their stain colour is informative:
            crop scale (0.5, 1), horizontal and vertical flips (p 0.5 each) and quarter turns (p 0.5 of a
            k * 90 degree turn, k uniform in {1, 2, 3}), mild colour jitter, no grayscale, light blur,
            no solarize.
"""

from medssl_jax import config as config_lib
from medssl_jax.augment import views
from medssl_jax.data import shared

_fundus = config_lib.sibling(__file__, "_fundus")


def _view(size: int, **overrides):
  return views.default_view(**dict(dict(crop_size=size, crop_scale=(0.5, 1.0), flip_p=0.5, vflip_p=0.5,
                                        rot90_p=0.5, jitter_p=0.8, brightness=0.2, contrast=0.2, saturation=0.2,
                                        hue=0.02, grayscale_p=0.0, blur_p=0.2, blur_sigma=(0.1, 1.0),
                                        solarize_p=0.0), **overrides))


def cpu(c):
  """600 steps at batch 128: the 2-core CPU budget."""
  c.train.num_steps = 600
  c.train.batch_size = 128
  c.train.warmup_steps = 30
  c.train.checkpoint_every = 200


def quick(c):
  """20 steps of a ResNet-18 x0.125 on a few hundred crops: a smoke run of the whole mode."""
  c.model.width_multiplier = 0.125
  c.model.projector_hidden_dims = (64,)
  c.model.projector_dim = 32
  c.train.batch_size = 32
  c.train.num_steps = 20
  c.train.warmup_steps = 2
  c.train.log_every = 10
  c.train.checkpoint_every = 20
  c.eval.batch_size = 64
  c.particles.max_examples = 400
  c.particles.shots = (1, 5)
  c.particles.shot_seeds = (0, 1)


def get_config(arg=None):
  c = _fundus.base("simclr")  # The fundus family's optimiser recipe (AdamW 2e-3, cosine) and heads.
  c.mode = "particles"
  c.data.builder = "bccd"
  c.data.builder_config = "64"
  c.data.manual_dir = str(shared.shared_data_dir() / "bccd")
  c.data.image_size = 64
  c.data.val_split = "validation"
  c.model.encoder = "resnet18"
  c.model.stem = "imagenet"
  c.model.width_multiplier = 0.25
  c.augment.views = [_view(64), _view(64, blur_p=0.1)]
  c.train.batch_size = 256
  c.train.num_steps = 3000
  c.train.warmup_steps = 100
  c.train.checkpoint_every = 500
  c.eval.compare_random_init = True
  c.particles.holdout_class = "WBC"
  c.particles.shots = (1, 5, 10)
  c.particles.shot_seeds = (0, 1, 2)
  c.particles.knn_k = 10
  c.particles.max_examples = 2000
  c.particles.embedding_method = "tsne"
  return config_lib.with_variant(c, arg, {"cpu": cpu, "quick": quick})

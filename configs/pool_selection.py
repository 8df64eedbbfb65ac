"""Pretraining-data selection (SEPT-style) on the shared data: pretrain on the pool images nearest to the target's,
vs a random subset of the same size, vs the whole pool, at one pretraining budget; evaluated on the target.

Reproduces: the data-selection idea of SEPT (Lin et al. 2022, "SEPT: Towards scalable and efficient visual
            pre-training"): retrieve, from a large unlabelled pool, the images nearest to the target task's images in an
            embedding space and pretrain on them. Pool: image_pool/shared_gray_28 (NIH ChestX-ray14 1000 train, RetinaMNIST
            train, HRF, CHASE_DB1, BCCD cell crops: 4,576 images, 28 px grayscale; 619 of them chest X-rays). Target:
            PneumoniaMNIST (not in the pool). Mode "sept" (medssl_jax/projects/selection): SimCLR (the MedMNIST recipe of
            configs/medmnist_simclr.py) on the whole pool; that encoder embeds pool and target; the 25% of the pool
            nearest to the target's training images (cosine, nearest target image) and a seeded random 25% are each
            pretrained on with the same number of steps; every arm's encoder is linear-probed on PneumoniaMNIST (train ->
            test), beside a random encoder. No published medical-image numbers to compare with.
Command:    python main.py --config=configs/pool_selection.py:cpu --workdir=/tmp/sept/s0 --config.seed=0   (per seed)
            python -m medssl_jax.tables.collect --arm="nearest 25%=/tmp/sept/s0/nearest,/tmp/sept/s1/nearest,..." \\
                --arm="random 25%=/tmp/sept/s0/random,..." --arm="whole pool=/tmp/sept/s0/pool,..."
            Variants: `:cpu` (ResNet-18 x0.25 (28), 1,000 steps at batch 128 per arm: what a 2-core CPU affords);
            `:quick` (a narrow network, 30 steps per arm: the plumbing); none: full width, 2,000 steps at batch 256.
Data:       $MEDSSL_SHARED_DATA (the pool's members in their folders) and $MEDSSL_SHARED_DATA/pneumoniamnist.
Expected:   `:cpu` on the 2-core dev machine, about 35 min per seed (three 10-13 min pretrainings, seconds for the
            selections and probes); seeds 0-2 in docs/tables/pool_selection_cpu.md: PneumoniaMNIST AUROC nearest 0.949
            ± 0.006, random 0.945 ± 0.004, whole pool 0.943 ± 0.010, random encoder 0.919 ± 0.002.
"""
from medssl_jax import config as config_lib
from medssl_jax.data import shared

VARIANTS = ("quick", "cpu")


def get_config(arg=None):
  if arg and arg not in VARIANTS:
    raise config_lib.unknown_variant(arg, VARIANTS)
  c = config_lib.load("medmnist_simclr", "pneumoniamnist" + (",quick" if arg == "quick" else ""))
  c.mode = "sept"
  c.data.builder, c.data.builder_config = "image_pool", "shared_gray_28"
  c.data.manual_dir = str(shared.shared_data_dir())
  c.data.val_split = ""
  c.eval.ordinal = False
  c.selection.builder, c.selection.builder_config = "medmnist", "pneumoniamnist"
  c.selection.manual_dir = str(shared.shared_data_dir() / "pneumoniamnist")
  c.selection.target_split, c.selection.target_test_split = "train", "test"
  c.selection.fraction = 0.25
  if arg == "cpu":
    c.model.width_multiplier = 0.25
    c.train.batch_size = 128
    c.train.num_steps = 1000
  return c

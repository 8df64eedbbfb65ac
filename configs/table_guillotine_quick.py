"""Table: where to cut a SimCLR network (backbone vs. projector layers), linear probe and kNN, with
neural-collapse measures per layer, on the quick fundus config.

Reproduces: nothing published (synthetic data); the "guillotine" comparison (Bordes et al.
            2023, "Guillotine regularization"): the same frozen SimCLR encoder probed at its backbone output
            (global average pool), after the projector's hidden layer (BN + ReLU) and at the projection, each
            beside a randomly initialised encoder (BatchNorm recalibrated) at the same layer; plus
            neural-collapse measures (NC1 = tr(S_W pinv(S_B))/C, within/between-class variability) of every
            layer's train and test features (medssl_jax/evals/representation.py). Both protocols of a seed
            share one pretraining; all layers come from one forward pass.
Command:    python -m medssl_jax.tables.runner --table=configs/table_guillotine_quick.py --workdir=/tmp/table_guillotine_quick
            (writes /tmp/table_guillotine_quick/guillotine_quick.{md,csv}; rerunning reuses every finished row).
            One experiment alone: python main.py --config=configs/fundus_simclr.py:quick --workdir=/tmp/g \\
              --config.eval.feature_layers="('backbone','projector/hidden1','projector/out')" --config.eval.neural_collapse=True
Variants:   `:quick` is accepted and is the same table (the rows are already the quick runs).
Data:       synthetic_fundus/small (built on first use; 512 train / 64 validation / 256 test images).
Expected / wall-clock: 80 s on the 2-core dev machine (shared with other jobs) from a cold XLA compile cache,
            29 s warm (2 pretrainings x 40 steps; 4 rows x 2 encoders x 3 layers). Linear probe, mean of 2
            seeds: SimCLR accuracy / AUROC 0.318 / 0.553 at the backbone, 0.297 / 0.569 after the hidden
            layer, 0.270 / 0.530 at the projection; the random encoder 0.28-0.34 / 0.55-0.58 at every layer
            (seed std up to 0.04). NC1 (train) grows towards the projection (SimCLR 35 -> 33 -> 61, random
            14 -> 14 -> 23). 40 steps of a tiny model: the rows exercise the wiring; they are not a finding
            about where to cut.
Layers:     any of medssl_jax.evals.representation.available_layers(model) may be listed: here "stage1" ..
            "stage3" (pooled ResNet stages), "backbone", "projector/hidden1", "projector/out".

`get_table` returns the table (medssl_jax/tables/runner.py documents its keys); `get_config` returns the
base experiment (fundus_simclr:quick with these layers), so this file is also a normal config.
"""
import ml_collections

from medssl_jax import config as config_lib

LAYERS = ("backbone", "projector/hidden1", "projector/out")


def _variant(c, arg):
  return config_lib.with_variant(c, arg, {"quick": lambda c: None})


def get_table(arg=None):
  t = ml_collections.ConfigDict()
  t.name = "guillotine_quick"
  t.description = ("SimCLR (ResNet-18 x0.125, 40 steps, batch 16) on synthetic_fundus/small, probed at the backbone "
                   "and at each projector layer (a 'layer' column), linear probe and kNN (k=20) on all labels; "
                   "NC1 (train / test) per layer: lower = tighter classes.")
  t.base_config = "configs/fundus_simclr.py:quick"
  t.grid = ml_collections.ConfigDict()
  t.grid.eval = ml_collections.ConfigDict()
  t.grid.eval.protocol = ("linear_probe", "knn")
  t.grid.seed = (0, 1)
  # One row probes every layer (a 'layer' column in the tables), so the layers share a forward pass.
  t.overrides = ml_collections.ConfigDict()
  t.overrides.eval = ml_collections.ConfigDict(dict(feature_layers=LAYERS, neural_collapse=True))
  return _variant(t, arg)


def get_config(arg=None):
  """The table's base experiment config with its layers and neural collapse, as every file in configs/ provides."""
  c = config_lib.table_base_config(get_table())
  c.eval.feature_layers = LAYERS
  c.eval.neural_collapse = True
  return _variant(c, arg)

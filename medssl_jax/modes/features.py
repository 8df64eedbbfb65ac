"""mode "features": the frozen encoder's features of config.data's splits, written for use in other tools.

For the pretrained encoder in the workdir (a checkpoint of mode "pretrain"), the backbone features of each split in
`features.splits` (() = data.train_split and data.test_split) as the linear probe sees them (ResNet: global average
pool; ViT: class token; inference mode, views[0]'s crop size, data.mean / std), with the records' labels and ids, in
<workdir>/features/<split>.npz: "features" float32 [N, D], "label", "id". A split whose file exists is read back,
never recomputed or overwritten.
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np

from medssl_jax import config as config_lib
from medssl_jax import paths
from medssl_jax.data import pipeline
from medssl_jax.evals import linear_probe
from medssl_jax.protocols import encoders as encoders_lib


def features_section() -> ml_collections.ConfigDict:
  """The `features` section (mode "features")."""
  c = ml_collections.ConfigDict()
  c.splits = ()  # Splits written (() = data.train_split and data.test_split).
  return c


def check(config):
  splits = config.features.splits
  if isinstance(splits, str) or not isinstance(splits, (tuple, list)) or not all(
      isinstance(s, str) and s for s in splits):
    raise ValueError(f"config.features.splits must be a tuple of split names (() = data.train_split and "
                     f"data.test_split), e.g. ('train', 'test'), got {splits!r}")


config_lib.register_section("features", features_section)


def features(config, workdir: str, *, mesh=None) -> dict:
  """Writes (or reads back) <workdir>/features/<split>.npz per split; returns {split: {"path", "shape"}}."""
  d = config.data
  builder = pipeline.open_dataset(d)
  splits = tuple(config.features.splits) or (d.train_split, d.test_split)
  for split in splits:
    pipeline.num_examples(builder, split)  # An unknown split fails before the encoder is loaded.
  out_dir = paths.join(workdir, "features")
  model = variables = None
  out = {}
  for split in splits:
    path = paths.join(out_dir, f"{split.replace('/', '_')}.npz")
    if not paths.exists(path):
      if model is None:
        model, variables = encoders_lib.load_pretrained(config, workdir)
      data = pipeline.load_split_arrays(builder, split=split, image_size=d.image_size, fit=d.fit)
      feats = linear_probe.extract_features(model, variables, data["image"],
                                            image_size=config.augment.views[0].crop_size, mean=tuple(d.mean),
                                            std=tuple(d.std), batch_size=config.eval.batch_size, mesh=mesh)
      if jax.process_index() == 0:
        # Atomic: never a half-written file where a finished one is expected.
        paths.save_npz(path, features=feats.astype(np.float32), label=data["label"], id=data["id"])
      print(f"features [{split}]: {feats.shape[0]} records x {feats.shape[1]} dims -> {path}", flush=True)
    else:
      print(f"features [{split}]: already in {path}", flush=True)
    out[split] = {"path": path, "shape": tuple(paths.load_npz(path)["features"].shape)}
  return out


MODES = {"features": features}

"""SWCL: semi-weakly supervised contrastive learning on fundus patches (Yap & Ng 2021, arXiv:2108.02122).

Pretraining data are patches (four corners + centre of each fundus image, right eyes mirrored so
positions match) from the `swcl_patches` dataset, whose records carry semi-weak labels: 'patient',
'position' (0-4), 'abnormality' (a [0, 1] score from the pseudo-labeller's class activation maps) and
'pseudo_label' ([K] class probabilities). `config.objective.swcl.scheme` names the labels that make
two patches positives:

* ("pair",): only the two views of one patch (SimCLR on patches);
* otherwise patches are positives when ALL named keys agree: same 'patient', same 'position',
  'abnormality' on the same side of `config.objective.swcl.abnormality_threshold`; with 'pseudo_label' the
  weight is the Jaccard overlap of the pseudo-label sets (classes above
  `config.objective.swcl.pseudo_label_threshold`; two empty sets overlap fully).

The two views of one patch are always positives with weight 1. The loss is
`weighted_contrastive_loss` (objectives/contrastive.py) on the global batch.
"""
from __future__ import annotations

import jax.numpy as jnp

from medssl_jax.objectives.base import Objective
from medssl_jax.objectives.contrastive import weighted_contrastive_loss

# Scheme key -> the dataset feature it reads (None: no feature).
SCHEME_FEATURES = {"pair": None, "patient": "patient", "position": "position", "abnormality": "abnormality",
                   "pseudo_label": "pseudo_label"}
SCHEME_KEYS = tuple(SCHEME_FEATURES)


def check_scheme(scheme) -> tuple[str, ...]:
  """Returns the scheme as a tuple, or raises a ValueError naming what is wrong and the valid keys."""
  where = f"config.objective.swcl.scheme={scheme!r}"
  if isinstance(scheme, str) or not isinstance(scheme, (tuple, list)):
    raise ValueError(f"{where} must be a tuple of keys from {list(SCHEME_KEYS)}, e.g. ('patient', 'position')")
  scheme = tuple(scheme)
  if not scheme:
    raise ValueError(f"{where} is empty; give ('pair',) or keys from {list(SCHEME_KEYS[1:])}")
  unknown = [k for k in scheme if k not in SCHEME_FEATURES]
  if unknown:
    raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {list(SCHEME_KEYS)}")
  if len(set(scheme)) != len(scheme):
    raise ValueError(f"{where} repeats a key; valid keys: {list(SCHEME_KEYS)}")
  if "pair" in scheme and len(scheme) > 1:
    raise ValueError(f"{where}: 'pair' (only the two views of a patch) cannot be combined with other keys; "
                     f"use ('pair',) or keys from {list(SCHEME_KEYS[1:])}")
  return scheme


def scheme_features(scheme) -> tuple[str, ...]:
  """The dataset features a scheme reads, in scheme order (('pair',) reads none)."""
  return tuple(SCHEME_FEATURES[k] for k in check_scheme(scheme) if SCHEME_FEATURES[k] is not None)


def _batch_keys(config) -> tuple[str, ...]:
  return scheme_features(tuple(config.objective.swcl.scheme))


def positive_weights(*, batch, num_views: int, scheme, abnormality_threshold: float = 0.5,
                     pseudo_label_threshold: float = 0.5):
  """[V*B, V*B] float32 positive weights for views stacked as [view0 batch; view1 batch; ...].

  Entry (i, j) is the weight of row j as a positive of anchor row i (see the module docstring); rows
  i and j are views of the same patch when i % B == j % B, and then the weight is 1. The diagonal is
  1 too (the loss ignores it).

  Args:
    batch: dict with the features the scheme reads, each with B leading rows: 'patient' [B] int,
      'position' [B] int, 'abnormality' [B] float, 'pseudo_label' [B, K] float.
    num_views: V.
    scheme: tuple of keys (see `check_scheme`).
    abnormality_threshold: a patch is abnormal when its score is above this.
    pseudo_label_threshold: a class is in a patch's pseudo-label set when its probability is above this.
  """
  scheme = check_scheme(scheme)
  missing = [SCHEME_FEATURES[k] for k in scheme if SCHEME_FEATURES[k] and SCHEME_FEATURES[k] not in batch]
  if missing:
    raise KeyError(f"swcl_scheme {scheme} needs batch features {missing}; the batch has {sorted(batch)} "
                   f"(the input pipeline adds them via Objective.batch_keys / make_train_iterator(extra_keys=...))")
  feats = [batch[SCHEME_FEATURES[k]] for k in scheme if SCHEME_FEATURES[k]]
  b = (feats[0] if feats else batch["label"]).shape[0]
  same_patch = jnp.eye(b, dtype=jnp.bool_)
  if scheme == ("pair",):
    w = same_patch.astype(jnp.float32)
  else:
    agree = jnp.ones((b, b), jnp.bool_)
    w = jnp.ones((b, b), jnp.float32)
    for key in scheme:
      x = batch[SCHEME_FEATURES[key]]
      if x.shape[0] != b:
        raise ValueError(f"batch[{key!r}] has {x.shape[0]} rows, expected {b} like the other features")
      if key in ("patient", "position"):
        x = x.reshape(b)
        agree &= x[:, None] == x[None, :]
      elif key == "abnormality":
        high = x.reshape(b).astype(jnp.float32) > abnormality_threshold
        agree &= high[:, None] == high[None, :]
      else:  # pseudo_label: Jaccard overlap of the thresholded class sets.
        on = (x.reshape(b, -1).astype(jnp.float32) > pseudo_label_threshold).astype(jnp.float32)
        inter = on @ on.T
        union = on.sum(axis=1)[:, None] + on.sum(axis=1)[None, :] - inter
        w = w * jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 1.0)
    w = jnp.where(same_patch, 1.0, jnp.where(agree, w, 0.0))
  return jnp.tile(w, (num_views, num_views))


def swcl_loss(*, student, teacher, batch, state, step, config):
  """The SWCL objective (Objective contract, objectives/base.py): weighted InfoNCE over all views'
  projections with positives from `config.objective.swcl.scheme`."""
  del teacher, state, step
  num_views = len(student)
  projections = jnp.concatenate([s["projection"] for s in student], axis=0)
  s = config.objective.swcl
  weights = positive_weights(batch=batch, num_views=num_views, scheme=tuple(s.scheme),
                             abnormality_threshold=s.abnormality_threshold,
                             pseudo_label_threshold=s.pseudo_label_threshold)
  if weights.shape[0] != projections.shape[0]:
    raise ValueError(f"batch features have {weights.shape[0] // num_views} rows but the views have "
                     f"{projections.shape[0] // num_views}")
  value, metrics = weighted_contrastive_loss(embeddings=projections, positive_weights=weights,
                                             temperature=config.objective.temperature)
  # Positives per anchor beyond the views of its own patch (which, with itself, are num_views): what the
  # semi-weak labels add to SimCLR.
  metrics = dict(metrics, extra_positives=(weights > 0).sum() / weights.shape[0] - num_views)
  return value, metrics, {}


SWCL = Objective("swcl", "Yap & Ng 2021, Semi-weakly Supervised Contrastive Learning for Retinal Fundus "
                 "Images (arXiv:2108.02122)", swcl_loss, batch_keys=_batch_keys)

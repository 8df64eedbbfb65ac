"""Self-supervised objectives: keyword-only pure losses returning (loss, metrics), and their registry.

`OBJECTIVES` maps a config name (`config.objective.name`) to the module attribute holding its
`Objective` (see objectives/base.py for the contract with the trainer). Entries are imported lazily,
so listing the names stays cheap. Each objective's explicit state (EMA teacher, queue, centre)
lives in `TrainState.objective_state`.
"""
from __future__ import annotations

import importlib

import jax.numpy as jnp

from medssl_jax import models
from medssl_jax.objectives.base import Objective
from medssl_jax.objectives.contrastive import (contrastive_loss, l2_normalize, multiview_ids,
                                               weighted_contrastive_loss)

# name -> "module:ATTRIBUTE" (an Objective).
OBJECTIVES = {
    "simclr": "medssl_jax.objectives:SIMCLR",
    "supcon": "medssl_jax.objectives:SUPCON",
    "moco_v2": "medssl_jax.objectives.moco:MOCO_V2",
    "moco_v3": "medssl_jax.objectives.moco:MOCO_V3",
    "byol": "medssl_jax.objectives.byol:BYOL",
    "relic": "medssl_jax.objectives.relic:RELIC",
    "simsiam": "medssl_jax.objectives.simsiam:SIMSIAM",
    "barlow_twins": "medssl_jax.objectives.barlow_twins:BARLOW_TWINS",
    "vicreg": "medssl_jax.objectives.vicreg:VICREG",
    "swav": "medssl_jax.objectives.swav:SWAV",
    "dino": "medssl_jax.objectives.dino:DINO",
    "mae": "medssl_jax.objectives.mae:MAE",
    "swcl": "medssl_jax.objectives.swcl:SWCL",
    "clip": "medssl_jax.objectives.image_text:CLIP",
    "convirt": "medssl_jax.objectives.image_text:CONVIRT",
    "joint": "medssl_jax.objectives.image_text:JOINT",
}


def _contrastive(positives: str):
  def loss(*, student, teacher, batch, state, step, config):
    del teacher, state, step
    num_views = len(student)
    projections = jnp.concatenate([s["projection"] for s in student], axis=0)
    # Instance positives use the row index, not the dataset id: a batch that straddles two epochs can
    # hold the same image twice, and those copies must still count as different instances.
    b = batch["label"].shape[0]
    base = jnp.arange(b) if positives == "instance" else batch["label"]
    value, metrics = contrastive_loss(embeddings=projections, ids=multiview_ids(base, num_views),
                                      temperature=config.objective.temperature)
    return value, metrics, {}
  return loss


SIMCLR = Objective("simclr", "Chen et al. 2020, A Simple Framework for Contrastive Learning of Visual "
                   "Representations (ICML)", _contrastive("instance"))
SUPCON = Objective("supcon", "Khosla et al. 2020, Supervised Contrastive Learning (NeurIPS)", _contrastive("label"))


def get_objective(name: str) -> Objective:
  """Looks an objective up by its config name."""
  if name not in OBJECTIVES:
    raise ValueError(f"config.objective.name={name!r} is not known; valid choices: {sorted(OBJECTIVES)}")
  module, attr = OBJECTIVES[name].split(":")
  try:
    return getattr(importlib.import_module(module), attr)
  except ModuleNotFoundError as e:
    if e.name != module:
      raise
    raise NotImplementedError(f"objective {name!r} is registered but {module} does not exist yet") from e


def build_model(config):
  """The model for config.objective: its own model (MAE, image-text), or backbone + the objective's heads."""
  objective = get_objective(config.objective.name)
  if objective.build_model is not None:
    return objective.build_model(config)
  heads = (objective.heads or models.default_heads)(config)
  return models.SSLModel(backbone=models.build_backbone(config), **heads)


def available() -> list[str]:
  """Registered objectives whose module exists (all of them once the zoo is complete)."""
  out = []
  for name in sorted(OBJECTIVES):
    try:
      get_objective(name)
      out.append(name)
    except NotImplementedError:
      pass
  return out


__all__ = ["OBJECTIVES", "Objective", "available", "build_model", "contrastive_loss", "get_objective", "l2_normalize",
           "multiview_ids", "weighted_contrastive_loss"]

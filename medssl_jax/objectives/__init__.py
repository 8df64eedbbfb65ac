"""Self-supervised objectives as keyword-only pure functions returning (loss, metrics).

`OBJECTIVES` maps a config name to what the train step needs to know about it: which ids define
positives. Each entry is small on purpose; objectives with state (EMA teacher, queue, centre) add it
explicitly to the train state.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from medssl_jax.objectives.contrastive import contrastive_loss, l2_normalize, multiview_ids


@dataclasses.dataclass(frozen=True)
class Objective:
  """A named objective: how a two-view batch of projections becomes (loss, metrics)."""
  name: str
  paper: str
  positives: str  # "instance" (same image) or "label" (same class label)

  def __call__(self, *, projections, batch, num_views, temperature, mask=None):
    """projections: [V*B, D] views stacked along the batch; batch: the host batch dict."""
    # Instance positives use the row index, not the dataset id: a batch that straddles two epochs can
    # hold the same image twice, and those copies must still count as different instances.
    b = batch["label"].shape[0]
    base = jnp.arange(b) if self.positives == "instance" else batch["label"]
    ids = multiview_ids(base, num_views)
    view_mask = None if mask is None else jnp.tile(mask, num_views)
    return contrastive_loss(embeddings=projections, ids=ids, temperature=temperature, mask=view_mask)


OBJECTIVES = {
    "simclr": Objective("simclr", "Chen et al. 2020, A Simple Framework for Contrastive Learning", "instance"),
    "supcon": Objective("supcon", "Khosla et al. 2020, Supervised Contrastive Learning", "label"),
}


def get_objective(name: str) -> Objective:
  """Looks an objective up by its config name."""
  if name not in OBJECTIVES:
    raise ValueError(f"config.objective.name={name!r} is not known; valid choices: {sorted(OBJECTIVES)}")
  return OBJECTIVES[name]


__all__ = ["OBJECTIVES", "Objective", "contrastive_loss", "get_objective", "l2_normalize", "multiview_ids"]

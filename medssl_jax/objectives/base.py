"""The contract between an objective and the trainer (medssl_jax/train/step.py).

An `Objective` names a pure loss function and declares what the trainer must provide:

* `heads(config)`: the heads on top of the backbone (projector, predictor, prototypes, DINO head).
* `teacher=True`: an EMA copy of the parameters in `state.objective_state["teacher"]`, updated after
  every optimizer step with the momentum schedule of `config.objective` (BYOL / MoCo / DINO).
* `init_state(config, outputs)`: any other explicit state (a MoCo queue, a DINO centre), created
  from the shapes of one forward pass; the loss returns its updated values.
* `multi_crop=True`: views may have different crop sizes (SwAV, DINO); each size is encoded in its
  own forward pass.
* `batch_keys(config)`: dataset features besides image/label/id that the loss reads from `batch`
  (e.g. SWCL's 'patient', 'position', ... as its scheme names them); the trainer asks the input
  pipeline for them (`make_train_iterator(extra_keys=...)`) and fails before training when the
  dataset lacks one. None: none needed.
* `text=True`: the loss reads the paired report. The trainer trains (or reuses) a tokenizer on the
  dataset's `config.text.key` feature, batches carry 'text_ids' / 'text_mask', and the step encodes them
  with the model's text tower (`model.encode_text`, models/image_text.py), adding
  batch["text_embedding"] [B, D] and batch["logit_scale"] before calling the loss.

The loss is keyword-only and pure:

    loss(*, student, teacher, batch, state, step, config) -> (loss, metrics, state_updates)

`student` is a list with one model-output dict per view (e.g. {"features", "projection",
"prediction"}, each [B, ...] over the GLOBAL batch); `teacher` the same for the first
`teacher_views` views (0: `config.objective.num_global_views`) encoded by the EMA teacher (already stop-gradient), or None; `state` the
objective state (without the teacher); `state_updates` a dict of new values for some of its keys.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Objective:
  """What the trainer needs to know about one self-supervised objective."""
  name: str
  paper: str
  loss: Callable[..., tuple[Any, dict, dict]]
  heads: Callable[[Any], dict] | None = None   # None: the default MLP projector.
  build_model: Callable[[Any], Any] | None = None  # Replaces backbone + heads entirely (MAE).
  teacher: bool = False
  teacher_views: int = 2                        # Leading views the teacher encodes (0: num_global_views).
  evaluate_teacher: bool = False                # Probes and exports use the EMA teacher's weights (DINO's paper).
  init_state: Callable[[Any, Any], dict] | None = None
  multi_crop: bool = False
  batch_keys: Callable[[Any], tuple] | None = None  # config -> extra dataset features the loss reads.
  text: bool = False                            # Reads report text (image-text objectives, see below).

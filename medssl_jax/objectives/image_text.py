"""Image-text contrastive losses (CLIP, ConVIRT) and retrieval recall@k.

Both losses are InfoNCE between paired image and text embeddings: with s_ij the cosine similarity of
image i and text j and t the temperature,

    L_i2t = mean_i -log( exp(s_ii / t) / sum_j exp(s_ij / t) )     (image anchors, text candidates)
    L_t2i = mean_j -log( exp(s_jj / t) / sum_i exp(s_ij / t) )     (text anchors, image candidates)

CLIP (Radford et al. 2021) averages the two directions: (L_i2t + L_t2i) / 2. ConVIRT (Zhang et al.
2020) weights them: lambda * L_i2t + (1 - lambda) * L_t2i, so ConVIRT with lambda = 0.5 is CLIP at the
same temperature. Temperature convention: both take t itself (logits = s / t). CLIP's learnable
`logit_scale` is log(1 / t); a caller learning it passes temperature=exp(-logit_scale) (any traced
scalar works), and clamps it as it sees fit.

Like objectives/contrastive.py the losses are written on the *global* batch: under jit with a
data-sharded batch XLA gathers what the [N, N] similarity matrix needs, so every row sees every
other row's pair as a negative (no per-device negatives, no hand-written all_gather).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from medssl_jax import models
from medssl_jax.models.image_text import ImageTextModel
from medssl_jax.models.text import TextTransformer
from medssl_jax.objectives.base import Objective
from medssl_jax.objectives.contrastive import contrastive_loss, l2_normalize, multiview_ids

_NEG_INF = -1e9


def _check_pair(image_embeddings, text_embeddings, mask):
  if image_embeddings.ndim != 2 or text_embeddings.ndim != 2:
    raise ValueError(f"image_embeddings and text_embeddings must be [N, D], got shapes "
                     f"{image_embeddings.shape} and {text_embeddings.shape}")
  if image_embeddings.shape != text_embeddings.shape:
    raise ValueError(f"image_embeddings {image_embeddings.shape} and text_embeddings {text_embeddings.shape} "
                     "must have the same shape [N, D] (row i of each is one pair)")
  n = image_embeddings.shape[0]
  if mask is not None and mask.shape != (n,):
    raise ValueError(f"mask must be [N]=({n},), got shape {mask.shape}")


def _directional_losses(image_embeddings, text_embeddings, temperature, mask):
  """(L_i2t, L_t2i, metrics) over the valid pairs; see the module docstring for the formulas."""
  _check_pair(image_embeddings, text_embeddings, mask)
  n = image_embeddings.shape[0]
  valid = jnp.ones((n,), jnp.bool_) if mask is None else mask.astype(jnp.bool_)
  sim = l2_normalize(image_embeddings) @ l2_normalize(text_embeddings).T  # [images, texts]
  pair_valid = valid[:, None] & valid[None, :]
  logits = jnp.where(pair_valid, sim / temperature, _NEG_INF)
  diag = jnp.diagonal(logits)
  # Rows of padding have every logit at -1e9 (finite, so no NaN); they are dropped from the mean.
  i2t = jax.nn.logsumexp(logits, axis=1) - diag
  t2i = jax.nn.logsumexp(logits, axis=0) - diag
  num = jnp.maximum(valid.sum(), 1)
  loss_i2t = jnp.where(valid, i2t, 0.0).sum() / num
  loss_t2i = jnp.where(valid, t2i, 0.0).sum() / num

  eye = jnp.eye(n, dtype=jnp.bool_)
  masked_sim = jnp.where(pair_valid, sim, _NEG_INF)
  idx = jnp.arange(n)
  i2t_hit = jnp.argmax(masked_sim, axis=1) == idx
  t2i_hit = jnp.argmax(masked_sim, axis=0) == idx
  negatives = pair_valid & ~eye
  metrics = {
      "i2t_top1": jnp.where(valid, i2t_hit, False).sum() / num,
      "t2i_top1": jnp.where(valid, t2i_hit, False).sum() / num,
      "pos_sim": jnp.where(valid, jnp.diagonal(sim), 0.0).sum() / num,
      "neg_sim": jnp.where(negatives, sim, 0.0).sum() / jnp.maximum(negatives.sum(), 1),
      "num_pairs": valid.sum(),
  }
  metrics = {k: v.astype(jnp.float32) for k, v in metrics.items()}
  return loss_i2t, loss_t2i, metrics


def clip_loss(*, image_embeddings, text_embeddings, temperature=0.07, mask=None):
  """CLIP's symmetric InfoNCE: (L_i2t + L_t2i) / 2 over the global batch of pairs.

  Args:
    image_embeddings: [N, D] image projections; row i is paired with text row i.
    text_embeddings: [N, D] text projections.
    temperature: t in logits = cosine / t; a Python float or a (traced) scalar, e.g. exp(-logit_scale)
      for a learned CLIP logit scale.
    mask: optional [N] bool/0-1; pairs with mask 0 (padding) are neither anchors nor candidates.

  Returns:
    (loss, metrics): scalar float32 loss and float32 scalars
      i2t_top1 / t2i_top1: fraction of valid images (texts) whose most similar valid text (image) is
        their own pair,
      pos_sim / neg_sim: mean cosine similarity of matched / unmatched valid pairs,
      num_pairs: valid pairs, and loss_i2t / loss_t2i, the two directions.
  """
  loss_i2t, loss_t2i, metrics = _directional_losses(image_embeddings, text_embeddings, temperature, mask)
  metrics.update(loss_i2t=loss_i2t, loss_t2i=loss_t2i)
  return 0.5 * (loss_i2t + loss_t2i), metrics


def convirt_loss(*, image_embeddings, text_embeddings, temperature=0.1, image_to_text_weight=0.75, mask=None):
  """ConVIRT's bidirectional loss: lambda * L_i2t + (1 - lambda) * L_t2i (Zhang et al. 2020).

  Args as `clip_loss`, plus image_to_text_weight: lambda in [0, 1] (the paper's 0.75 by default).
  Returns (loss, metrics) with the same metrics as `clip_loss`.
  """
  if isinstance(image_to_text_weight, (int, float)) and not 0.0 <= image_to_text_weight <= 1.0:
    raise ValueError(f"image_to_text_weight (ConVIRT's lambda) must be in [0, 1], got {image_to_text_weight}")
  loss_i2t, loss_t2i, metrics = _directional_losses(image_embeddings, text_embeddings, temperature, mask)
  metrics.update(loss_i2t=loss_i2t, loss_t2i=loss_t2i)
  return image_to_text_weight * loss_i2t + (1.0 - image_to_text_weight) * loss_t2i, metrics


def retrieval_recall(*, image_embeddings, text_embeddings, ks: Sequence[int] = (1, 5, 10)) -> dict:
  """Cross-modal retrieval recall@k of paired embeddings (numpy, for evaluation).

  Image i's query succeeds at k when its own text i ranks among the k texts most cosine-similar to
  it (and symmetrically for texts). Candidates exactly as similar as the true pair (identical templated
  reports, collapsed embeddings) are ordered at random: the recall is its expectation, (k - g) / (t + 1)
  clipped to [0, 1] for g candidates strictly more similar and t tied ones, so fully collapsed embeddings score
  chance (k / N). k larger than N gives recall 1.

  Returns:
    {"i2t_R@k": float, "t2i_R@k": float} for each k in `ks`.
  """
  img = np.asarray(image_embeddings, np.float64)
  txt = np.asarray(text_embeddings, np.float64)
  _check_pair(img, txt, None)
  if any(int(k) < 1 for k in ks):
    raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
  img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
  txt = txt / np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
  sim = img @ txt.T
  pos = np.diagonal(sim)
  # Texts beating image i's own text, and those tied with it (itself excluded); then images for text j.
  beat_i2t, tied_i2t = (sim > pos[:, None]).sum(axis=1), (sim == pos[:, None]).sum(axis=1) - 1
  beat_t2i, tied_t2i = (sim > pos[None, :]).sum(axis=0), (sim == pos[None, :]).sum(axis=0) - 1
  out = {}
  for k in ks:
    out[f"i2t_R@{k}"] = float(np.mean(np.clip((k - beat_i2t) / (tied_i2t + 1), 0.0, 1.0)))
    out[f"t2i_R@{k}"] = float(np.mean(np.clip((k - beat_t2i) / (tied_t2i + 1), 0.0, 1.0)))
  return out


# ---------------------------------------------------------------------------------------------------------
# Objectives for the trainer (objectives/base.py contract). The model is models.image_text.ImageTextModel;
# the step encodes the batch's report tokens with its text tower (Objective.text) and hands the loss
# batch["text_embedding"] [B, D] and batch["logit_scale"].

MIN_TEMPERATURE = 0.01  # CLIP clamps its logit scale at 100.
IMAGE_TEXT_OBJECTIVES = ("clip", "convirt", "joint")


def build_image_text_model(config):
  """ImageTextModel for config: backbone, MLP image projector and linear text projection to
  model.projector_dim, text transformer from config.text, and for "joint" a SimCLR projector of the same
  shape (SLIP keeps the image-only head apart from the image-text one)."""
  m, t = config.model, config.text
  head = lambda: models.MLPHead(hidden_dims=tuple(m.projector_hidden_dims), out_dim=m.projector_dim)
  text = TextTransformer(vocab_size=t.vocab_size, width=t.width, depth=t.depth, heads=t.heads,
                         max_length=t.max_length, out_dim=m.projector_dim)
  return ImageTextModel(backbone=models.build_backbone(config), projector=head(), text=text,
                        ssl_projector=head() if config.objective.name == "joint" else None,
                        init_temperature=config.objective.image_text.temperature)


def temperature(batch, config):
  """The image-text temperature: exp(-logit_scale) clamped at MIN_TEMPERATURE when learned, else
  config.objective.image_text.temperature."""
  if config.objective.image_text.learn_temperature:
    return jnp.exp(-jnp.minimum(batch["logit_scale"], -np.log(MIN_TEMPERATURE)))
  return jnp.float32(config.objective.image_text.temperature)


def _image_text_part(name, student_view, batch, config):
  t = temperature(batch, config)
  if name == "clip":
    loss, metrics = clip_loss(image_embeddings=student_view["projection"], text_embeddings=batch["text_embedding"],
                              temperature=t)
  else:
    loss, metrics = convirt_loss(image_embeddings=student_view["projection"],
                                 text_embeddings=batch["text_embedding"], temperature=t,
                                 image_to_text_weight=config.objective.image_text.image_to_text_weight)
  metrics = dict(metrics, temperature=jnp.asarray(t, jnp.float32), top1=metrics["i2t_top1"])
  metrics.pop("num_pairs")
  return loss, metrics


def _make_loss(name):
  def loss(*, student, teacher, batch, state, step, config):
    del teacher, state, step
    if name in ("clip", "convirt"):
      if len(student) != 1:
        raise ValueError(f"objective {name!r} pairs one image view with its report; config.augment.views has "
                         f"{len(student)} views (use one)")
      value, metrics = _image_text_part(name, student[0], batch, config)
      return value, metrics, {}
    # joint (SLIP-style): ConVIRT's bidirectional loss (lambda = 0.5 is CLIP's) on view 0 + SimCLR on views 1..
    if len(student) < 3:
      raise ValueError(f"objective 'joint' needs view 0 for the report and at least two more views for SimCLR; "
                       f"config.augment.views has {len(student)}")
    it_loss, metrics = _image_text_part("convirt", student[0], batch, config)
    ssl = student[1:]
    b = ssl[0]["ssl_projection"].shape[0]
    ssl_loss, ssl_metrics = contrastive_loss(
        embeddings=jnp.concatenate([s["ssl_projection"] for s in ssl], axis=0),
        ids=multiview_ids(jnp.arange(b), len(ssl)), temperature=config.objective.temperature)
    w = config.objective.image_text.image_ssl_weight
    metrics.update(image_text_loss=it_loss, ssl_loss=ssl_loss, ssl_top1=ssl_metrics["top1"])
    return it_loss + w * ssl_loss, metrics, {}
  return loss


def _objective(name, paper):
  return Objective(name, paper, _make_loss(name), build_model=build_image_text_model, text=True)


CLIP = _objective("clip", "Radford et al. 2021, Learning Transferable Visual Models From Natural Language "
                  "Supervision (ICML)")
CONVIRT = _objective("convirt", "Zhang et al. 2020/2022, Contrastive Learning of Medical Visual Representations "
                     "from Paired Images and Text (MLHC)")
JOINT = _objective("joint", "Mu et al. 2022, SLIP: Self-supervision meets Language-Image Pre-training (ECCV); "
                   "joint image-report + image-only learning as compared by Huang et al. 2023 (MIDL)")

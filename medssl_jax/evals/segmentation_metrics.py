"""Binary segmentation metrics (numpy, host side): Dice, pixel AUROC, accuracy, sensitivity, specificity.

Retinal-vessel papers (DRIVE, CHASE_DB1, STARE) pool every pixel of every test image into one confusion
matrix / one ROC curve, usually only inside the field-of-view (FOV) mask; `segmentation_report` follows
that convention and reports the mean of per-image Dice alongside it.
"""
from __future__ import annotations

import numpy as np

from medssl_jax.evals.metrics import binary_auroc


def _binary(mask, name: str, *, fn: str) -> np.ndarray:
  """`mask` as a bool array, checking every value is 0/1 (or bool)."""
  m = np.asarray(mask)
  if m.dtype == bool:
    return m
  if not (np.issubdtype(m.dtype, np.number)):
    raise ValueError(f"{fn}: {name} must be a numeric or bool {{0, 1}} mask, got dtype {m.dtype}")
  bad = (m != 0) & (m != 1)
  if bad.any():
    raise ValueError(f"{fn}: {name} must be binary {{0, 1}}; found values "
                     f"{np.unique(m[bad])[:5].tolist()} (shape {m.shape})")
  return m.astype(bool)


def _check(a, a_name: str, true_mask, valid, *, fn: str, binary_a: bool):
  """Validated (a, true, valid) as flat arrays, restricted to the valid pixels."""
  true = _binary(true_mask, "true_mask", fn=fn)
  a = _binary(a, a_name, fn=fn) if binary_a else np.asarray(a, np.float64)
  if a.shape != true.shape:
    raise ValueError(f"{fn}: {a_name} shape {a.shape} does not match true_mask shape {true.shape}")
  if true.size == 0:
    raise ValueError(f"{fn}: true_mask is empty (shape {true.shape})")
  if valid is None:
    return a.ravel(), true.ravel()
  v = _binary(valid, "valid", fn=fn)
  if v.shape != true.shape:
    if true.ndim >= 3 and v.shape == true.shape[-2:]:
      v = np.broadcast_to(v, true.shape)  # One FOV mask [H, W] shared by all images.
    else:
      raise ValueError(f"{fn}: valid shape {v.shape} must equal true_mask shape {true.shape} "
                       f"(or its trailing [H, W] {true.shape[-2:]})")
  return a[v], true[v]


def _confusion(pred: np.ndarray, true: np.ndarray):
  tp = int(np.sum(pred & true))
  fp = int(np.sum(pred & ~true))
  fn = int(np.sum(~pred & true))
  tn = int(np.sum(~pred & ~true))
  return tp, fp, fn, tn


def _ratio(num, den) -> float:
  return float(num / den) if den else float("nan")


def dice(pred_mask, true_mask, *, valid=None) -> float:
  """Dice = F1 of the positive class = 2 TP / (2 TP + FP + FN) over the pixels (inside `valid` if given).

  Masks are {0, 1} / bool arrays of the same shape (any rank; all pixels are pooled). Returns nan when
  both masks are empty (Dice is undefined there).
  """
  pred, true = _check(pred_mask, "pred_mask", true_mask, valid, fn="dice", binary_a=True)
  tp, fp, fn, _ = _confusion(pred, true)
  return _ratio(2 * tp, 2 * tp + fp + fn)


def pixel_auroc(scores, true_mask, *, valid=None) -> float:
  """ROC AUC of per-pixel scores against a {0, 1} mask, pooling all pixels (inside `valid` if given).

  Uses `metrics.binary_auroc` (Mann-Whitney with tied ranks); nan when only one class is present.
  """
  s, true = _check(scores, "scores", true_mask, valid, fn="pixel_auroc", binary_a=False)
  return binary_auroc(true, s)


def pixel_accuracy(pred_mask, true_mask, *, valid=None) -> float:
  """Fraction of pixels (inside `valid` if given) where the binary prediction equals the mask."""
  pred, true = _check(pred_mask, "pred_mask", true_mask, valid, fn="pixel_accuracy", binary_a=True)
  return _ratio(np.sum(pred == true), pred.size)


def segmentation_report(scores, true_masks, *, valid=None, threshold: float = 0.5) -> dict:
  """Binary segmentation metrics of probability maps, as the DRIVE / CHASE_DB1 papers report them.

  scores: [N, H, W] foreground probabilities in [0, 1]; true_masks: [N, H, W] {0, 1}; valid: optional
  {0, 1} field-of-view mask, [N, H, W] or one [H, W] for all images. Predictions are scores >= threshold.
  dice, auroc, accuracy, sensitivity (TP / (TP + FN)) and specificity (TN / (TN + FP)) are computed over
  all valid pixels pooled across images (one confusion matrix / one ROC curve for the whole set, the
  convention of the retinal-vessel literature), not averaged per image; `dice_per_image_mean` is the
  mean of per-image Dice (images whose prediction and mask are both empty are skipped, nan if all are).
  Undefined ratios are nan.
  """
  fn = "segmentation_report"
  s = np.asarray(scores, np.float64)
  true = _binary(true_masks, "true_masks", fn=fn)
  if s.ndim != 3 or s.shape != true.shape:
    raise ValueError(f"{fn}: scores {s.shape} and true_masks {true.shape} must both be [N, H, W] "
                     f"with the same shape")
  if s.size == 0:
    raise ValueError(f"{fn}: scores is empty (shape {s.shape})")
  if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
    raise ValueError(f"{fn}: scores must be finite probabilities in [0, 1], got range "
                     f"[{np.nanmin(s)}, {np.nanmax(s)}] (apply a sigmoid to logits first)")
  v = np.ones(true.shape, bool) if valid is None else _binary(valid, "valid", fn=fn)
  if v.shape == true.shape[1:]:
    v = np.broadcast_to(v, true.shape)
  if v.shape != true.shape:
    raise ValueError(f"{fn}: valid shape {v.shape} must equal true_masks shape {true.shape} or [H, W] "
                     f"{true.shape[1:]}")
  pred = s >= threshold
  tp, fp, fn_, tn = _confusion(pred[v], true[v])
  per_image = [dice(p, t, valid=m) for p, t, m in zip(pred, true, v)]
  finite = [d for d in per_image if not np.isnan(d)]
  return {
      "dice": _ratio(2 * tp, 2 * tp + fp + fn_),
      "auroc": binary_auroc(true[v], s[v]),
      "accuracy": _ratio(tp + tn, tp + fp + fn_ + tn),
      "sensitivity": _ratio(tp, tp + fn_),
      "specificity": _ratio(tn, tn + fp),
      "dice_per_image_mean": float(np.mean(finite)) if finite else float("nan"),
      "n_images": int(true.shape[0]),
  }

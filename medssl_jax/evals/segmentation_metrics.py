"""Segmentation metrics (numpy, host side): binary (Dice, pixel AUROC, accuracy, sensitivity, specificity) and
multi-class (per-class and mean Dice / IoU / one-vs-rest AUROC, cumulative-group Dice:
`multiclass_segmentation_report`).

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


# ----------------------------------------------------------------------------------------------------
# Multi-class (class-id label maps, e.g. REFUGE optic disc rim 1 / cup 2, background 0).

def class_metric_names(num_classes: int) -> list[str]:
  """The keys of `multiclass_segmentation_report` for `num_classes` (K >= 2) classes, summary first:
  dice, iou, auroc, accuracy, then per foreground class k = 1..K-1 dice_class_k, iou_class_k, auroc_class_k,
  then the cumulative groups dice_ge_k."""
  fg = range(1, int(num_classes))
  return (["dice", "iou", "auroc", "accuracy"] + [f"{m}_class_{k}" for k in fg for m in ("dice", "iou", "auroc")]
          + [f"dice_ge_{k}" for k in fg])


def _class_ids(labels, name: str, *, num_classes: int, fn: str) -> np.ndarray:
  """`labels` as int64, checking they are integers in [0, num_classes)."""
  m = np.asarray(labels)
  if m.dtype == bool or not np.issubdtype(m.dtype, np.integer):
    if not (np.issubdtype(m.dtype, np.floating) and np.all(m == np.round(m))):
      raise ValueError(f"{fn}: {name} must hold integer class ids, got dtype {m.dtype}")
  m = m.astype(np.int64)
  bad = (m < 0) | (m >= num_classes)
  if bad.any():
    raise ValueError(f"{fn}: {name} has class id(s) {np.unique(m[bad])[:5].tolist()} outside "
                     f"[0, {num_classes - 1}] (num_classes={num_classes})")
  return m


def multiclass_segmentation_report(probs, true_labels, *, valid=None) -> dict:
  """Multi-class segmentation metrics of softmax maps, pooled over the valid pixels of all images.

  probs: [N, H, W, K] class probabilities (K >= 2, each pixel's summing to 1; class 0 = background);
  true_labels: [N, H, W] integer class ids in [0, K); valid: optional {0, 1} field-of-view mask, [N, H, W]
  or one [H, W] for all images. The predicted class of a pixel is argmax_k probs (first on ties).
  Over all valid pixels pooled across images (one confusion matrix per class for the whole set), for each
  foreground class k = 1..K-1, with TP_k = #(pred = k and true = k), FP_k = #(pred = k, true != k),
  FN_k = #(pred != k, true = k):
    dice_class_k  = 2 TP_k / (2 TP_k + FP_k + FN_k)
    iou_class_k   = TP_k / (TP_k + FP_k + FN_k)
    auroc_class_k = ROC AUC of the score probs[..., k] for "true = k" against the rest (one-vs-rest).
  dice, iou, auroc: their means over the foreground classes (undefined classes skipped).
  dice_ge_k (k = 1..K-1): Dice of the cumulative group "class >= k", i.e. of the binary masks pred >= k
    and true >= k (for nested structures: REFUGE's k = 1 is the whole optic disc, k = 2 the cup, the
    challenge's convention).
  accuracy: fraction of valid pixels with pred = true (all classes).
  dice_per_image_mean: per image the mean foreground Dice (classes absent from its prediction and truth
    skipped), averaged over the images where it is defined. Undefined ratios are nan.
  Also returns num_classes and n_images.
  """
  fn = "multiclass_segmentation_report"
  p = np.asarray(probs, np.float64)
  if p.ndim != 4 or p.shape[-1] < 2:
    raise ValueError(f"{fn}: probs must be [N, H, W, K] with K >= 2 classes, got shape {p.shape}")
  k_all = p.shape[-1]
  true = _class_ids(true_labels, "true_labels", num_classes=k_all, fn=fn)
  if true.shape != p.shape[:3]:
    raise ValueError(f"{fn}: true_labels shape {true.shape} must be probs' [N, H, W] {p.shape[:3]}")
  if p.size == 0:
    raise ValueError(f"{fn}: probs is empty (shape {p.shape})")
  if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
    raise ValueError(f"{fn}: probs must be finite probabilities in [0, 1], got range [{np.nanmin(p)}, "
                     f"{np.nanmax(p)}] (apply a softmax to logits first)")
  v = np.ones(true.shape, bool) if valid is None else _binary(valid, "valid", fn=fn)
  if v.shape == true.shape[1:]:
    v = np.broadcast_to(v, true.shape)
  if v.shape != true.shape:
    raise ValueError(f"{fn}: valid shape {v.shape} must equal true_labels shape {true.shape} or [H, W] "
                     f"{true.shape[1:]}")
  pred = np.argmax(p, axis=-1)
  pv, tv = pred[v], true[v]
  out = {}
  for k in range(1, k_all):
    tp, fp, fn_, _ = _confusion(pv == k, tv == k)
    out[f"dice_class_{k}"] = _ratio(2 * tp, 2 * tp + fp + fn_)
    out[f"iou_class_{k}"] = _ratio(tp, tp + fp + fn_)
    out[f"auroc_class_{k}"] = binary_auroc(tv == k, p[..., k][v])
  for k in range(1, k_all):
    tp, fp, fn_, _ = _confusion(pv >= k, tv >= k)
    out[f"dice_ge_{k}"] = _ratio(2 * tp, 2 * tp + fp + fn_)

  def nanmean(vals):
    vals = [x for x in vals if not np.isnan(x)]
    return float(np.mean(vals)) if vals else float("nan")

  per_image = []
  for pi, ti, vi in zip(pred, true, v):
    per_class = []
    for k in range(1, k_all):
      tp, fp, fn_, _ = _confusion(pi[vi] == k, ti[vi] == k)
      per_class.append(_ratio(2 * tp, 2 * tp + fp + fn_))
    per_image.append(nanmean(per_class))
  fg = range(1, k_all)
  summary = {"dice": nanmean([out[f"dice_class_{k}"] for k in fg]),
             "iou": nanmean([out[f"iou_class_{k}"] for k in fg]),
             "auroc": nanmean([out[f"auroc_class_{k}"] for k in fg]),
             "accuracy": _ratio(np.sum(pv == tv), pv.size)}
  return {**summary, **out, "dice_per_image_mean": nanmean(per_image), "num_classes": int(k_all),
          "n_images": int(true.shape[0])}

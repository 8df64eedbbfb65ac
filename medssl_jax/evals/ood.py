"""Out-of-distribution evaluation: a classifier trained on one dataset scored on another sharing its label.

Protocol (named in every result as "protocol"):
  * A target is another dataset's split (config.ood.targets; default its "test" split) and a label map
    {target class: (source classes, ...)} grouping the source classifier's classes under the target's
    class names, e.g. PneumoniaMNIST -> NIH1000: {"normal": ("normal",), "abnormal": ("pneumonia",)};
    RetinaMNIST -> HRF: {"healthy": ("0",), "diabetic_retinopathy": ("1", "2", "3", "4")}.
  * Images are loaded exactly as the source run loads its own test split: the source config's
    data.image_size and data.fit; the target's images must have the source's data.channels (no silent
    RGB <-> grayscale conversion; an error names both).
  * Scores: the score of target class t is the sum of the source probabilities of the classes mapped to
    t, renormalised over the mapped classes (divided by the total mapped probability; a row whose mapped
    probability is 0 gets equal scores). Source classes mapped nowhere are ignored (their probability mass
    is reported as 1 - "mapped_mass_mean").
  * Target records whose class is not a key of the map are dropped and counted per class ("n_dropped",
    "dropped_per_class"). The mapped target classes keep the target dataset's class order ("classes").
  * Metrics (medssl_jax.evals.metrics): AUROC (2 mapped classes: the AUROC of the second class's score,
    which equals that of the first class's score for the first class after renormalisation; more: mean
    one-vs-rest), per-class AUROC, accuracy of the argmax of the grouped scores (lowest class on ties).

Multi-label source and target (CheXpert, MIMIC-CXR, NIH ChestX-ray14, synthetic_cxr; `score_multilabel`,
protocol PROTOCOL_MULTI_LABEL): the predictor returns per-class sigmoid probabilities [N, K_source] and the
target labels are [N, K_target] 0/1 (-1 = uncertain, CheXpert / MIMIC u_keep). The score of target class t
is the max of its mapped source probabilities: a finding is present if any finding mapped to it is (the
findings are not exclusive, so a sum could exceed 1 and has no meaning). AUROC per mapped target class
over its records whose label is not -1 (skipped, nan, when those hold one value), macro AUROC over the
others; no record is dropped; target classes not in the map are ignored and listed ("unmapped_classes").
`cxr_label_map(source names, target names)` builds the map of the findings the datasets share
(CXR_SHARED_FINDINGS). A single-label source with a multi-label target (or the reverse) is an error.

Use: medssl_jax/protocols/ood.py loads a run's config.ood.targets and scores them with a predictor from the
source run (linear_probe(..., return_predictor=True), finetune(..., return_predictor=True), or knn_scores on the
features); the functions here work on label maps, arrays and metrics only.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from medssl_jax.evals import metrics as metrics_lib

PROTOCOL = ("out-of-distribution: the source classifier applied to another dataset's split at the source's "
            "image size / fit; target class score = sum of its mapped source-class probabilities, renormalised "
            "over mapped classes; target records of unmapped classes dropped")
PROTOCOL_MULTI_LABEL = ("out-of-distribution, multi-label: the source classifier's per-class sigmoid probabilities "
                        "applied to another dataset's split at the source's image size / fit; target class score = "
                        "max of its mapped source-class probabilities; AUROC per mapped target class over records "
                        "not uncertain (-1), macro over classes with both values; unmapped target classes ignored")
def resolve_label_map(label_map: Mapping[str, Sequence[str]], *, target_classes: Sequence[str],
                      source_classes: Sequence[str], where: str = "label_map"):
  """Checks a label map against both datasets' class names and turns it into index arrays.

  Returns (mapped target class names in the target's class order, target_to_group [K_target] int
  (-1: dropped), group_matrix [K_source, T] float with 1 where a source class feeds a target group).
  """
  target_classes, source_classes = list(target_classes), list(source_classes)
  if not target_classes:
    raise ValueError(f"{where}: the target dataset has no class names (an unlabelled dataset, or a multi-label "
                     "builder without LABEL_NAMES?); OOD label maps need named target classes")
  if not source_classes:
    raise ValueError(f"{where}: no source class names (an unlabelled source, or a multi-label builder without "
                     "LABEL_NAMES?); OOD label maps need named source classes")
  for t, sources in label_map.items():
    if t not in target_classes:
      raise ValueError(f"{where}: target class {t!r} is not a class of the target dataset; its classes: "
                       f"{target_classes}")
    for s in sources:
      if s not in source_classes:
        raise ValueError(f"{where}[{t!r}]: source class {s!r} is not a class of the source dataset; its "
                         f"classes: {source_classes}")
  classes = [t for t in target_classes if t in label_map]
  target_to_group = np.array([classes.index(t) if t in label_map else -1 for t in target_classes], np.int64)
  matrix = np.zeros((len(source_classes), len(classes)), np.float64)
  for g, t in enumerate(classes):
    for s in label_map[t]:
      matrix[source_classes.index(s), g] = 1.0
  return classes, target_to_group, matrix


def group_probabilities(probs, group_matrix) -> tuple[np.ndarray, np.ndarray]:
  """(grouped scores [N, T] renormalised over the mapped classes, mapped mass [N]) for probs [N, K]."""
  probs = np.asarray(probs, np.float64)
  summed = probs @ np.asarray(group_matrix, np.float64)
  mass = summed.sum(axis=1)
  safe = np.where(mass > 0, mass, 1.0)[:, None]
  scores = np.where(mass[:, None] > 0, summed / safe, 1.0 / summed.shape[1])
  return scores, mass


def score_grouped(labels, probs, *, label_map: Mapping[str, Sequence[str]], target_classes: Sequence[str],
                  source_classes: Sequence[str], where: str = "label_map") -> dict:
  """OOD metrics of source-class probabilities [N, K_source] on target labels [N] (target class indices).

  Returns a JSON-ready dict: auroc, auroc_per_class (aligned with classes), accuracy, classes, n (scored),
  n_dropped and dropped_per_class (unmapped target classes), n_per_class, mapped_mass_mean,
  label_map, source_classes.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  k_src = len(source_classes)
  if labels.ndim != 1:
    raise ValueError(f"{where}: target labels must be [N] class indices (single-label), got shape {labels.shape}")
  if probs.shape != (len(labels), k_src):
    raise ValueError(f"{where}: the predictor must return [N, {k_src}] probabilities (one column per source class "
                     f"{list(source_classes)}) for the {len(labels)} target images, got shape {probs.shape}")
  if not np.all(np.isfinite(probs)) or probs.min(initial=0.0) < 0:
    raise ValueError(f"{where}: the predictor's scores must be finite, non-negative class probabilities (softmax "
                     "or kNN vote fractions, not logits)")
  classes, target_to_group, matrix = resolve_label_map(label_map, target_classes=target_classes,
                                                       source_classes=source_classes, where=where)
  if labels.size and (labels.min() < 0 or labels.max() >= len(target_classes)):
    raise ValueError(f"{where}: target labels must lie in [0, {len(target_classes)}), got [{labels.min()}, {labels.max()}]")
  group = target_to_group[labels.astype(np.int64)]
  keep = group >= 0
  y = group[keep]
  scores, mass = group_probabilities(probs[keep], matrix)
  dropped = {target_classes[c]: int(np.sum(labels[~keep] == c)) for c in range(len(target_classes))
             if target_to_group[c] < 0}
  result = dict(classes=classes, n=int(keep.sum()), n_dropped=int((~keep).sum()), dropped_per_class=dropped,
                n_per_class={c: int(np.sum(y == g)) for g, c in enumerate(classes)},
                label_map={t: list(v) for t, v in label_map.items()}, source_classes=list(source_classes))
  if y.size == 0:
    return dict(result, auroc=float("nan"), auroc_per_class=[float("nan")] * len(classes), accuracy=float("nan"),
                mapped_mass_mean=float("nan"))
  auc, per_class = metrics_lib.auroc(y, scores)
  return dict(result, auroc=float(auc), auroc_per_class=[float(a) for a in per_class],
              accuracy=metrics_lib.accuracy(y, scores), mapped_mass_mean=float(mass.mean()))


def score_multilabel(labels, probs, *, label_map: Mapping[str, Sequence[str]], target_classes: Sequence[str],
                     source_classes: Sequence[str], where: str = "label_map") -> dict:
  """OOD metrics of per-class source probabilities [N, K_source] on multi-label target labels [N, K_target].

  Target class t scores max(probs[:, s] for s mapped to t): present if any mapped finding is. Labels are
  0/1, -1 = uncertain (left out of that class's AUROC and accuracy only). Returns a JSON-ready dict: auroc
  (macro over the classes with a defined AUROC), auroc_per_class (aligned with classes; nan where
  skipped), skipped_classes (one-valued), accuracy (every certain label vs its score thresholded at 0.5),
  classes (mapped target classes, target order), unmapped_classes (ignored), n (all rows; n_dropped 0),
  n_per_class {class: positives}, n_uncertain_per_class, label_map, source_classes, multi_label True.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  k_src, k_tgt = len(source_classes), len(target_classes)
  if labels.ndim != 2 or labels.shape[1] != k_tgt:
    raise ValueError(f"{where}: multi-label target labels must be [N, {k_tgt}] (one column per target class "
                     f"{list(target_classes)}), got shape {labels.shape}")
  if probs.shape != (len(labels), k_src):
    raise ValueError(f"{where}: the predictor must return [N, {k_src}] per-class probabilities (one column per "
                     f"source class {list(source_classes)}) for the {len(labels)} target images, got shape {probs.shape}")
  if not np.all(np.isfinite(probs)) or probs.min(initial=0.0) < 0 or probs.max(initial=0.0) > 1:
    raise ValueError(f"{where}: the predictor's scores must be per-class probabilities in [0, 1] (sigmoid of a "
                     "multi-label classifier, not logits)")
  bad = ~np.isin(labels, (-1, 0, 1))
  if bad.any():
    raise ValueError(f"{where}: multi-label target labels must be 0, 1 or -1 (uncertain), got {np.unique(labels[bad])}")
  classes, _, matrix = resolve_label_map(label_map, target_classes=target_classes, source_classes=source_classes,
                                         where=where)
  scores = np.stack([probs[:, matrix[:, g] > 0].max(axis=1) for g in range(len(classes))], axis=1)
  y = labels[:, [list(target_classes).index(c) for c in classes]]
  per_class, skipped = [], []
  for g, c in enumerate(classes):
    certain = y[:, g] >= 0
    yc = y[certain, g]
    if np.unique(yc).size < 2:  # AUROC undefined: no positive, no negative, or no certain record.
      per_class.append(float("nan"))
      skipped.append(c)
    else:
      per_class.append(metrics_lib.binary_auroc(yc, scores[certain, g]))
  defined = [a for a in per_class if not np.isnan(a)]
  certain = y >= 0
  accuracy = float(np.mean((scores[certain] >= 0.5) == (y[certain] == 1))) if certain.any() else float("nan")
  return dict(classes=classes, auroc=float(np.mean(defined)) if defined else float("nan"), auroc_per_class=per_class,
              skipped_classes=skipped, accuracy=accuracy, n=int(len(labels)), n_dropped=0, dropped_per_class={},
              unmapped_classes=[c for c in target_classes if c not in classes],
              n_per_class={c: int(np.sum(y[:, g] == 1)) for g, c in enumerate(classes)},
              n_uncertain_per_class={c: int(np.sum(y[:, g] == -1)) for g, c in enumerate(classes)},
              label_map={t: list(v) for t, v in label_map.items()}, source_classes=list(source_classes),
              multi_label=True)


# ---------------------------------------------------------------------------------------------------
# Chest X-ray findings shared between the multi-label CXR datasets.

# Each tuple: the names one finding goes by in CheXpert / MIMIC-CXR (LABELS), NIH ChestX-ray14 (FINDINGS)
# and synthetic_cxr (FINDINGS), compared case-insensitively with '_' as ' '. Only findings that mean the
# same thing are grouped: e.g. CheXpert 'Lung Lesion' is broader than NIH 'Mass' / 'Nodule' and left out.
CXR_SHARED_FINDINGS = (
    ("Atelectasis",),
    ("Cardiomegaly",),
    ("Consolidation",),
    ("Edema",),
    ("Pleural Effusion", "Effusion"),
    ("Pneumonia",),
    ("Pneumothorax",),
)


def _finding_key(name: str) -> str:
  return " ".join(name.replace("_", " ").lower().split())


def cxr_label_map(source_names: Sequence[str], target_names: Sequence[str], *,
                  findings: Sequence[Sequence[str]] = CXR_SHARED_FINDINGS) -> dict:
  """{target class: (source classes,)} for the findings two CXR label sets share, in target order.

  A target class maps to the source classes of the same name (CheXpert <-> MIMIC-CXR: all 14, identity)
  or of the same finding in `findings` (e.g. NIH 'Effusion' <-> CheXpert 'Pleural Effusion'); names are
  compared case-insensitively with '_' as ' '. Target classes without a counterpart are left out (the
  evaluation ignores them). Raises ValueError when fewer than 2 classes are shared.
  """
  group = {}
  for i, names in enumerate(findings):
    for n in names:
      group[_finding_key(n)] = i
  out = {}
  for t in target_names:
    kt = _finding_key(t)
    same = [s for s in source_names if _finding_key(s) == kt or
            (kt in group and group.get(_finding_key(s)) == group[kt])]
    if same:
      out[t] = tuple(same)
  if len(out) < 2:
    raise ValueError(f"cxr_label_map: the source classes {list(source_names)} and target classes "
                     f"{list(target_names)} share {len(out)} finding(s) ({list(out)}); an OOD label map needs 2")
  return out


# ---------------------------------------------------------------------------------------------------
# Loading targets and scoring a predictor on them.

def format_ood(results: Mapping[str, Mapping]) -> str:
  """Markdown lines for probe_results.md: one row per (encoder, target) with AUROC, accuracy, n and dropped.

  results: {encoder: metrics} whose metrics may hold "ood" {target name: OOD metrics}; "" if none do.
  """
  rows = [(enc, name, m) for enc, r in results.items() for name, m in (r.get("ood") or {}).items()]
  if not rows:
    return ""
  lines = ["Out-of-distribution targets (source classifier applied unchanged; label map groups its classes):", "",
           "| encoder | target | label map | AUROC | accuracy | n | dropped |", "|---|---|---|---|---|---|---|"]
  for enc, name, m in rows:
    lmap = "; ".join(f"{t} ← {'+'.join(v)}" for t, v in m["label_map"].items())
    dropped = f"{m['n_dropped']}" + (f" ({', '.join(f'{k}: {v}' for k, v in m['dropped_per_class'].items())})"
                                     if m.get("dropped_per_class") else "")
    if m.get("unmapped_classes"):  # Multi-label: no record dropped; the target classes left unscored.
      dropped += f" (classes ignored: {', '.join(m['unmapped_classes'])})"
    lines.append(f"| {enc} | {name}: {m['target']} | {lmap} | {m['auroc']:.4f} | {m['accuracy']:.4f} | "
                 f"{m['n']} | {dropped} |")
  return "\n".join(lines)

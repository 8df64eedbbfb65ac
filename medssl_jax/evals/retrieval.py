"""Image <-> report retrieval of an image-text model (CLIP / ConVIRT / joint) on a held-out split.

Every test image is embedded like the linear probe's inputs (eval_view resize, normalisation, inference
mode; the "projection" output = the image embedding in the joint space), every test report by the text
tower; `retrieval_recall` (objectives/image_text.py) gives image->text and text->image recall@k, beside
chance (k / N). Templated or short reports repeat (identical reports embed identically), so recall orders tied
candidates at random (its expectation: collapsed embeddings score chance), and a label-level measure is added where the dataset has class labels: the
fraction of images whose top-ranked report belongs to an image with exactly the same label (vector), beside
the same fraction for a random report (chance).

medssl_jax/protocols/retrieval.py runs it on a run's test split; the functions here work on a model, its
variables and arrays.
"""
from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np

from medssl_jax.objectives.image_text import retrieval_recall
from medssl_jax.train import mesh as mesh_lib

KS = (1, 5, 10)


def text_embeddings(model, variables, ids, mask, *, batch_size: int = 256, mesh=None) -> np.ndarray:
  """[N, D] float32 report embeddings of token ids / mask [N, L] (the model's encode_text), in batches sharded
  over `mesh` (None: unsharded)."""
  encode = jax.jit(lambda v, b: model.apply(
      # Padding rows attend to every token, so none is fully masked; they are dropped.
      v, b["ids"], jnp.maximum(b["attention"], (1 - b["mask"])[:, None].astype(b["attention"].dtype)),
      method="encode_text")["text_embedding"])
  out = mesh_lib.apply_batched(lambda b: encode(variables, b), {"ids": ids, "attention": mask}, batch_size=batch_size,
                               mesh=mesh, mask=True)
  return np.asarray(out, np.float32)


def label_match_at_1(image_embeddings, text_embeddings, labels) -> tuple[float, float]:
  """(fraction of images whose most similar report is paired with an image of the same label, the same
  fraction when the report is drawn at random: sum over label values of their frequency squared)."""
  img = image_embeddings / np.maximum(np.linalg.norm(image_embeddings, axis=1, keepdims=True), 1e-12)
  txt = text_embeddings / np.maximum(np.linalg.norm(text_embeddings, axis=1, keepdims=True), 1e-12)
  top = np.argmax(img @ txt.T, axis=1)
  keys = [tuple(np.atleast_1d(l).tolist()) for l in labels]
  hit = np.mean([keys[i] == keys[j] for i, j in enumerate(top)])
  counts = np.asarray(list(collections.Counter(keys).values()), np.float64)
  chance = float(np.sum((counts / len(keys)) ** 2))
  return float(hit), chance


def retrieval_metrics(image_embeddings, text_embeddings, labels) -> dict:
  """Recall@k both ways (`retrieval_recall`) with chance k / N, the label-level match at 1 with its chance, and
  the number of pairs, for paired embeddings [N, D] and labels [N] or [N, K]."""
  n = len(image_embeddings)
  r = retrieval_recall(image_embeddings=image_embeddings, text_embeddings=text_embeddings, ks=KS)
  r.update({f"chance_R@{k}": min(1.0, k / n) for k in KS})
  r["label_match@1"], r["label_match_chance"] = label_match_at_1(image_embeddings, text_embeddings, labels)
  r["num_pairs"] = n
  return r


def format_table(results: dict, *, split: str) -> str:
  """Markdown: recall@k both ways and the label-level match per encoder, with chance."""
  n = next(iter(results.values()))["num_pairs"] if results else 0
  head = ("| encoder | " + " | ".join(f"image->text R@{k}" for k in KS) + " | "
          + " | ".join(f"text->image R@{k}" for k in KS) + " | same-label report @1 |")
  lines = [f"Retrieval on '{split}' ({n} image-report pairs; chance R@k = k/N; ties ordered at random).", "",
           head, "|" + "---|" * (2 * len(KS) + 2)]
  for name, r in results.items():
    lines.append(f"| {name} | " + " | ".join(f"{r[f'i2t_R@{k}']:.3f}" for k in KS) + " | "
                 + " | ".join(f"{r[f't2i_R@{k}']:.3f}" for k in KS)
                 + f" | {r['label_match@1']:.3f} (chance {r['label_match_chance']:.3f}) |")
  chance = " | ".join(f"{min(1.0, k / n):.3f}" for k in KS)
  lines.append(f"| chance | {chance} | {chance} | |")
  return "\n".join(lines)

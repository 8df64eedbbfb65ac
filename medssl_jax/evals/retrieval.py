"""Image <-> report retrieval of an image-text model (CLIP / ConVIRT / joint) on a held-out split.

Every test image is embedded like the linear probe's inputs (eval_view resize, normalisation, inference
mode; the "projection" output = the image embedding in the joint space), every test report by the text
tower; `retrieval_recall` (objectives/image_text.py) gives image->text and text->image recall@k, beside
chance (k / N). Templated or short reports repeat (identical reports embed identically), so recall counts
ties in the query's favour, and a label-level measure is added where the dataset has class labels: the
fraction of images whose top-ranked report belongs to an image with exactly the same label (vector), beside
the same fraction for a random report (chance).
"""
from __future__ import annotations

import collections

import jax
import numpy as np

from medssl_jax.data import pipeline
from medssl_jax.evals import representation
from medssl_jax.evals import results as results_lib
from medssl_jax.objectives.image_text import retrieval_recall

KS = (1, 5, 10)


def text_embeddings(model, variables, ids, mask, *, batch_size: int = 256) -> np.ndarray:
  """[N, D] float32 report embeddings of token ids / mask [N, L] (the model's encode_text)."""
  fn = jax.jit(lambda v, i, m: model.apply(v, i, m, method="encode_text")["text_embedding"])
  out = []
  for start in range(0, len(ids), batch_size):
    i, m = ids[start:start + batch_size], mask[start:start + batch_size]
    pad = batch_size - len(i)
    if pad:  # One compiled shape for every batch; the padding rows are dropped.
      i = np.concatenate([i, np.zeros((pad, i.shape[1]), i.dtype)])
      m = np.concatenate([m, np.ones((pad, m.shape[1]), m.dtype)])
    out.append(np.asarray(jax.device_get(fn(variables, i, m)))[:batch_size - pad])
  return np.concatenate(out).astype(np.float32)


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


def evaluate(config, encoders: dict, *, builder, tokenizer, workdir: str, mesh=None) -> dict:
  """Retrieval on config.data.test_split for each encoder {name: (model, variables, _)} with a text tower;
  writes <workdir>/retrieval.{json,md} and returns {name: metrics}."""
  d = config.data
  test = pipeline.load_split_arrays(builder, split=d.test_split, image_size=d.image_size, fit=d.fit)
  texts = [pipeline.as_text(t) for t in pipeline.read_column(builder, split=d.test_split, key=config.text.key)]
  ids, mask = tokenizer.encode_batch(texts, max_length=config.text.max_length)
  n = len(texts)
  results = {}
  for name, (model, variables, _) in encoders.items():
    img = representation.layer_features(model, variables, test["image"], image_size=config.augment.views[0].crop_size,
                                        mean=tuple(d.mean), std=tuple(d.std), layers=["projector/out"],
                                        batch_size=config.eval.batch_size, mesh=mesh)["projector/out"]
    txt = text_embeddings(model, variables, ids, mask, batch_size=config.eval.batch_size)
    r = retrieval_recall(image_embeddings=img, text_embeddings=txt, ks=KS)
    r.update({f"chance_R@{k}": min(1.0, k / n) for k in KS})
    r["label_match@1"], r["label_match_chance"] = label_match_at_1(img, txt, test["label"])
    r["num_pairs"] = n
    results[name] = r
    print(f"retrieval [{name}]: " + "  ".join(f"i2t R@{k} {r[f'i2t_R@{k}']:.3f}" for k in KS)
          + f"  label match@1 {r['label_match@1']:.3f} (chance {r['label_match_chance']:.3f})", flush=True)
  if jax.process_index() == 0:
    results_lib.write_results(workdir, "retrieval", results, format_table(results, split=d.test_split))
  return results


def format_table(results: dict, *, split: str) -> str:
  """Markdown: recall@k both ways and the label-level match per encoder, with chance."""
  n = next(iter(results.values()))["num_pairs"] if results else 0
  head = ("| encoder | " + " | ".join(f"image->text R@{k}" for k in KS) + " | "
          + " | ".join(f"text->image R@{k}" for k in KS) + " | same-label report @1 |")
  lines = [f"Retrieval on '{split}' ({n} image-report pairs; chance R@k = k/N; ties count for the query).", "",
           head, "|" + "---|" * (2 * len(KS) + 2)]
  for name, r in results.items():
    lines.append(f"| {name} | " + " | ".join(f"{r[f'i2t_R@{k}']:.3f}" for k in KS) + " | "
                 + " | ".join(f"{r[f't2i_R@{k}']:.3f}" for k in KS)
                 + f" | {r['label_match@1']:.3f} (chance {r['label_match_chance']:.3f}) |")
  chance = " | ".join(f"{min(1.0, k / n):.3f}" for k in KS)
  lines.append(f"| chance | {chance} | {chance} | |")
  return "\n".join(lines)

"""Image <-> report retrieval of a run's image-text encoders on config.data.test_split (medssl_jax/evals/retrieval.py):
each test image embedded like the linear probe's inputs, each whole report by the text tower with the run's
tokenizer; results in <workdir>/retrieval.{json,md}.
"""
from __future__ import annotations

import jax

from medssl_jax.data import pipeline
from medssl_jax.evals import representation
from medssl_jax.evals import results as results_lib
from medssl_jax.evals import retrieval as retrieval_lib
from medssl_jax.train import reporting


def evaluate(config, encoders: dict, *, builder, tokenizer, workdir: str, mesh=None) -> dict:
  """Retrieval for each encoder {name: (model, variables, _)} with a text tower; writes <workdir>/retrieval.{json,md}
  prints its table and returns {name: metrics}."""
  d = config.data
  test = pipeline.load_split_arrays(builder, split=d.test_split, image_size=d.image_size, fit=d.fit)
  texts = [pipeline.as_text(t) for t in pipeline.read_column(builder, split=d.test_split, key=config.text.key)]
  ids, mask = tokenizer.encode_batch(texts, max_length=config.text.max_length)
  results = {}
  for name, (model, variables, _) in encoders.items():
    img = representation.layer_features(model, variables, test["image"], image_size=config.augment.views[0].crop_size,
                                        mean=tuple(d.mean), std=tuple(d.std), layers=["projector/out"],
                                        batch_size=config.eval.batch_size, mesh=mesh)["projector/out"]
    txt = retrieval_lib.text_embeddings(model, variables, ids, mask, batch_size=config.eval.batch_size, mesh=mesh)
    r = results[name] = retrieval_lib.retrieval_metrics(img, txt, test["label"])
    print(f"retrieval [{name}]: " + "  ".join(f"i2t R@{k} {r[f'i2t_R@{k}']:.3f}" for k in retrieval_lib.KS)
          + f"  label match@1 {r['label_match@1']:.3f} (chance {r['label_match_chance']:.3f})", flush=True)
  table = retrieval_lib.format_table(results, split=d.test_split)
  if jax.process_index() == 0:
    results_lib.write_results(workdir, "retrieval", results, table)
    reporting.write_eval_scalars(workdir, "retrieval", results, step=config.train.num_steps)
  print("\n" + table + "\n", flush=True)
  return results

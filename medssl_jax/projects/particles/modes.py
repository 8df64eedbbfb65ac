"""Microscopy particle embeddings, mode "particles": pretraining on the training split without
config.particles.holdout_class (so that class is new to the encoder), then the three questions of
medssl_jax/evals/particles.py (cluster structure, few labels, novelty of the held-out class) on the pretrained
(and random) encoder. Writes <workdir>/particles/summary.json, summary.md and embedding_<encoder>_<method>.png
(test split; the held-out class drawn on top, outlined).
"""
from __future__ import annotations

import os
import time

import jax
import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import ml_collections
import numpy as np

from medssl_jax import config as config_lib
from medssl_jax import paths
from medssl_jax.data import pipeline
from medssl_jax.evals import linear_probe as probe_lib
from medssl_jax.evals import particles as particles_lib
from medssl_jax.evals import representation
from medssl_jax.evals import results as results_lib
from medssl_jax.modes import analyze
from medssl_jax.protocols import encoders as encoders_lib
from medssl_jax.train import pretrain as pretrain_lib


def particles_section() -> ml_collections.ConfigDict:
  """The `particles` section (mode "particles"): does the embedding separate particle types (cluster quality,
  embedding map), can a few labels per class classify them, and does a type never seen in pretraining stand out
  (novelty AUROC)? holdout_class ("" = none) is left out of pretraining and of the few-label classes, and is the
  "novel" class of the novelty score."""
  c = ml_collections.ConfigDict()
  c.holdout_class = ""        # A class name of the dataset's 'label' feature, e.g. "WBC".
  c.shots = (1, 5, 10)        # Labelled training crops per known class for the few-label probe.
  c.shot_seeds = (0, 1, 2)    # One k-per-class draw per seed; results are mean +- std.
  c.knn_k = 10                # Neighbours for kNN purity and the novelty score (cosine).
  # Novelty scores, each with its AUROC for the held-out class: "knn" (1 - mean cosine similarity to the k
  # nearest known training embeddings), "local_density" (kNN distance relative to the neighbours' own kNN
  # distances, LOF-style), "mahalanobis" (min class-conditional Mahalanobis distance, shared covariance,
  # fit on the labelled known-class training embeddings).
  c.novelty_methods = ("knn", "local_density", "mahalanobis")
  c.max_examples = 2000       # Records per split (a seeded subset of larger splits; 0 = all).
  c.embedding_method = "tsne"  # 2-D map of the test split: "tsne", "pca" or "none".
  return c


def check(config):
  """The particles section (mode "particles"); the holdout class name is checked against the dataset at run time."""
  p = config.particles
  if not isinstance(p.holdout_class, str):
    raise ValueError(f"config.particles.holdout_class must be a class name or '' (none), got {p.holdout_class!r}")
  for k, lo in (("shots", 1), ("shot_seeds", 0)):
    v = p[k]
    if (isinstance(v, (str, int)) or not isinstance(v, (tuple, list)) or not v
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= lo for x in v)):
      raise ValueError(f"config.particles.{k} must be a non-empty tuple of integers >= {lo}, got {v!r}")
  if not isinstance(p.knn_k, int) or p.knn_k < 1:
    raise ValueError(f"config.particles.knn_k must be a positive integer, got {p.knn_k!r}")
  if not isinstance(p.max_examples, int) or p.max_examples < 0:
    raise ValueError(f"config.particles.max_examples must be an integer >= 0 (0 = all), got {p.max_examples!r}")
  config_lib.check_choice(p.embedding_method, ("tsne", "pca", "none"), "config.particles.embedding_method")
  methods = p.novelty_methods
  if isinstance(methods, str) or not isinstance(methods, (tuple, list)) or len(set(methods)) != len(methods) \
      or any(m not in particles_lib.NOVELTY_METHODS for m in methods):
    raise ValueError(f"config.particles.novelty_methods must be a tuple of distinct names from "
                     f"{list(particles_lib.NOVELTY_METHODS)} "
                     f"(() = none), got {methods!r}")


config_lib.register_section("particles", particles_section)


def holdout_label(builder, holdout_class: str) -> int | None:
  """The label id of `holdout_class` in the builder's 'label' ClassLabel (None for ""); a clear error naming
  the valid class names otherwise."""
  if not holdout_class:
    return None
  names = pipeline.class_names(builder)
  if holdout_class not in names:
    raise ValueError(f"config.particles.holdout_class={holdout_class!r} is not a class of dataset "
                     f"{builder.name!r}; valid: {names} (or '' for none)")
  return names.index(holdout_class)


def pretrain_indices(builder, split: str, holdout_class: str) -> np.ndarray | None:
  """Record indices (sorted, int64) of `split` whose label is not `holdout_class`: the records pretraining
  may see, so that the held-out class is truly unseen. None when holdout_class is "" (the whole split);
  pass the result as `indices=` of pipeline.make_train_iterator."""
  label = holdout_label(builder, holdout_class)
  if label is None:
    return None
  y = np.asarray(pipeline.read_column(builder, split=split, key="label"), np.int64)
  keep = np.flatnonzero(y != label).astype(np.int64)
  if not len(keep):
    raise ValueError(f"split {split!r} of {builder.name!r} holds only {holdout_class!r} records; nothing is left "
                     f"to pretrain on")
  return keep


def _capped_indices(n: int, cap: int, seed: int):
  if not cap or n <= cap:
    return None
  return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _highlight_plot(coords, y, names, holdout, *, path, title):
  """The embedding map again, the held-out class drawn last with larger outlined markers."""
  fig = Figure(figsize=(7, 6), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  cmap = matplotlib.colormaps["tab10"]
  size = float(np.clip(2000.0 / max(len(y), 1), 2.0, 30.0))
  classes = [c for c in np.unique(y) if c != holdout] + ([holdout] if holdout in y else [])
  for i, c in enumerate(classes):
    sel = y == c
    if c == holdout:
      ax.scatter(coords[sel, 0], coords[sel, 1], s=max(4 * size, 30.0), color="crimson", marker="*", alpha=0.95,
                 linewidths=0.3, edgecolors="black", label=f"{names[c]} ({int(sel.sum())}, held out of pretraining)")
    else:
      ax.scatter(coords[sel, 0], coords[sel, 1], s=size, color=cmap(i % 10), alpha=0.6, linewidths=0,
                 label=f"{names[c]} ({int(sel.sum())})")
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
  fig.tight_layout()
  paths.save_figure(fig, path, format="png")


def run(config, workdir: str, *, encoders, builder, mesh=None) -> dict:
  """mode "particles": the three questions of the module docstring for each encoder.

  encoders: {name: (model, variables)} or experiment's {name: (model, variables, recalibrate)}; with
  recalibrate True (a random init) BatchNorm statistics are re-estimated on the known-class training images
  first. data.train_split and data.test_split are loaded (each capped at particles.max_examples records, a
  seeded subset in split order), encoded at views[0]'s crop size, and scored. With a held-out class, each
  encoder's result has "novelty_methods" ({method: `evals.particles.novelty_report` entry} for
  particles.novelty_methods) and,
  when "knn" is among them, "novelty" (the "knn" entry, the key older summaries have).
  Writes <workdir>/particles/summary.json, summary.md and one embedding map PNG per encoder (process 0
  only); returns the summary dict.
  """
  t0 = time.perf_counter()
  p, d, e = config.particles, config.data, config.eval
  workdir = paths.absolute(workdir)
  dataset = pipeline.dataset_name(builder)
  names = pipeline.class_names(builder)
  if not names:
    raise ValueError(f"particles: dataset {dataset!r} has no ClassLabel 'label' feature (particle types)")
  holdout = holdout_label(builder, p.holdout_class)
  methods = tuple(p.novelty_methods)
  size = config.augment.views[0].crop_size
  prep = dict(image_size=size, mean=tuple(d.mean), std=tuple(d.std))

  data = {}
  for role, split in (("train", d.train_split), ("test", d.test_split)):
    n = pipeline.num_examples(builder, split)
    idx = _capped_indices(n, p.max_examples, config.seed)
    arrays = pipeline.load_split_arrays(builder, split=split, image_size=d.image_size, fit=d.fit, indices=idx)
    y = np.asarray(arrays["label"])
    if y.ndim != 1:
      raise ValueError(f"particles: split {split!r} of {dataset!r} has multi-label labels {y.shape}; one particle "
                       "type per crop is needed")
    data[role] = {"split": split, "num_records": int(n), "image": arrays["image"], "label": y.astype(np.int64),
                  "indices": None if idx is None else idx.tolist()}
  train_y, test_y = data["train"]["label"], data["test"]["label"]
  known = [c for c in range(len(names)) if c != holdout]
  remap = np.full(len(names), -1, np.int64)
  remap[known] = np.arange(len(known))
  train_known = train_y != holdout if holdout is not None else np.ones(len(train_y), bool)
  test_known = test_y != holdout if holdout is not None else np.ones(len(test_y), bool)
  if holdout is not None and not np.any(~test_known):
    raise ValueError(f"particles: the test split {d.test_split!r} (as capped) has no {p.holdout_class!r} records; "
                     "the novelty AUROC needs some (raise particles.max_examples)")

  out_dir = paths.join(workdir, "particles")
  write = jax.process_index() == 0
  if write:
    paths.makedirs(out_dir)
  counts = lambda y: {names[c]: int(np.sum(y == c)) for c in range(len(names))}
  summary = {
      "dataset": dataset, "classes": names, "holdout_class": p.holdout_class, "input_size": int(size),
      "splits": {role: {"split": v["split"], "num_records": v["num_records"], "num_examples": int(len(v["label"])),
                        "class_counts": counts(v["label"]), "record_indices": v["indices"]}
                 for role, v in data.items()},
      "shots": list(p.shots), "shot_seeds": list(p.shot_seeds), "knn_k": int(p.knn_k),
      "novelty_methods": list(methods),
      "embedding_method": p.embedding_method, "protocol": particles_lib.PROTOCOL, "output_dir": out_dir, "encoders": {},
  }
  for enc_name, entry in encoders.items():
    model, variables = entry[0], entry[1]
    recalibrate = bool(entry[2]) if len(entry) > 2 else False
    t1 = time.perf_counter()
    if recalibrate:
      variables = probe_lib.recalibrate_batch_stats(model, variables, data["train"]["image"][train_known],
                                                    batch_size=e.batch_size, **prep)
    feats = {role: probe_lib.extract_features(model, variables, v["image"], batch_size=e.batch_size, mesh=mesh,
                                              **prep).astype(np.float64) for role, v in data.items()}
    result = {"cluster_quality": particles_lib.cluster_quality(features=feats["test"], labels=test_y, k=p.knn_k)}
    result["few_label"] = particles_lib.few_label_classifier(
        train_features=feats["train"][train_known], train_labels=remap[train_y[train_known]],
        test_features=feats["test"][test_known], test_labels=remap[test_y[test_known]], shots=tuple(p.shots),
        seeds=tuple(p.shot_seeds), num_classes=len(known))
    if holdout is not None and methods:
      report = particles_lib.novelty_report(reference_features=feats["train"][train_known],
                              reference_labels=remap[train_y[train_known]], query_features=feats["test"],
                              query_is_novel=~test_known, k=p.knn_k, methods=methods)
      result["novelty_methods"] = report
      if "knn" in report:
        result["novelty"] = report["knn"]  # The key (and numbers) of summaries before novelty_methods.
    if p.embedding_method != "none" and write:
      path = paths.join(out_dir, f"embedding_{analyze.slug(enc_name)}_{p.embedding_method}.png")
      title = f"{enc_name}: {dataset} '{d.test_split}' ({p.embedding_method}, N={len(test_y)})"
      coords = representation.embedding_map(features=feats["test"], labels=test_y, path=path,
                                            method=p.embedding_method, class_names=names, seed=config.seed,
                                            title=title)
      if holdout is not None:
        _highlight_plot(coords, test_y, names, holdout, path=path, title=title)
      result["embedding_map"] = path
    result["wall_clock_s"] = round(time.perf_counter() - t1, 1)
    q = result["cluster_quality"]
    print(f"particles [{enc_name}]: silhouette {q['silhouette']:.3f}, kNN purity {q['knn_purity']:.3f}"
          + "".join(f", novelty AUROC {m} {v['auroc']:.3f}" for m, v in result.get("novelty_methods", {}).items())
          + f" ({result['wall_clock_s']:.0f}s)", flush=True)
    summary["encoders"][enc_name] = result
  summary["wall_clock_s"] = round(time.perf_counter() - t0, 1)
  table = format_summary(summary)
  print("\n" + table + "\n", flush=True)
  if write:
    results_lib.write_results(out_dir, "summary", summary, table)
  return summary


def _f(v, digits=3):
  return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _pm(mean, std):
  return _f(mean) if not np.isfinite(std) else f"{_f(mean)} ± {_f(std)}"


def _novelty_results(result: dict) -> dict:
  """{method: entry} of one encoder's result; summaries before novelty_methods had only "novelty" (knn)."""
  if "novelty_methods" in result:
    return result["novelty_methods"]
  return {"knn": result["novelty"]} if "novelty" in result else {}


def format_summary(summary: dict) -> str:
  """The summary as Markdown: cluster quality and the novelty AUROC of each method per encoder (for "knn"
  also the mean scores of the held-out and known crops), then few-label accuracy / AUROC."""
  s = summary
  tr, te = s["splits"]["train"], s["splits"]["test"]
  split_line = lambda v: (f"'{v['split']}' {v['num_examples']} of {v['num_records']} ("
                          + ", ".join(f"{k} {n}" for k, n in v["class_counts"].items()) + ")")
  hold = s["holdout_class"]
  methods = []
  for r in s["encoders"].values():
    methods += [m for m in _novelty_results(r) if m not in methods]
  header, rule = "", ""
  for m in methods:
    header += f" novelty AUROC {m} ({hold}) |" + (f" knn score {hold} / known |" if m == "knn" else "")
    rule += "---|" * (2 if m == "knn" else 1)
  lines = [f"# Particle embeddings: {s['dataset']}", "",
           f"Train {split_line(tr)}; test {split_line(te)}; encoder input {s['input_size']} px.",
           f"Held-out class (not pretrained on, not in the few-label classes): {hold!r}." if hold else
           "No held-out class (novelty not measured).",
           *[f"- {k}: {v}" for k, v in s["protocol"].items()], "",
           f"| encoder | silhouette (cosine) | kNN purity (k={s['knn_k']}) | kNN purity at chance |" + header,
           "|---|---|---|---|" + rule]
  for enc, r in s["encoders"].items():
    q = r["cluster_quality"]
    row = f"| {enc} | {_f(q['silhouette'])} | {_f(q['knn_purity'])} | {_f(q['knn_purity_chance'])} |"
    results = _novelty_results(r)
    for m in methods:
      nv = results.get(m)
      row += f" {_f(nv['auroc'] if nv else None)} |"
      if m == "knn":
        row += f" {_f(nv['mean_score_novel'])} / {_f(nv['mean_score_known'])} |" if nv else " n/a |"
    lines.append(row)
  lines += ["", f"Few-label logistic regression (mean ± std over seeds {s['shot_seeds']}):", "",
            "| encoder | labelled per class | accuracy | balanced accuracy | AUROC (macro OvR) |",
            "|---|---|---|---|---|"]
  for enc, r in s["encoders"].items():
    for k, m in r["few_label"].items():
      lines.append(f"| {enc} | {k} | {_pm(m['accuracy_mean'], m['accuracy_std'])} | "
                   f"{_pm(m['balanced_accuracy_mean'], m['balanced_accuracy_std'])} | "
                   f"{_pm(m['auroc_mean'], m['auroc_std'])} |")
  maps = [f"- {enc}: {os.path.basename(r['embedding_map'])}" for enc, r in s["encoders"].items()
          if "embedding_map" in r]
  if maps:
    lines += ["", "Embedding maps (test split):", *maps]
  return "\n".join(lines)


def particles(config, workdir: str, *, mesh=None) -> dict:
  """mode "particles": pretraining on the training split without particles.holdout_class (so that class is new
  to the encoder), then medssl_jax/evals/particles.py on the pretrained (and random) encoder."""
  builder = pipeline.open_dataset(config.data)
  indices = pretrain_indices(builder, config.data.train_split, config.particles.holdout_class)
  if indices is not None:
    print(f"pretraining on {len(indices)} '{config.data.train_split}' records without class "
          f"{config.particles.holdout_class!r}", flush=True)
  model, state = pretrain_lib.pretrain(config, workdir, builder=builder, mesh=mesh, indices=indices)
  encoders = {f"{config.objective.name} (pretrained)": (model, state.variables, False)}
  if config.eval.compare_random_init:
    rmodel, rvars = encoders_lib.random_init_variables(config)
    encoders["random init"] = (rmodel, rvars, True)
  return run(config, workdir, encoders=encoders, builder=builder, mesh=mesh)


MODES = {"particles": particles}
PRETRAINING_MODES = ("particles",)

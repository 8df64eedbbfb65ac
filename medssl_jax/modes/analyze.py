"""mode "analyze": representation analysis of the pretrained encoder in a workdir.

For the encoder restored from <workdir>/checkpoints (and, with eval.compare_random_init, the randomly
initialised encoder pretraining started from, BatchNorm recalibrated on the training split as for the
probe), on the records of `analysis.split` (default data.test_split; at most analysis.max_examples of
them, a seeded random subset kept in split order):

* layer features (`representation.layer_features`: pooled ResNet stages, backbone, projector layers)
  of `analysis.layers` (default: all), and per layer the neural-collapse measures
  (`representation.neural_collapse`: within- vs between-class variability NC1 and tr(S_W)/tr(S_B),
  NC2 equinorm / equiangularity, nearest-class-centre accuracy) against the classes of
  `analysis.label_key`;
* a 2-D embedding map (t-SNE or PCA) per layer, a PNG coloured by class;
* attention maps (`analysis.attention`; default Grad-CAM for ResNets, with a linear-probe head fitted on
  data.train_split features as `linear_probe` fits its probe, and attention rollout for ViTs), an
  overlay grid PNG of `analysis.num_attention_images` images (covering the classes in turn), and, with
  `analysis.mask_key`, the fraction of each map inside the record's mask (e.g. vessels, field of view,
  lungs): mean ± std over images and per class, beside the mask's own area (what a uniform map gives);
  `analysis.derived_mask="lung_intensity"` instead segments the lung fields from the chest X-rays themselves
  (`data/lung_mask.py`, a classical intensity proxy) for data without lung masks (PneumoniaMNIST).

Everything goes to <workdir>/analysis/<split>/: summary.json and summary.md (all numbers),
embedding_<encoder>_<layer>_<method>.png, attention_<encoder>_<method>.png and
attention_<encoder>_<method>.npz (record ids, maps (float16), per-image fractions and mask areas).
File names carry the encoder (and layer), so encoders never overwrite each other's files.
"""
from __future__ import annotations

import os
import re
import time

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from medssl_jax import config as config_lib
from medssl_jax import objectives
from medssl_jax import paths
from medssl_jax.data import pipeline
from medssl_jax.evals import attention as attention_lib
from medssl_jax.evals import linear_probe as probe_lib
from medssl_jax.data import masks as masks_lib
from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.evals import representation
from medssl_jax.evals import results as results_lib
from medssl_jax.protocols import encoders as encoders_lib



def analysis_section() -> ml_collections.ConfigDict:
  """The `analysis` section (mode "analyze"): what is analysed, how, and the attention settings."""
  c = ml_collections.ConfigDict()
  c.split = ""                 # Records analysed ("" = data.test_split).
  c.max_examples = 512         # At most this many (a seeded random subset, split order kept; 0 = all).
  c.label_key = "label"        # Single-label class feature for colours / neural collapse (e.g. "eye").
  c.layers = ()                # Layers (representation.available_layers names); () = all of them.
  c.nc_weighting = "balanced"  # Neural-collapse class weighting: "balanced" or "samples".
  c.embedding_method = "tsne"  # 2-D map per layer: "tsne", "pca" or "none".
  # Attention maps: "auto" (grad_cam for ResNets, rollout for ViTs), "grad_cam" (linear probe head fit on
  # data.train_split features), "label_free" (= grad_feature_norm), "activation_norm",
  # "grad_feature_norm", "rollout" (ViT) or "none".
  c.attention = "auto"
  c.cam_target = "label"       # grad_cam target class: "label" (the true class) or "predicted".
  c.num_attention_images = 16  # Images in the overlay grid PNG (maps are computed for all).
  c.mask_key = ""              # Mask feature (e.g. "mask", "fov_mask"): fraction of attention inside.
  # A mask computed from the images instead of read from a feature (exclusive with mask_key): "" = none, or a
  # mask of medssl_jax/data/masks.py: "lung_intensity" (lung fields by a classical intensity segmentation of
  # chest X-rays, for the attention-in-lung measure on data without lung masks), "fundus_fov", "body_outline".
  c.derived_mask = ""
  return c


ANALYSIS_ATTENTION = ("auto", "grad_cam", "label_free", "activation_norm", "grad_feature_norm", "rollout", "none")


def check(config):
  """The analysis section (mode "analyze"): choices, counts, and layer names of this model."""
  a = config.analysis
  config_lib.check_choice(a.embedding_method, ("tsne", "pca", "none"), "config.analysis.embedding_method")
  config_lib.check_choice(a.nc_weighting, representation.WEIGHTINGS, "config.analysis.nc_weighting")
  config_lib.check_choice(a.attention, ANALYSIS_ATTENTION, "config.analysis.attention")
  config_lib.check_choice(a.cam_target, ("label", "predicted"), "config.analysis.cam_target")
  config_lib.check_choice(a.derived_mask, ("", *masks_lib.NAMES), "config.analysis.derived_mask")
  if a.derived_mask and a.mask_key:
    raise ValueError(f"config.analysis.mask_key={a.mask_key!r} and derived_mask={a.derived_mask!r} both name the mask "
                     "attention is measured in; set one of them")
  if a.derived_mask and a.attention == "none":
    raise ValueError(f"config.analysis.derived_mask={a.derived_mask!r} measures attention inside a mask, but "
                     "config.analysis.attention='none' computes no maps; set attention (e.g. 'auto')")
  for k in ("max_examples", "num_attention_images"):
    if not isinstance(a[k], int) or a[k] < 0:
      raise ValueError(f"config.analysis.{k} must be an integer >= 0, got {a[k]!r}")
  if not a.label_key:
    raise ValueError("config.analysis.label_key must name the dataset's class feature (e.g. 'label'), got ''")
  if a.mask_key and a.attention == "none":
    raise ValueError(f"config.analysis.mask_key={a.mask_key!r} measures attention inside a mask, but "
                     "config.analysis.attention='none' computes no maps; set attention (e.g. 'auto') or clear mask_key")
  layers = a.layers
  if isinstance(layers, str) or not isinstance(layers, (tuple, list)) or not all(isinstance(l, str) for l in layers):
    raise ValueError(f"config.analysis.layers must be a tuple of layer names (() = all), got {layers!r}")
  if len(set(layers)) != len(layers):
    raise ValueError(f"config.analysis.layers lists a layer twice: {tuple(layers)!r}")
  if config.mode == "analyze":
    vit = config.model.encoder not in ("resnet18", "resnet50")  # The ViTs (MAE's encoder is one).
    if vit and a.attention in ("grad_cam", "label_free", "activation_norm", "grad_feature_norm"):
      raise ValueError(f"config.analysis.attention={a.attention!r} needs a ResNet; {config.model.encoder} is a ViT: "
                       "use 'rollout' (or 'auto')")
    if not vit and a.attention == "rollout":
      raise ValueError(f"config.analysis.attention='rollout' needs a ViT; {config.model.encoder} is a ResNet: use "
                       "'grad_cam', 'label_free' (or 'auto')")
    if layers:
      valid = representation.available_layers(objectives.build_model(config))
      unknown = [l for l in layers if l not in valid]
      if unknown:
        raise ValueError(f"config.analysis.layers: unknown layer(s) {unknown} for {config.model.encoder} with the "
                         f"{config.objective.name!r} heads; valid layers: {valid}")


config_lib.register_section("analysis", analysis_section)

def slug(name: str) -> str:
  """A file-name-safe form of an encoder, layer or split name ('simclr (pretrained)' -> 'simclr_pretrained',
  'projector/hidden1' -> 'projector-hidden1', 'train[:10%]' -> 'train_10pct')."""
  s = str(name).replace("/", "-").replace("%", "pct")
  s = re.sub(r"[^A-Za-z0-9.+-]+", "_", s).strip("_")
  return s or "x"


def attention_method(config) -> str:
  """The `attention.compute_maps` method analysis.attention names for this encoder ('' = none)."""
  name = config.analysis.attention
  vit = config.model.encoder not in ("resnet18", "resnet50")
  if name == "none":
    return ""
  if name == "auto":
    return "rollout" if vit else "grad_cam"
  return "grad_feature_norm" if name == "label_free" else name


def _class_feature(builder, key: str):
  """(names by label or None, num_classes or None) of the class feature `key`; clear errors otherwise."""
  features = builder.info.features
  name = pipeline.dataset_name(builder)
  if key not in features:
    labels = sorted(k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel))
    raise KeyError(f"config.analysis.label_key={key!r}: dataset {name!r} has no such feature; its class features "
                   f"are {labels or 'none'} (all features: {sorted(features.keys())})")
  f = features[key]
  if isinstance(f, tfds.features.ClassLabel):
    return list(f.names), f.num_classes
  return None, None


def _labels(values, key: str, dataset: str) -> np.ndarray:
  y = np.asarray(values)
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"config.analysis.label_key={key!r} of {dataset!r} gives {y.dtype} values of shape {y.shape}; "
                     "neural collapse and class colours need one integer class per record (multi-label data: "
                     "pick a single-label feature)")
  if np.any(y < 0):
    raise ValueError(f"config.analysis.label_key={key!r} of {dataset!r}: {int(np.sum(y < 0))} records have no class "
                     f"(negative label); choose a labelled split or another feature")
  return y.astype(np.int64)


def _load(builder, *, split, config, indices, extra_keys):
  d = config.data
  return pipeline.load_split_arrays(builder, split=split, image_size=d.image_size, fit=d.fit, indices=indices,
                                    extra_keys=tuple(dict.fromkeys(k for k in extra_keys if k)))


def _mask_name(a) -> str:
  """How summaries name the mask of config.analysis `a`: the feature ('mask') or the derived mask's name."""
  if a.derived_mask:
    return masks_lib.NAMES[a.derived_mask]
  return repr(a.mask_key) if a.mask_key else ""


def _fraction_stats(values, labels, names) -> dict:
  """Mean ± sample std (ddof=1) of per-image values, ignoring NaN (all-zero maps), overall and per class."""
  values = np.asarray(values, np.float64)

  def stats(v):
    v = v[np.isfinite(v)]
    if not len(v):
      return {"mean": float("nan"), "std": float("nan"), "n": 0}
    mean, std, n = metrics_lib.mean_std(v)
    return {"mean": mean, "std": std, "n": n}

  out = stats(values)
  out["nan_count"] = int(np.sum(~np.isfinite(values)))
  out["per_class"] = {names[c]: stats(values[labels == c]) for c in np.unique(labels)}
  return out


def _grid_indices(labels, count: int) -> np.ndarray:
  """Up to `count` record positions taking the classes in turn (each class in record order)."""
  queues = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
  out = []
  while len(out) < count and any(queues):
    for q in queues:
      if q and len(out) < count:
        out.append(q.pop(0))
  return np.asarray(out, np.int64)


def run(config, workdir: str, *, builder, mesh=None) -> dict:
  """Runs the analysis described in the module docstring; returns the summary dict (also in summary.json).

  Needs a checkpoint in `workdir` (run mode=pretrain first). The summary holds, per encoder, the
  neural-collapse measures per layer, the PNG paths and the attention statistics.
  """
  t0 = time.perf_counter()
  a, d, e = config.analysis, config.data, config.eval
  workdir = paths.absolute(workdir)
  dataset = pipeline.dataset_name(builder)
  split = a.split or d.test_split
  size = config.augment.views[0].crop_size
  prep = dict(image_size=size, mean=tuple(d.mean), std=tuple(d.std))
  method = attention_method(config)
  names, num_classes = _class_feature(builder, a.label_key)
  label_extra = () if a.label_key == "label" else (a.label_key,)
  pipeline.check_extra_keys(builder, (a.mask_key,) * bool(a.mask_key) + label_extra)  # Before any work.

  model, variables = encoders_lib.load_pretrained(config, workdir)
  encoders = {f"{config.objective.name} (pretrained)": (model, variables, False)}
  if e.compare_random_init:
    rmodel, rvars = encoders_lib.random_init_variables(config)
    encoders["random init"] = (rmodel, rvars, True)
  valid_layers = representation.available_layers(model)
  layers = list(a.layers) or valid_layers
  unknown = [l for l in layers if l not in valid_layers]
  if unknown:
    raise ValueError(f"config.analysis.layers: unknown layer(s) {unknown}; valid layers: {valid_layers}")

  # The analysed records: a seeded subset when the split is larger than the cap, in split order.
  n_split = pipeline.num_examples(builder, split)
  indices = None
  if a.max_examples and n_split > a.max_examples:
    rng = np.random.default_rng(config.seed)
    indices = np.sort(rng.choice(n_split, size=a.max_examples, replace=False))
  data = _load(builder, split=split, config=config, indices=indices, extra_keys=(a.mask_key,) + label_extra)
  labels = _labels(data[a.label_key], a.label_key, dataset)
  classes = np.unique(labels)
  if len(classes) < 2:
    raise ValueError(f"split {split!r} of {dataset!r} has records of one class ({classes.tolist()}) under "
                     f"config.analysis.label_key={a.label_key!r}; neural collapse needs at least 2")
  num_classes = num_classes or int(labels.max()) + 1
  class_name = {int(c): (names[c] if names else str(int(c))) for c in range(num_classes)}
  masks = data[a.mask_key] if a.mask_key else None
  images = data["image"]
  if a.derived_mask:  # No mask feature: the mask derived from the images themselves.
    masks = masks_lib.derive_all(a.derived_mask, images)
  mask_name = _mask_name(a)
  print(f"analysis: {len(images)} of {n_split} '{split}' records of {dataset}, classes from "
        f"{a.label_key!r} ({len(classes)} present), {len(layers)} layer(s), attention {method or 'none'}"
        f"{f', mask {mask_name}' if masks is not None else ''}", flush=True)

  # The training split: the Grad-CAM probe head, and BatchNorm statistics of the random encoder.
  train = None
  if method == "grad_cam" or any(r for _, _, r in encoders.values()):
    train = _load(builder, split=d.train_split, config=config, indices=None, extra_keys=label_extra)
    if e.max_train_examples:
      train = {k: v[:e.max_train_examples] for k, v in train.items()}

  out_dir = paths.join(workdir, "analysis", slug(split))
  write = jax.process_index() == 0
  if write:
    paths.makedirs(out_dir)
  summary = {
      "dataset": dataset, "split": split, "num_records": int(n_split), "num_examples": int(len(images)),
      # Positions in the split (for load_split_arrays' indices) and the records' own 'id' feature.
      "record_indices": (np.arange(n_split) if indices is None else indices).tolist(),
      "record_ids": data["id"].tolist(), "label_key": a.label_key,
      "classes": {class_name[int(c)]: int(np.sum(labels == c)) for c in classes},
      "layers": layers, "image_size": int(d.image_size), "input_size": int(size),
      "protocol": {"neural_collapse": representation.PROTOCOL + f"; weighting {a.nc_weighting}",
                   "embedding_map": a.embedding_method, "attention": attention_lib.PROTOCOL},
      "attention_method": method, "mask_key": a.mask_key, "derived_mask": a.derived_mask,
      "mask_name": mask_name, "output_dir": out_dir, "encoders": {},
  }
  for enc_name, (enc_model, enc_vars, recalibrate) in encoders.items():
    tag = slug(enc_name)
    t1 = time.perf_counter()
    if recalibrate:
      enc_vars = probe_lib.recalibrate_batch_stats(enc_model, enc_vars, train["image"], batch_size=e.batch_size,
                                                   **prep)
    feats = representation.layer_features(enc_model, enc_vars, images, layers=layers, batch_size=e.batch_size,
                                          mesh=mesh, **prep)
    nc = representation.neural_collapse_by_layer(features=feats, labels=labels, weighting=a.nc_weighting)
    for layer in layers:
      nc[layer]["dim"] = int(feats[layer].shape[1])
    result = {"neural_collapse": nc, "embedding_maps": {}}
    print(f"[{enc_name}] layer features and neural collapse: " + ", ".join(
        f"{l} NC1 {nc[l]['nc1']:.3g}" for l in layers) + f" ({time.perf_counter() - t1:.0f}s)", flush=True)

    if a.embedding_method != "none" and write:
      for layer in layers:
        path = paths.join(out_dir, f"embedding_{tag}_{slug(layer)}_{a.embedding_method}.png")
        representation.embedding_map(
            features=feats[layer], labels=labels, path=path, method=a.embedding_method, class_names=class_name,
            seed=config.seed, title=f"{enc_name}: {layer} ({a.embedding_method}; {dataset} '{split}', "
                                    f"N={len(images)})")
        result["embedding_maps"][layer] = path
      print(f"[{enc_name}] {len(layers)} {a.embedding_method} map(s) in {out_dir} "
            f"({time.perf_counter() - t1:.0f}s)", flush=True)

    if method:
      result["attention"] = _attention(config, method, enc_name, enc_model, enc_vars, images=images, labels=labels,
                                       masks=masks, ids=data["id"], train=train, class_name=class_name,
                                       num_classes=num_classes, mesh=mesh, prep=prep,
                                       stem=paths.join(out_dir, f"attention_{tag}_{method}"), write=write)
    summary["encoders"][enc_name] = result
  summary["wall_clock_s"] = round(time.perf_counter() - t0, 1)
  table = format_summary(summary)
  print("\n" + table + "\n", flush=True)
  if write:
    results_lib.write_results(out_dir, "summary", summary, table)
  print(f"analysis done in {summary['wall_clock_s']:.0f}s: {out_dir}", flush=True)
  return summary


def _attention(config, method, enc_name, model, variables, *, images, labels, masks, ids, train, class_name,
               num_classes, mesh, prep, stem, write) -> dict:
  """Maps of one encoder for every analysed image, the overlay grid and the fractions inside the masks."""
  a, e = config.analysis, config.eval
  t1 = time.perf_counter()
  out = {"method": method}
  head, target = None, None
  if method == "grad_cam":
    # The probe's recipe (L2 chosen on held-out training features), refit on all training features.
    label_key = a.label_key
    train_y = _labels(train[label_key], label_key, "train split")
    feat = lambda x: representation.layer_features(model, variables, x, layers=["backbone"], batch_size=e.batch_size,
                                                   mesh=mesh, **prep)["backbone"]
    train_x, test_x = feat(train["image"]), feat(images)
    probe = probe_lib.linear_probe(train_x, train_y, test_x, labels, num_classes=num_classes,
                                   l2_grid=tuple(e.l2_grid), max_iter=e.max_iter, seed=config.seed)
    head = attention_lib.fit_probe_head(train_x, train_y, num_classes=num_classes, l2=probe["l2"],
                                        max_iter=e.max_iter)
    target = labels if a.cam_target == "label" else None
    out.update(cam_target=a.cam_target, probe_l2=probe["l2"], probe_accuracy=probe["accuracy"],
               probe_auroc=probe["auroc"])
  maps = attention_lib.compute_maps(method, model.backbone, attention_lib.backbone_variables(variables), images,
                                    head=head, target=target, batch_size=min(64, e.batch_size), **prep)
  arrays = {"ids": np.asarray(ids), "maps": maps.astype(np.float16)}
  names = {c: class_name[int(c)] for c in np.unique(labels)}
  grid = _grid_indices(labels, a.num_attention_images)
  titles = [names[labels[i]] for i in grid]
  # Grad-CAM of a class the head scores low is ReLU'd to all zeros (every channel weight negative): say
  # so on the image, and count them, rather than leave a dark tile that reads like a failure.
  empty = maps.reshape(len(maps), -1).max(axis=1) <= 0 if len(maps) else np.zeros(0, bool)
  out["num_empty_maps"] = int(empty.sum())
  titles = [f"{t} (empty map)" if empty[i] else t for t, i in zip(titles, grid)]
  if masks is not None:
    fraction, area = attention_lib.fraction_and_area(maps, masks)
    out["mask_key"] = a.mask_key
    out["mask_name"] = _mask_name(a)
    out["fraction_inside"] = _fraction_stats(fraction, labels, names)
    out["mask_area"] = _fraction_stats(area, labels, names)
    arrays.update(fraction_inside=fraction, mask_area=area)
    short = a.mask_key or "lungs"  # Tile titles stay short.
    titles = [f"{t}, {fraction[i]:.2f} in {short}" for t, i in zip(titles, grid)]
  if write:
    paths.save_npz(stem + ".npz", compressed=True, **arrays)
    out["maps_file"] = stem + ".npz"
    if len(grid):
      out["overlay"] = attention_lib.save_overlays(images[grid], maps[grid], stem + ".png",
                                                   masks=None if masks is None else masks[grid], titles=titles)
  line = f"[{enc_name}] {method} maps for {len(maps)} images"
  if "probe_accuracy" in out:
    line += f" (probe head accuracy {out['probe_accuracy']:.3f})"
  if masks is not None:
    fi, ma = out["fraction_inside"], out["mask_area"]
    line += f"; fraction inside {_mask_name(a)} {fi['mean']:.3f} ± {fi['std']:.3f} (mask area {ma['mean']:.3f})"
  print(line + f" ({time.perf_counter() - t1:.0f}s)", flush=True)
  return out


def _pm(s) -> str:
  return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] > 1 else (f"{s['mean']:.3f}" if s["n"] else "n/a")


def format_summary(summary: dict) -> str:
  """The summary as Markdown: neural collapse per encoder and layer, then the attention statistics."""
  s = summary
  classes = ", ".join(f"{k} {v}" for k, v in s["classes"].items())
  lines = [f"# Representation analysis: {s['dataset']} '{s['split']}'",
           "", f"{s['num_examples']} of {s['num_records']} records (classes from {s['label_key']!r}: {classes}); "
           f"images {s['image_size']} px, encoder input {s['input_size']} px.",
           f"Protocol: {s['protocol']['neural_collapse']}.", "",
           "## Neural collapse per layer", "",
           "NC1 = tr(S_W pinv(S_B))/C and tr(S_W)/tr(S_B) fall under collapse; NC2: norm CV -> 0 and the mean "
           "cosine of centred class means -> -1/(C-1) (simplex ETF); NCC = nearest-class-centre accuracy."
           + (" With 2 classes and balanced weighting NC2 holds by construction (the two centred class means are "
              "opposite: norm CV 0, cosine -1)." if len(s["classes"]) == 2 else ""), "",
           "| encoder | layer | dim | NC1 | tr(S_W)/tr(S_B) | NC2 norm CV | NC2 cos mean ± std | NCC accuracy |",
           "|---|---|---|---|---|---|---|---|"]
  for enc, r in s["encoders"].items():
    for layer, m in r["neural_collapse"].items():
      lines.append(f"| {enc} | {layer} | {m['dim']} | {m['nc1']:.4g} | {m['within_between_ratio']:.4g} | "
                   f"{m['norm_cv']:.3f} | {m['cos_mean']:.3f} ± {m['cos_std']:.3f} | {m['ncc_accuracy']:.3f} |")
  if s["attention_method"]:
    lines += ["", f"## Attention maps ({s['attention_method']})", "", f"Protocol: {s['protocol']['attention']}.",
              "Empty maps: zero everywhere (Grad-CAM of a target class whose channel weights are all negative, "
              "typically a class the probe head does not predict for that image)."]
    has_mask = bool(s["mask_key"] or s.get("derived_mask"))
    if has_mask:
      lines.append(f"Fraction of each map inside {s.get('mask_name') or repr(s['mask_key'])} (mean ± std over "
                   "images); mask area = the fraction a uniform map would have.")
    lines += ["", "| encoder | probe head accuracy | empty maps | fraction inside | mask area "
              "| per class (inside / area) |",
              "|---|---|---|---|---|---|"]
    for enc, r in s["encoders"].items():
      at = r.get("attention", {})
      acc = f"{at['probe_accuracy']:.3f}" if "probe_accuracy" in at else "-"
      acc += f" | {at.get('num_empty_maps', '-')}"  # All-zero Grad-CAM maps (target class scored low).
      if has_mask:
        fi, ma = at["fraction_inside"], at["mask_area"]
        per = "; ".join(f"{c}: {_pm(fi['per_class'][c])} / {ma['per_class'][c]['mean']:.3f}" for c in fi["per_class"])
        nan = f" ({fi['nan_count']} all-zero maps left out)" if fi["nan_count"] else ""
        lines.append(f"| {enc} | {acc} | {_pm(fi)}{nan} | {_pm(ma)} | {per} |")
      else:
        lines.append(f"| {enc} | {acc} | - | - | - |")
  lines += ["", "## Files", ""]
  for enc, r in s["encoders"].items():
    files = list(r["embedding_maps"].values()) + [r.get("attention", {}).get(k) for k in ("overlay", "maps_file")]
    lines += [f"- {enc}: " + ", ".join(os.path.basename(f) for f in files if f)]
  lines += ["", f"Wall-clock {s.get('wall_clock_s', 0):.0f}s; output folder {s['output_dir']}."]
  return "\n".join(lines)


def analyze(config, workdir: str, *, mesh=None) -> dict:
  return run(config, workdir, builder=pipeline.open_dataset(config.data), mesh=mesh)


MODES = {"analyze": analyze}
PRETRAINING_MODES = ("analyze",)

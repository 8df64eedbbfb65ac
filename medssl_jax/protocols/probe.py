"""Evaluation of frozen or fine-tuned encoders on a dataset's splits, as config.eval names it.

`probe` runs the protocol (`linear_probe`, `knn`, `finetune` or `fewshot` episodes) on the (label-subset of the)
training split for each encoder, scores the test split (accuracy, AUROC, kappa, bootstrap intervals) and the OOD targets of
config.ood; `format_table`, `results_name` and `write_results` give its Markdown table and result files.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time

import jax
import numpy as np

from medssl_jax import config as config_lib
from medssl_jax import models
from medssl_jax import objectives
from medssl_jax import paths
from medssl_jax.data import masks as masks_lib
from medssl_jax.data import pipeline
from medssl_jax.data import subsets
from medssl_jax.evals import attention as attention_lib
from medssl_jax.evals import fewshot as fewshot_lib
from medssl_jax.evals import finetune as finetune_lib
from medssl_jax.evals import knn as knn_lib
from medssl_jax.evals import linear_probe as probe_lib
from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.evals import ood as ood_lib
from medssl_jax.evals import representation
from medssl_jax.evals import results as results_lib
from medssl_jax.protocols import encoders as encoders_lib
from medssl_jax.protocols import ood as ood_protocol
from medssl_jax.train import reporting

SCRATCH = "supervised (random init)"  # A random init fine-tuned with labels: the supervised-from-scratch baseline.


def check(config):
  """The evaluation settings a probe needs beyond the core checks: feature layers of this model, and the OOD
  targets (medssl_jax/protocols/ood.py)."""
  _check_feature_layers(config)
  ood_protocol.check(config)
  if config.eval.protocol == "fewshot" and (config.ood.targets or config.eval.neural_collapse):
    raise ValueError("config.eval.protocol='fewshot' scores episodes of the test split only: it takes no ood.targets "
                     "and no eval.neural_collapse; use linear_probe or knn for those")
  _check_attention(config)


def _check_attention(config):
  e = config.eval
  if not e.attention_mask:
    return
  config_lib.check_choice(e.attention_method, ("grad_cam", "activation_norm", "grad_feature_norm"),
                          "config.eval.attention_method")
  protocols = ("linear_probe",) if e.attention_method == "grad_cam" else ("linear_probe", "knn")
  if e.protocol not in protocols:
    raise ValueError(f"config.eval.attention_mask={e.attention_mask!r} measures attention beside "
                     f"{' / '.join(protocols)} results (attention_method={e.attention_method!r}); "
                     f"config.eval.protocol={e.protocol!r} gives none: clear attention_mask or change the protocol")
  if not (isinstance(e.attention_images, int) and e.attention_images >= 0):
    raise ValueError(f"config.eval.attention_images={e.attention_images!r} must be an int >= 0 (0: the whole test split)")
  if models.takes_volumes(config) or config.model.encoder.startswith("vit"):
    raise ValueError(f"config.eval.attention_mask measures 2D ResNet maps; config.model.encoder="
                     f"{config.model.encoder!r} has none of that kind: clear attention_mask")


def _check_feature_layers(config):
  """eval.feature_layers / eval.neural_collapse: known layer names of this model, protocols that use them."""
  e = config.eval
  layers = e.feature_layers
  if (isinstance(layers, str) or not isinstance(layers, (tuple, list)) or not layers
      or not all(isinstance(l, str) for l in layers)):
    raise ValueError(f"config.eval.feature_layers must be a non-empty tuple of layer names, e.g. "
                     f"('backbone', 'projector/out'), got {layers!r}")
  if len(set(layers)) != len(layers):
    raise ValueError(f"config.eval.feature_layers lists a layer twice: {tuple(layers)!r}")
  if e.protocol == "finetune" and (tuple(layers) != ("backbone",) or e.neural_collapse):
    raise ValueError("config.eval.feature_layers and eval.neural_collapse apply to the frozen-feature protocols "
                     "(linear_probe, knn); eval.protocol='finetune' trains a head on the backbone output, so it "
                     f"needs feature_layers=('backbone',) and neural_collapse=False, got {tuple(layers)!r} and "
                     f"{e.neural_collapse!r}")
  # Building the module is cheap (no parameters are created) and names exactly what layer_features accepts.
  valid = representation.available_layers(objectives.build_model(config))
  unknown = [l for l in layers if l not in valid]
  if unknown:
    raise ValueError(f"config.eval.feature_layers: unknown layer(s) {unknown} for {config.model.encoder} with "
                     f"the {config.objective.name!r} heads; valid layers: {valid}")


def label_subset(config, builder, workdir: str | None):
  """The labelled training records named by config.eval (train_subset / subset_file), or None for all.

  A new subset is chosen from the split's labels (and patient ids, where the dataset has them) and
  written to <workdir>/subsets/ with its sha256; a given subset file is read and verified instead.
  Returns (sorted record indices, the subset record) or (None, None).
  """
  d, e = config.data, config.eval
  if not e.subset_file and subsets.parse_spec(e.train_subset)[0] == "all":
    return None, None
  n = pipeline.num_examples(builder, d.train_split)
  name = pipeline.dataset_name(builder)
  if e.subset_file:
    record = subsets.read(e.subset_file, dataset=name, split=d.train_split, num_records=n)
    path = e.subset_file
  else:
    labels = pipeline.read_column(builder, split=d.train_split, key="label")
    pids = (pipeline.read_column(builder, split=d.train_split, key="patient_id")
            if "patient_id" in builder.info.features else None)
    indices = subsets.select(labels, spec=e.train_subset, seed=e.subset_seed, patient_ids=pids)
    path = paths.join(workdir or ".", "subsets",
                        subsets.file_name(dataset=name, split=d.train_split, spec=e.train_subset, seed=e.subset_seed))
    record = subsets.write(path, indices=indices, spec=e.train_subset, seed=e.subset_seed, dataset=name,
                           split=d.train_split, num_records=n, labels=labels)
  record = dict(record, file=paths.absolute(path))
  print(f"label subset {record['spec']!r} (seed {record['seed']}): {record['num_selected']} of {n} "
        f"'{d.train_split}' records, sha256 {record['sha256'][:12]}, {path}", flush=True)
  return np.asarray(record["indices"], np.int64), record


def _subset_summary(subset) -> dict:
  """What a results row records about its label subset (the index list stays in the subset file)."""
  return {k: subset[k] for k in ("spec", "seed", "num_selected", "num_records", "sha256", "file")}


DEFAULT_LAYERS = ("backbone",)


def _layered(config) -> bool:
  """Whether results are per layer (keys 'name @ layer', a layer column): any eval.feature_layers but the default."""
  return tuple(config.eval.feature_layers) != DEFAULT_LAYERS


def result_key(name: str, layer: str, *, layered: bool) -> str:
  """The results key of one encoder and layer: the encoder name alone for the default backbone-only
  probe, else 'simclr (pretrained) @ projector/out'."""
  return f"{name} @ {layer}" if layered else name


def _frozen_features(model, variables, images, *, layers, mesh, **kw) -> dict:
  """{layer: features [N, d]} of uint8 images, one forward pass for all layers."""
  if tuple(layers) == DEFAULT_LAYERS:
    # The backbone alone: exactly the linear-probe module's features (and its compiled program).
    return {"backbone": probe_lib.extract_features(model, variables, images, mesh=mesh, **kw)}
  return representation.layer_features(model, variables, images, layers=list(layers), mesh=mesh, **kw)


def _neural_collapse(train_features, train_labels, test_features, test_labels) -> dict:
  """Neural-collapse measures of one layer on the train and test features (class means of each split),
  plus nearest-class-centre accuracy on the test split with the training split's class means."""
  return {"train": representation.neural_collapse(features=train_features, labels=train_labels),
          "test": representation.neural_collapse(features=test_features, labels=test_labels),
          "ncc_test_accuracy": representation.ncc_accuracy(
              train_features=train_features, train_labels=train_labels, test_features=test_features,
              test_labels=test_labels)}


def probe(config, encoders: dict, *, builder, mesh=None, workdir: str | None = None) -> dict:
  """Linear-probes (or kNN-classifies, per eval.protocol) the frozen features of each named
  (model, variables, recalibrate) encoder on the same splits; returns {key: metrics}.

  Each encoder is probed at every layer of eval.feature_layers (features of all layers from one
  forward pass); keys are the encoder names for the default ("backbone",), else 'name @ layer', and
  every result records its "layer". With eval.neural_collapse, each result also holds
  "neural_collapse": {"train": ..., "test": ..., "ncc_test_accuracy": ...} of that layer's features.
  """
  d, e = config.data, config.eval
  t0 = time.perf_counter()
  indices, subset = label_subset(config, builder, workdir)
  train = pipeline.load_split_arrays(builder, split=d.train_split, image_size=d.image_size, fit=d.fit,
                                     indices=indices)
  test = pipeline.load_split_arrays(builder, split=d.test_split, image_size=d.image_size, fit=d.fit)
  if e.max_train_examples:
    train = {k: v[:e.max_train_examples] for k, v in train.items()}
  num_classes = pipeline.num_classes(builder)
  size = config.augment.views[0].crop_size
  kw = dict(image_size=size, mean=tuple(d.mean), std=tuple(d.std), batch_size=e.batch_size)
  results = {}
  # OOD targets (config.ood): loaded once, scored by every encoder's trained classifier.
  ood_targets = ood_protocol.load_targets(config) if config.ood.targets else None
  source_classes, multi_label = pipeline.label_names(builder), pipeline.is_multi_label(builder)
  if ood_targets:  # Label maps and kinds (single- vs multi-label) checked before any training.
    ood_protocol.check_label_maps(ood_targets, source_classes=source_classes, source_multi_label=multi_label)
  attention_masks = _attention_masks(config, builder, test) if e.attention_mask and e.protocol != "finetune" else None
  if e.protocol == "finetune":
    return _finetune_all(config, encoders, builder=builder, train=train, test=test, subset=subset,
                         num_classes=num_classes, mesh=mesh, t0=t0, ood_targets=ood_targets,
                         source_classes=source_classes, workdir=workdir)
  if e.neural_collapse and (np.ndim(train["label"]) != 1 or np.ndim(test["label"]) != 1):
    raise ValueError(f"config.eval.neural_collapse needs one class label per image; {config.data.builder} "
                     f"labels have shape {np.shape(train['label'])[1:]} per image (multi-label)")
  layers, layered = tuple(e.feature_layers), _layered(config)
  test_scores = {}  # {layer: {encoder name: (result key, test class scores)}}, for the paired comparison.
  for name, (model, variables, recalibrate) in encoders.items():
    if recalibrate:
      variables = probe_lib.recalibrate_batch_stats(model, variables, train["image"], image_size=size,
                                                    mean=tuple(d.mean), std=tuple(d.std), batch_size=e.batch_size)
    train_features = _frozen_features(model, variables, train["image"], layers=layers, mesh=mesh, **kw)
    test_features = _frozen_features(model, variables, test["image"], layers=layers, mesh=mesh, **kw)
    for layer in layers:
      tr, te = train_features[layer], test_features[layer]
      if e.protocol == "fewshot":  # Episodes, one result per shots x classifier: no class scores of the test split.
        for key, r in _fewshot(config, name, layer, tr, train["label"], te, test["label"], layered=layered).items():
          results[key] = dict(r, **({"label_subset": _subset_summary(subset)} if subset is not None else {}))
        continue
      if e.protocol == "knn":
        r = knn_lib.knn_eval(train_features=tr, train_labels=train["label"], test_features=te,
                             test_labels=test["label"], num_classes=num_classes, k=e.knn_k,
                             temperature=e.knn_temperature, weighting=e.knn_weighting)
        score = lambda f, tr=tr: knn_lib.knn_scores(
            train_features=tr, train_labels=train["label"], test_features=f, num_classes=num_classes, k=e.knn_k,
            temperature=e.knn_temperature, weighting=e.knn_weighting)
        detail = f"k={e.knn_k}"
      else:
        r, score = probe_lib.linear_probe(tr, train["label"], te, test["label"], num_classes=num_classes,
                                          l2_grid=tuple(e.l2_grid), max_iter=e.max_iter, seed=config.seed,
                                          return_predictor=True)
        detail = f"l2={r['l2']:g}"
      r["layer"] = layer
      probs = score(te)
      r.update(_report(config, test["label"], probs))
      if ood_targets:
        predict = lambda images, score=score, layer=layer, model=model, variables=variables: score(
            _frozen_features(model, variables, images, layers=(layer,), mesh=mesh, **kw)[layer])
        r["ood"] = ood_protocol.evaluate_targets(config, predict=predict, source_classes=source_classes,
                                            loaded=ood_targets, source_multi_label=multi_label)
      if attention_masks is not None and layer == "backbone":
        r["attention"] = _attention_inside(config, model, variables, masks=attention_masks, test=test,
                                           head_data=(tr, train["label"], r.get("l2")), num_classes=num_classes,
                                           image_size=size)
        detail += f"; attention in mask {r['attention']['fraction_inside']:.3f} (area {r['attention']['mask_area']:.3f})"
      if e.neural_collapse:
        r["neural_collapse"] = nc = _neural_collapse(tr, train["label"], te, test["label"])
        detail += f"; NC1 train {nc['train']['nc1']:.4g} / test {nc['test']['nc1']:.4g}"
      if subset is not None:
        r["label_subset"] = _subset_summary(subset)
      key = result_key(name, layer, layered=layered)
      results[key] = r
      test_scores.setdefault(layer, {})[name] = (key, probs)
      print(f"{e.protocol} [{key}]: accuracy {r['accuracy']:.4f}  AUROC {r['auroc']:.4f}  ({detail})", flush=True)
  if e.bootstrap_samples:
    for named in test_scores.values():
      if len(named) == 2:  # E.g. pretrained vs random init: the interval of their difference on the same images.
        (key_a, probs_a), (key_b, probs_b) = named.values()
        results[key_a]["paired_difference"] = dict(
            other=key_b, **_paired_difference(config, test["label"], probs_a, probs_b))
  print(f"{e.protocol} evaluations done in {time.perf_counter() - t0:.0f}s "
        f"({len(train['label'])} train / {len(test['label'])} test examples, {num_classes} classes)", flush=True)
  return results


def _attention_masks(config, builder, test) -> np.ndarray:
  """The eval.attention_mask masks of the first eval.attention_images test images: bool [N, H, W]."""
  e, d = config.eval, config.data
  n = e.attention_images or len(test["label"])
  if e.attention_mask in masks_lib.NAMES:
    return masks_lib.derive_all(e.attention_mask, test["image"][:n])
  pipeline.check_extra_keys(builder, (e.attention_mask,))
  loaded = pipeline.load_split_arrays(builder, split=d.test_split, image_size=d.image_size, fit=d.fit,
                                      extra_keys=(e.attention_mask,))
  return loaded[e.attention_mask][:n, ..., 0] != 0


def _attention_inside(config, model, variables, *, masks, test, head_data, num_classes, image_size) -> dict:
  """eval.attention_method maps of the first len(masks) test images and their fraction inside the masks (mean,
  std over images; NaN maps, all zero, left out and counted), beside the masks' own area (a uniform map's)."""
  e, d = config.eval, config.data
  n = len(masks)
  images, labels = test["image"][:n], np.asarray(test["label"])[:n]
  head, target = None, None
  if e.attention_method == "grad_cam":  # The probe's classifier, at its chosen L2, refit on all its features.
    train_x, train_y, l2 = head_data
    head = attention_lib.fit_probe_head(train_x, train_y, num_classes=num_classes, l2=l2, max_iter=e.max_iter)
    target = labels if labels.ndim == 1 else None
  maps = attention_lib.compute_maps(e.attention_method, model.backbone, attention_lib.backbone_variables(variables),
                                    images, image_size=image_size, mean=tuple(d.mean), std=tuple(d.std), head=head,
                                    target=target, batch_size=min(64, e.batch_size))
  fraction, area = attention_lib.fraction_and_area(maps, masks)
  ok = np.isfinite(fraction)
  return dict(method=e.attention_method, mask=e.attention_mask, images=int(n), empty_maps=int((~ok).sum()),
              fraction_inside=float(np.mean(fraction[ok])) if ok.any() else float("nan"),
              fraction_inside_std=float(np.std(fraction[ok])) if ok.any() else float("nan"),
              mask_area=float(np.mean(area)))


def _fewshot(config, name, layer, train_features, train_labels, test_features, test_labels, *, layered) -> dict:
  """{result key: result} of eval.fewshot's episodes for one encoder and layer; keys name shots and classifier."""
  f = config.eval.fewshot
  out = {}
  for shots in f.shots:
    for classifier in f.classifiers:
      r = fewshot_lib.episodes(support_features=train_features, support_labels=train_labels,
                               query_features=test_features, query_labels=test_labels, n_way=f.n_way, k_shot=shots,
                               n_query=f.n_query, num_episodes=f.episodes, seed=config.seed, classifier=classifier)
      key = result_key(f"{name} ({shots}-shot {classifier})", layer, layered=layered)
      out[key] = dict(accuracy=r["accuracy"], auroc=None, layer=layer, fewshot=r)
      print(f"fewshot [{key}]: accuracy {r['accuracy']:.4f} ± {r['ci95']:.4f} (95% interval over {r['episodes']} "
            f"{r['n_way']}-way episodes)", flush=True)
  return out


def _paired_difference(config, labels, probs_a, probs_b) -> dict:
  """{"accuracy": [low, high], "auroc": [low, high], "ci_level"}: paired percentile bootstrap intervals of encoder a's
  test metric minus encoder b's (eval.bootstrap_samples resamples, within each class for single-label data)."""
  multi = np.ndim(labels) == 2
  out = {}
  for name, fn in metrics_lib.scalar_metrics(multi_label=multi).items():
    ci = metrics_lib.paired_difference_ci(fn, labels, probs_a, probs_b, num_samples=config.eval.bootstrap_samples,
                                          seed=config.seed, stratified=not multi)
    out[name] = [ci["low"], ci["high"]]
    out["ci_level"] = 1 - ci["alpha"]
  return out


def _report(config, labels, probs) -> dict:
  """Kappa (eval.ordinal) and bootstrap intervals (eval.bootstrap_samples) of one evaluation's test scores."""
  return metrics_lib.report(labels, probs, ordinal=config.eval.ordinal,
                            bootstrap_samples=config.eval.bootstrap_samples, seed=config.seed)


def resolve_epochs(config, num_train: int) -> bool:
  """Turns an epoch schedule (config.eval.finetune_epochs, finetune_eval_every_epoch) into steps for a training
  split of `num_train` records, in place, and clears the epoch keys: the resolved config is the one a schedule
  given in steps would be (the same run, the same table-row identity). Returns whether anything changed."""
  e = config.eval
  if not (e.finetune_epochs or e.finetune_eval_every_epoch):
    return False
  epoch = math.ceil(num_train / e.finetune_batch_size)
  if e.finetune_epochs:
    e.finetune_steps = int(e.finetune_epochs) * epoch
  if e.finetune_eval_every_epoch:
    e.finetune_eval_every = epoch
  e.finetune_epochs, e.finetune_eval_every_epoch = 0, False
  return True


FINETUNE_CHECKPOINTS = "finetune_checkpoints"


def _finetune_all(config, encoders, *, builder, train, test, subset, num_classes, mesh, t0, ood_targets=None,
                  source_classes=None, workdir=None):
  """eval.protocol=finetune: each encoder's backbone fine-tuned with a new head on the (subset of the)
  training split, checkpoint selected by validation AUROC on data.val_split, scored on the test split.
  A randomly initialised encoder trained this way is the supervised-from-scratch baseline. With a workdir,
  each fine-tuning checkpoints to <workdir>/finetune_checkpoints/<encoder>/ and an interrupted one resumes
  (`probe_and_write` removes them once the results are written)."""
  if config.eval.finetune_epochs or config.eval.finetune_eval_every_epoch:
    config = config.copy_and_resolve_references()
    resolve_epochs(config, pipeline.num_examples(builder, config.data.train_split))
  d, e = config.data, config.eval
  val = None
  if d.val_split:
    val = pipeline.load_split_arrays(builder, split=d.val_split, image_size=d.image_size, fit=d.fit)
  size = config.augment.views[0].crop_size
  results = {}
  for name, (model, variables, recalibrate) in encoders.items():
    cached = finetune_cache_path(config, variables, recalibrate=recalibrate) if name == SCRATCH else None
    if cached and paths.exists(cached):
      results[name] = r = dict(paths.read_json(cached), reused_from=cached)
      print(f"finetune [{name}]: accuracy {r['accuracy']:.4f}  AUROC {r['auroc']:.4f}  (the same fine-tuning's "
            f"result, from {cached})", flush=True)
      continue
    if recalibrate and e.finetune_backbone_lr_scale == 0:  # A frozen random backbone needs real BN statistics.
      variables = probe_lib.recalibrate_batch_stats(model, variables, train["image"], image_size=size,
                                                    mean=tuple(d.mean), std=tuple(d.std), batch_size=e.batch_size)
    r, predict = finetune_lib.finetune(
        model=model, variables=variables, train_images=train["image"], train_labels=train["label"],
        val_images=None if val is None else val["image"], val_labels=None if val is None else val["label"],
        test_images=test["image"], test_labels=test["label"], num_classes=num_classes,
        multi_label=np.ndim(train["label"]) == 2, image_size=size, mean=tuple(d.mean), std=tuple(d.std),
        steps=e.finetune_steps, batch_size=e.finetune_batch_size, learning_rate=e.finetune_learning_rate,
        weight_decay=e.finetune_weight_decay, backbone_lr_scale=e.finetune_backbone_lr_scale,
        warmup_steps=e.finetune_warmup_steps, eval_every=e.finetune_eval_every or None,
        eval_batch_size=e.batch_size, seed=config.seed, mesh=mesh, schedule=e.finetune_schedule,
        milestones=tuple(e.finetune_milestones), augment=e.finetune_augment, return_predictor=True,
        progress=name, test_curve=e.finetune_test_curve, checkpoint_dir=None if workdir is None else paths.join(
            workdir, FINETUNE_CHECKPOINTS, re.sub(r"[^A-Za-z0-9._-]+", "_", name)))
    r.update(_report(config, test["label"], predict(test["image"])))
    if ood_targets:
      r["ood"] = ood_protocol.evaluate_targets(config, predict=predict, source_classes=source_classes,
                                          loaded=ood_targets, source_multi_label=np.ndim(train["label"]) == 2)
    r.pop("curve", None)  # Per-step training curve: in the log, not in the results table.
    if subset is not None:
      r["label_subset"] = _subset_summary(subset)
    results[name] = r
    if cached and jax.process_index() == 0:
      results_lib.write_json(cached, r)
    print(f"finetune [{name}]: accuracy {r['accuracy']:.4f}  AUROC {r['auroc']:.4f}  "
          f"(selected step {r['selected_step']})", flush=True)
  print(f"finetune evaluations done in {time.perf_counter() - t0:.0f}s ({len(train['label'])} train / "
        f"{len(test['label'])} test examples, {num_classes} classes)", flush=True)
  return results


# What a fine-tuning does not read: the pretraining's objective, schedule, heads and inflation source, the mode, and
# which other encoders run beside it. A finetune_cache_path covers every other key, so the arms of a table (SimCLR,
# BYOL, an inflated 2D encoder) find one another's from-scratch baseline (SCRATCH, the one encoder kept: a pretrained
# encoder's row, rerun, trains again).
FINETUNE_FREE_KEYS = ("mode", "objective", "train", "eval.compare_random_init", "eval.finetune_cache_dir",
                      "model.projector_hidden_dims", "model.projector_dim", "model.predictor_hidden_dims",
                      "model.decoder_dim", "model.decoder_depth", "model.decoder_heads", "model.inflate_from",
                      "model.inflate_method")


def finetune_cache_path(config, variables, *, recalibrate: bool) -> str | None:
  """<config.eval.finetune_cache_dir>/<digest>.json, where the result of fine-tuning these starting `variables`
  with `config` is kept, or None when finetune_cache_dir is "". The digest covers the config less
  FINETUNE_FREE_KEYS, `recalibrate`, and the backbone's starting weights (parameters and BatchNorm statistics, with
  their paths, shapes and dtypes): only the same fine-tuning from the same weights finds the file."""
  if not config.eval.finetune_cache_dir:
    return None
  settings = json.loads(config.to_json_best_effort())
  for key in FINETUNE_FREE_KEYS:
    *parents, last = key.split(".")
    node = settings
    for part in parents:
      node = node.get(part, {})
    node.pop(last, None)
  h = hashlib.sha256(json.dumps([settings, bool(recalibrate)], sort_keys=True, default=str).encode())
  backbone = {k: variables[k]["backbone"] for k in ("params", "batch_stats") if "backbone" in variables.get(k, {})}
  for path, leaf in jax.tree_util.tree_flatten_with_path(backbone)[0]:
    a = np.asarray(jax.device_get(leaf))
    h.update(f"{jax.tree_util.keystr(path)} {a.dtype} {a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return paths.join(config.eval.finetune_cache_dir, f"{h.hexdigest()[:16]}.json")


def format_table(results: dict, *, config) -> str:
  """A Markdown table of probe results, with the protocol and data named."""
  kind = config.eval.protocol
  if kind == "knn":
    protocol = knn_lib.protocol(k=config.eval.knn_k, temperature=config.eval.knn_temperature,
                                weighting=config.eval.knn_weighting)
  elif kind == "fewshot":
    f = config.eval.fewshot
    protocol = (f"{f.n_way or 'all'}-way episodes ({f.episodes}, {f.n_query} test-split queries per class), support "
                "from the training split; features L2-normalised; accuracy ± the 95% interval over episodes "
                "(medssl_jax/evals/fewshot.py)")
  elif kind == "finetune":
    first = next(iter(results.values()), {})
    protocol = f"{first.get('protocol', finetune_lib.PROTOCOL)}; {first.get('selection', '')}".rstrip("; ")
  else:
    protocol = probe_lib.PROTOCOL
  title = {"knn": "kNN", "finetune": "Fine-tuning", "fewshot": "Few-shot episodes"}.get(kind, "Linear probe")
  layered = kind != "finetune" and _layered(config)
  nc = kind != "finetune" and any("neural_collapse" in r for r in results.values())
  extra_lines = []
  if layered:
    extra_lines.append(f"Layers: {', '.join(config.eval.feature_layers)} (inference mode; ResNet stages global-"
                       "average-pooled; projector/hiddenN after BN and ReLU)")
  if nc:
    extra_lines.append(f"{representation.PROTOCOL[0].upper()}{representation.PROTOCOL[1:]}; NCC test = test split "
                       "vs training class means")
  ci = any("auroc_ci" in r for r in results.values())
  kappa = any("kappa" in r for r in results.values())
  level = next((r["ci_level"] for r in results.values() if "ci_level" in r), 0.95)
  head = ["encoder", *(["layer"] if layered else []), "accuracy", "AUROC (macro OvR)",
          *([f"AUROC {100 * level:g}% CI"] if ci else []), *(["kappa (quadratic)"] if kappa else []),
          *(["NC1 (train)", "NC1 (test)", "tr(S_W)/tr(S_B) (train)", "NCC accuracy (test)"] if nc else [])]
  lines = [f"{title} on {config.data.builder}"
           f"{'/' + config.data.builder_config if config.data.builder_config else ''} "
           f"(train split '{config.data.train_split}', test split '{config.data.test_split}')",
           f"Protocol: {protocol}", *extra_lines, *_subset_line(results), ""]
  rows = []
  by_layer: dict[str, dict[str, dict]] = {}  # {layer: {encoder name: result}}, for the differences below.
  for key, r in results.items():
    layer = r.get("layer", "backbone")
    name = key[:-len(f" @ {layer}")] if layered and key.endswith(f" @ {layer}") else key
    by_layer.setdefault(layer, {})[name] = r
    accuracy = f"{r['accuracy']:.4f}" + (f" ± {r['fewshot']['ci95']:.4f}" if "fewshot" in r else "")
    cells = [name, *([layer] if layered else []), accuracy, "—" if r["auroc"] is None else f"{r['auroc']:.4f}"]
    if ci:
      cells.append("{:.4f}-{:.4f}".format(*r["auroc_ci"]) if "auroc_ci" in r else "—")
    if kappa:
      cells.append(f"{r['kappa']:.4f}" if "kappa" in r else "—")
    if nc:
      m = r.get("neural_collapse")
      cells += ([f"{m['train']['nc1']:.4g}", f"{m['test']['nc1']:.4g}", f"{m['train']['within_between_ratio']:.4g}",
                 f"{m['ncc_test_accuracy']:.4f}"] if m else ["—"] * 4)
    rows.append(cells)
  lines += results_lib.markdown_table(head, rows)
  diffs = []
  for layer, named in by_layer.items():
    names = list(named)
    if len(names) == 2 and all(r["auroc"] is not None for r in named.values()):  # (Few-shot results have none.)
      a, b = named[names[0]], named[names[1]]
      line = (f"{names[0]} - {names[1]}{f' @ {layer}' if layered else ''}: accuracy "
              f"{a['accuracy'] - b['accuracy']:+.4f}, AUROC {a['auroc'] - b['auroc']:+.4f}")
      paired = a.get("paired_difference")
      if paired:
        line += (f" (paired bootstrap {100 * paired['ci_level']:g}% CI: accuracy {paired['accuracy'][0]:+.4f} to "
                 f"{paired['accuracy'][1]:+.4f}, AUROC {paired['auroc'][0]:+.4f} to {paired['auroc'][1]:+.4f})")
      diffs.append(line)
  if diffs:
    lines += ["", *diffs]
  if ci:
    lines += ["", f"CI: percentile bootstrap over test examples (resampled within each class), "
              f"{next(r['bootstrap_samples'] for r in results.values() if 'bootstrap_samples' in r)} resamples."]
  ood = ood_lib.format_ood(results)
  if ood:
    lines += ["", ood]
  return "\n".join(lines)


def _subset_line(results):
  subset = next((r["label_subset"] for r in results.values() if "label_subset" in r), None)
  if subset is None:
    return []
  return [f"Labelled training records: {subset['spec']!r} subset, seed {subset['seed']}: {subset['num_selected']} "
          f"of {subset['num_records']} (sha256 {subset['sha256'][:12]}, {os.path.basename(subset['file'])})"]


def results_name(config) -> str:
  """File stem of an evaluation's results in the workdir: one per protocol and label subset, so
  evaluating a workdir another way never overwrites earlier results ('probe_results' is the linear
  probe on all labels; e.g. 'probe_results_finetune_10pct_seed0' otherwise). Probes of other layers
  than the backbone add '_layers-<layer>+<layer>' ('/' written '_'), neural-collapse measures '_nc'."""
  e = config.eval
  name = "probe_results" + ("" if e.protocol == "linear_probe" else f"_{e.protocol}")
  if e.subset_file:
    name += "_" + os.path.splitext(os.path.basename(e.subset_file))[0]
  elif subsets.parse_spec(e.train_subset)[0] != "all":
    tag = subsets.file_name(dataset="x", split="x", spec=e.train_subset, seed=e.subset_seed)
    name += "_" + tag[len("x_x_"):-len(".json")]
  if e.protocol != "finetune":  # Fine-tuning has neither (config.validate refuses them).
    if _layered(config):
      name += "_layers-" + "+".join(l.replace("/", "_") for l in e.feature_layers)
    if e.neural_collapse:
      name += "_nc"
  return name


def write_results(workdir, results, table, name="probe_results", *, step: int = 0):
  """<workdir>/<name>.json and .md, and the scalars in TensorBoard (<workdir>/tb/<name>, at `step`; process 0 only)."""
  if jax.process_index() != 0:
    return
  results_lib.write_results(workdir, name, results, table)
  reporting.write_eval_scalars(workdir, name, results, step=step)


def probe_and_write(config, encoders: dict, *, builder, workdir: str, mesh=None) -> dict:
  """`probe`, then its table printed and written to <workdir>/<results_name(config)>.{json,md}."""
  results = probe(config, encoders, builder=builder, mesh=mesh, workdir=workdir)
  table = format_table(results, config=config)
  print("\n" + table + "\n", flush=True)
  write_results(workdir, results, table, results_name(config), step=config.train.num_steps)
  checkpoints = paths.join(workdir, FINETUNE_CHECKPOINTS)
  if jax.process_index() == 0 and paths.exists(checkpoints):  # Written to resume an interrupted run; done now.
    paths.rmtree(checkpoints)
  return results


def compare_random_init(config, encoders: dict) -> dict:
  """encoders plus the random init pretraining started from, when config.eval.compare_random_init. Fine-tuned
  with labels, the random encoder is the supervised-from-scratch baseline, and is named so."""
  if not config.eval.compare_random_init:
    return encoders
  model, variables = encoders_lib.random_init_variables(config)
  name = SCRATCH if config.eval.protocol == "finetune" else "random init"
  return dict(encoders, **{name: (model, variables, True)})

"""What `main.py` runs: one function per `config.mode`, each writing its outputs into the workdir."""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from medssl_jax import config as config_lib
from medssl_jax import objectives
from medssl_jax.augment import views as views_lib
from medssl_jax.data import pipeline
from medssl_jax.data import subsets
from medssl_jax.evals import finetune as finetune_lib
from medssl_jax.evals import knn as knn_lib
from medssl_jax.evals import linear_probe as probe_lib
from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.evals import ood as ood_lib
from medssl_jax.evals import representation
from medssl_jax.train import checkpoint as ckpt_lib
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import pretrain as pretrain_lib


def load_pretrained(config, workdir):
  """The model and the latest checkpointed variables in `workdir` (error if there is none)."""
  model, _, tx, _ = pretrain_lib.build(config)
  state = pretrain_lib.init_train_state(config, model, tx, jax.random.key(0))
  manager = ckpt_lib.make_manager(workdir, keep=config.train.keep_checkpoints)
  restored = ckpt_lib.restore_latest(manager, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state),
                                     data_iter=False)
  manager.close()
  if restored is None:
    raise FileNotFoundError(f"No checkpoint in {os.path.abspath(workdir)}/checkpoints; run mode=pretrain "
                            "with this --workdir first")
  step, state, _ = restored
  print(f"loaded checkpoint at step {step} from {workdir}", flush=True)
  return model, state.variables


def random_init_variables(config):
  """The variables pretraining started from (same seed and key split as pretrain)."""
  model, _, tx, _ = pretrain_lib.build(config)
  init_key, _ = jax.random.split(jax.random.key(config.seed))
  state = pretrain_lib.init_train_state(config, model, tx, init_key)
  return model, state.variables


def dataset_name(builder) -> str:
  """'name/config' of a builder, as tables and subset files name it."""
  return builder.name + (f"/{builder.builder_config.name}" if builder.builder_config else "")


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
  name = dataset_name(builder)
  if e.subset_file:
    record = subsets.read(e.subset_file, dataset=name, split=d.train_split, num_records=n)
    path = e.subset_file
  else:
    labels = pipeline.read_column(builder, split=d.train_split, key="label")
    pids = (pipeline.read_column(builder, split=d.train_split, key="patient_id")
            if "patient_id" in builder.info.features else None)
    indices = subsets.select(labels, spec=e.train_subset, seed=e.subset_seed, patient_ids=pids)
    path = os.path.join(workdir or ".", "subsets",
                        subsets.file_name(dataset=name, split=d.train_split, spec=e.train_subset, seed=e.subset_seed))
    record = subsets.write(path, indices=indices, spec=e.train_subset, seed=e.subset_seed, dataset=name,
                           split=d.train_split, num_records=n, labels=labels)
  record = dict(record, file=os.path.abspath(path))
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
  probe (as before layers were selectable), else 'simclr (pretrained) @ projector/out'."""
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
  ood_targets = ood_lib.load_targets(config) if config.ood.targets else None
  source_classes, multi_label = pipeline.label_names(builder), pipeline.is_multi_label(builder)
  if ood_targets:  # Label maps and kinds (single- vs multi-label) checked before any training.
    ood_lib.check_label_maps(ood_targets, source_classes=source_classes, source_multi_label=multi_label)
  if e.protocol == "finetune":
    return _finetune_all(config, encoders, builder=builder, train=train, test=test, subset=subset,
                         num_classes=num_classes, mesh=mesh, t0=t0, ood_targets=ood_targets,
                         source_classes=source_classes)
  if e.neural_collapse and (np.ndim(train["label"]) != 1 or np.ndim(test["label"]) != 1):
    raise ValueError(f"config.eval.neural_collapse needs one class label per image; {config.data.builder} "
                     f"labels have shape {np.shape(train['label'])[1:]} per image (multi-label)")
  layers, layered = tuple(e.feature_layers), _layered(config)
  for name, (model, variables, recalibrate) in encoders.items():
    if recalibrate:
      variables = probe_lib.recalibrate_batch_stats(model, variables, train["image"], image_size=size,
                                                    mean=tuple(d.mean), std=tuple(d.std), batch_size=e.batch_size)
    train_features = _frozen_features(model, variables, train["image"], layers=layers, mesh=mesh, **kw)
    test_features = _frozen_features(model, variables, test["image"], layers=layers, mesh=mesh, **kw)
    for layer in layers:
      tr, te = train_features[layer], test_features[layer]
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
      r.update(_report(config, test["label"], score(te)))
      if ood_targets:
        predict = lambda images, score=score, layer=layer, model=model, variables=variables: score(
            _frozen_features(model, variables, images, layers=(layer,), mesh=mesh, **kw)[layer])
        r["ood"] = ood_lib.evaluate_targets(config, predict=predict, source_classes=source_classes,
                                            loaded=ood_targets, source_multi_label=multi_label)
      if e.neural_collapse:
        r["neural_collapse"] = nc = _neural_collapse(tr, train["label"], te, test["label"])
        detail += f"; NC1 train {nc['train']['nc1']:.4g} / test {nc['test']['nc1']:.4g}"
      if subset is not None:
        r["label_subset"] = _subset_summary(subset)
      key = result_key(name, layer, layered=layered)
      results[key] = r
      print(f"{e.protocol} [{key}]: accuracy {r['accuracy']:.4f}  AUROC {r['auroc']:.4f}  ({detail})", flush=True)
  print(f"{e.protocol} evaluations done in {time.perf_counter() - t0:.0f}s "
        f"({len(train['label'])} train / {len(test['label'])} test examples, {num_classes} classes)", flush=True)
  return results


def _report(config, labels, probs) -> dict:
  """Kappa (eval.ordinal) and bootstrap intervals (eval.bootstrap_samples) of one evaluation's test scores."""
  return metrics_lib.report(labels, probs, ordinal=config.eval.ordinal,
                            bootstrap_samples=config.eval.bootstrap_samples, seed=config.seed)


def _finetune_all(config, encoders, *, builder, train, test, subset, num_classes, mesh, t0, ood_targets=None,
                  source_classes=None):
  """eval.protocol=finetune: each encoder's backbone fine-tuned with a new head on the (subset of the)
  training split, checkpoint selected by validation AUROC on data.val_split, scored on the test split.
  A randomly initialised encoder trained this way is the supervised-from-scratch baseline."""
  d, e = config.data, config.eval
  val = None
  if d.val_split:
    val = pipeline.load_split_arrays(builder, split=d.val_split, image_size=d.image_size, fit=d.fit)
  size = config.augment.views[0].crop_size
  results = {}
  for name, (model, variables, recalibrate) in encoders.items():
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
        progress=name)
    r.update(_report(config, test["label"], predict(test["image"])))
    if ood_targets:
      r["ood"] = ood_lib.evaluate_targets(config, predict=predict, source_classes=source_classes,
                                          loaded=ood_targets, source_multi_label=np.ndim(train["label"]) == 2)
    r.pop("curve", None)  # Per-step training curve: in the log, not in the results table.
    if subset is not None:
      r["label_subset"] = _subset_summary(subset)
    results[name] = r
    print(f"finetune [{name}]: accuracy {r['accuracy']:.4f}  AUROC {r['auroc']:.4f}  "
          f"(selected step {r['selected_step']})", flush=True)
  print(f"finetune evaluations done in {time.perf_counter() - t0:.0f}s ({len(train['label'])} train / "
        f"{len(test['label'])} test examples, {num_classes} classes)", flush=True)
  return results


def format_table(results: dict, *, config) -> str:
  """A Markdown table of probe results, with the protocol and data named."""
  kind = config.eval.protocol
  if kind == "knn":
    protocol = knn_lib.protocol(k=config.eval.knn_k, temperature=config.eval.knn_temperature,
                                weighting=config.eval.knn_weighting)
  elif kind == "finetune":
    first = next(iter(results.values()), {})
    protocol = f"{first.get('protocol', finetune_lib.PROTOCOL)}; {first.get('selection', '')}".rstrip("; ")
  else:
    protocol = probe_lib.PROTOCOL
  title = {"knn": "kNN", "finetune": "Fine-tuning"}.get(kind, "Linear probe")
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
           f"Protocol: {protocol}", *extra_lines, *_subset_line(results), "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  by_layer: dict[str, dict[str, dict]] = {}  # {layer: {encoder name: result}}, for the differences below.
  for key, r in results.items():
    layer = r.get("layer", "backbone")
    name = key[:-len(f" @ {layer}")] if layered and key.endswith(f" @ {layer}") else key
    by_layer.setdefault(layer, {})[name] = r
    cells = [name, *([layer] if layered else []), f"{r['accuracy']:.4f}", f"{r['auroc']:.4f}"]
    if ci:
      cells.append("{:.4f}-{:.4f}".format(*r["auroc_ci"]) if "auroc_ci" in r else "—")
    if kappa:
      cells.append(f"{r['kappa']:.4f}" if "kappa" in r else "—")
    if nc:
      m = r.get("neural_collapse")
      cells += ([f"{m['train']['nc1']:.4g}", f"{m['test']['nc1']:.4g}", f"{m['train']['within_between_ratio']:.4g}",
                 f"{m['ncc_test_accuracy']:.4f}"] if m else ["—"] * 4)
    lines.append("| " + " | ".join(cells) + " |")
  diffs = []
  for layer, named in by_layer.items():
    names = list(named)
    if len(names) == 2:
      a, b = named[names[0]], named[names[1]]
      diffs.append(f"{names[0]} - {names[1]}{f' @ {layer}' if layered else ''}: accuracy "
                   f"{a['accuracy'] - b['accuracy']:+.4f}, AUROC {a['auroc'] - b['auroc']:+.4f}")
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


def _write_results(workdir, results, table, name="probe_results"):
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, f"{name}.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, f"{name}.md"), "w") as f:
    f.write(table + "\n")


TRANSFER_ENCODERS = ("pretrained", "random", "init_checkpoint", "pseudo_labeller")


def transfer_encoders(config, workdir: str, names) -> dict:
  """{display name: (model, variables, recalibrate)} for the encoders a transfer stage compares:
  "pretrained" (the checkpoint in `workdir`), "random" (random init), "init_checkpoint" (random init
  with the backbone from config.model.init_checkpoint, e.g. converted ImageNet weights) and
  "pseudo_labeller" (the backbone of SWCL stage 1 in `workdir`: supervised cross-entropy on the labelled
  set plus FixMatch on the pool, the supervised-pretraining baseline)."""
  # Pretrained and random encoders keep the architecture pretraining used: model.init_checkpoint switches the
  # ResNet to torchvision's padding (models.build_backbone), which only the imported weights need.
  plain = config
  if config.model.init_checkpoint:
    plain = config.copy_and_resolve_references()
    with plain.unlocked():
      plain.model.init_checkpoint = ""
  out = {}
  for name in names:
    if name not in TRANSFER_ENCODERS:
      raise ValueError(f"unknown transfer encoder {name!r}; valid choices: {list(TRANSFER_ENCODERS)}")
    if name == "pretrained":
      model, variables = load_pretrained(plain, workdir)
      out[f"{config.objective.name} (pretrained)"] = (model, variables, False)
    elif name == "random":
      model, variables = random_init_variables(plain)
      out["random init"] = (model, variables, True)
    elif name == "pseudo_labeller":
      from medssl_jax.swcl import pseudo_labeller  # Local: only this encoder needs it.
      _, stage1, _ = pseudo_labeller.load(plain, workdir)
      model, variables = random_init_variables(plain)  # Heads stay random; probes use the backbone only.
      variables = {col: dict(tree, backbone=stage1[col]["backbone"]) for col, tree in variables.items()}
      out["pseudo-labeller (CE + FixMatch)"] = (model, variables, False)
    else:
      if not config.model.init_checkpoint:
        raise ValueError("transfer encoder 'init_checkpoint' needs config.model.init_checkpoint (a torchvision / "
                         "timm ResNet state dict, see medssl_jax/models/convert_torch.py)")
      from medssl_jax.models import convert_torch  # Local: only this encoder needs it.
      model, variables = random_init_variables(config)
      variables = convert_torch.init_backbone(config, variables)
      label = os.path.basename(config.model.init_checkpoint)
      out[f"imported ({label})"] = (model, variables, False)
  return out


def _target_config(config, target: dict):
  """A copy of config whose data section (and probe input size) is one transfer target's."""
  cfg = config.copy_and_resolve_references()
  defaults = config_lib.base_config().data
  with cfg.unlocked():
    # The target's own dataset: unnamed fields take the schema defaults, not the pretraining data's values.
    for k in ("builder", "builder_config", "data_dir", "manual_dir", "train_split", "val_split", "test_split",
              "fit"):
      cfg.data[k] = target.get(k, defaults[k])
    if target.get("image_size"):
      cfg.data.image_size = int(target["image_size"])
      # The probe encodes images at views[0]'s size.
      cfg.augment.views = [views_lib.default_view(**dict(v, crop_size=int(target["image_size"])))
                           for v in cfg.augment.views]
    if "ordinal" in target:
      cfg.eval.ordinal = bool(target["ordinal"])
  return cfg


def transfer(config, workdir: str, *, mesh=None) -> dict:
  """mode "transfer": each of config.transfer.targets evaluated with config.eval's protocol on the pretrained
  encoder of `workdir` (and a random one when eval.compare_random_init, the imported one when
  model.init_checkpoint is set, and SWCL's stage-1 pseudo-labeller when the workdir holds one). Results per
  target in <workdir>/transfer/<name>/; encoders already evaluated there are read back, not recomputed.
  Returns {target name: {encoder: metrics}}."""
  names = ["pretrained"] + (["random"] if config.eval.compare_random_init else [])
  if config.model.init_checkpoint:
    names.append("init_checkpoint")
  from medssl_jax.swcl import pseudo_labeller  # Local: the SWCL stages import this module.
  if os.path.exists(os.path.join(pseudo_labeller.stage_dir(workdir), "summary.json")):
    names.append("pseudo_labeller")
  encoders = None
  out = {}
  for target in config.transfer.targets:
    cfg = _target_config(config, target)
    tdir = os.path.join(workdir, "transfer", target["name"])
    path = os.path.join(tdir, results_name(cfg) + ".json")
    done = {}
    if os.path.exists(path):
      with open(path) as f:
        done = json.load(f)
    encoders = encoders or transfer_encoders(config, workdir, names)
    todo = {k: v for k, v in encoders.items() if k not in done}
    if not todo:
      out[target["name"]] = done
      print(f"transfer [{target['name']}]: results already in {path}", flush=True)
      continue
    os.makedirs(tdir, exist_ok=True)
    builder = pipeline.builder_from_config(cfg.data)
    pipeline.check_channels(builder, cfg.data.channels)
    print(f"transfer [{target['name']}]: {dataset_name(builder)}, {cfg.eval.protocol}: {', '.join(todo)}", flush=True)
    results = dict(done, **probe(cfg, todo, builder=builder, mesh=mesh, workdir=tdir))
    table = format_table(results, config=cfg)
    print("\n" + table + "\n", flush=True)
    _write_results(tdir, results, table, results_name(cfg))
    out[target["name"]] = results
  return out


def segmentation(config, workdir: str, *, mesh=None) -> dict:
  """mode "segmentation": a U-Net decoder on each encoder of config.segmentation.encoders, trained and scored
  on config.segmentation's dataset (medssl_jax/evals/segmentation.py); results in <workdir>/segmentation/."""
  from medssl_jax.evals import attention
  from medssl_jax.evals import segmentation as segmentation_lib

  encoders = {}
  for name, (model, variables, _) in transfer_encoders(config, workdir, config.segmentation.encoders).items():
    # The U-Net takes the bare backbone module (its padding as the encoder was built) and its variables.
    encoders[name] = (model.backbone, attention.backbone_variables(variables))
  return segmentation_lib.run(config, workdir, encoders=encoders, mesh=mesh)


def _particles(config, workdir, *, builder, mesh):
  """mode "particles": pretraining on the training split without particles.holdout_class (so that class is new
  to the encoder), then medssl_jax/evals/particles.py on the pretrained (and random) encoder."""
  from medssl_jax.evals import particles

  indices = particles.pretrain_indices(builder, config.data.train_split, config.particles.holdout_class)
  if indices is not None:
    print(f"pretraining on {len(indices)} '{config.data.train_split}' records without class "
          f"{config.particles.holdout_class!r}", flush=True)
  model, state = pretrain_lib.pretrain(config, workdir, builder=builder, mesh=mesh, indices=indices)
  encoders = {f"{config.objective.name} (pretrained)": (model, state.variables, False)}
  if config.eval.compare_random_init:
    rmodel, rvars = random_init_variables(config)
    encoders["random init"] = (rmodel, rvars, True)
  return particles.run(config, workdir, encoders=encoders, builder=builder, mesh=mesh)


def run(config, workdir: str):
  """Dispatches on config.mode. Returns the evaluation results {encoder: metrics} (probe, kNN or
  fine-tuning per eval.protocol), the analysis summary for mode=analyze, {} for mode=pretrain, and the
  stage's summary for the SWCL / transfer modes."""
  config_lib.validate(config)
  workdir = os.path.abspath(workdir)
  if jax.process_count() > 1 and config.mode != "pretrain":
    raise ValueError(f"config.mode={config.mode!r} runs on one process; on {jax.process_count()} processes run "
                     "mode 'pretrain', then evaluate its workdir on one host (e.g. --config.mode=linear_eval), "
                     "which reads checkpoints written by any number of processes")
  mesh = mesh_lib.make_mesh()
  from medssl_jax.swcl import runner as swcl_runner  # Local: the SWCL stages import this module.
  if config.mode in swcl_runner.STAGE_MODES:
    return swcl_runner.run(config, workdir, mesh=mesh)
  config = swcl_runner.resolve_patch_data(config, workdir)
  if config.mode == "transfer":
    return transfer(config, workdir, mesh=mesh)
  if config.mode == "segmentation":
    return segmentation(config, workdir, mesh=mesh)
  builder = pipeline.builder_from_config(config.data)
  pipeline.check_channels(builder, config.data.channels)
  if config.mode == "pretrain":
    pretrain_lib.pretrain(config, workdir, builder=builder, mesh=mesh)
    return {}
  if config.mode == "particles":
    return _particles(config, workdir, builder=builder, mesh=mesh)
  if config.mode == "curriculum":
    from medssl_jax.train import curriculum  # Local: curriculum imports this module (probe, results).
    return curriculum.run_curriculum(config, workdir, builder=builder, mesh=mesh)
  if config.mode == "analyze":
    from medssl_jax import analysis  # Local: analysis imports this module (load_pretrained).
    return analysis.run(config, workdir, builder=builder, mesh=mesh)
  if config.mode == "supervised":
    # Supervised training from scratch (e.g. the MedMNIST recipe): the random encoder fine-tuned with
    # labels; no pretraining, nothing to compare against.
    os.makedirs(workdir, exist_ok=True)
    rmodel, rvars = random_init_variables(config)
    encoders = {"supervised (random init)": (rmodel, rvars, True)}
  elif config.mode == "pretrain_and_probe":
    model, state = pretrain_lib.pretrain(config, workdir, builder=builder, mesh=mesh)
    encoders = {f"{config.objective.name} (pretrained)": (model, state.variables, False)}
  else:  # linear_eval
    model, variables = load_pretrained(config, workdir)
    encoders = {f"{config.objective.name} (pretrained)": (model, variables, False)}
  if config.eval.compare_random_init and config.mode != "supervised":
    rmodel, rvars = random_init_variables(config)
    # Fine-tuned with labels, the random encoder is the supervised-from-scratch baseline: say so.
    name = "supervised (random init)" if config.eval.protocol == "finetune" else "random init"
    encoders[name] = (rmodel, rvars, True)
  results = probe(config, encoders, builder=builder, mesh=mesh, workdir=workdir)
  table = format_table(results, config=config)
  print("\n" + table + "\n", flush=True)
  _write_results(workdir, results, table, results_name(config))
  if objectives.get_objective(config.objective.name).text and config.mode != "supervised":
    # Image-text models also retrieve reports: recall@k on the test split (medssl_jax/evals/retrieval.py).
    from medssl_jax.evals import retrieval
    tokenizer = pretrain_lib.report_tokenizer(config, builder, workdir)
    retrieved = retrieval.evaluate(config, encoders, builder=builder, tokenizer=tokenizer, workdir=workdir, mesh=mesh)
    print("\n" + retrieval.format_table(retrieved, split=config.data.test_split) + "\n", flush=True)
  return results

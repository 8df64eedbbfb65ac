"""What `main.py` runs: one function per `config.mode`, each writing its outputs into the workdir."""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from medssl_jax import config as config_lib
from medssl_jax.data import pipeline
from medssl_jax.data import subsets
from medssl_jax.evals import finetune as finetune_lib
from medssl_jax.evals import knn as knn_lib
from medssl_jax.evals import linear_probe as probe_lib
from medssl_jax.train import checkpoint as ckpt_lib
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import pretrain as pretrain_lib


def load_pretrained(config, workdir):
  """The model and the latest checkpointed variables in `workdir` (error if there is none)."""
  model, _, tx, _ = pretrain_lib.build(config)
  state = pretrain_lib.init_train_state(config, model, tx, jax.random.key(0))
  manager = ckpt_lib.make_manager(workdir, keep=config.train.keep_checkpoints)
  restored = ckpt_lib.restore_latest(manager, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
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


def probe(config, encoders: dict, *, builder, mesh=None, workdir: str | None = None) -> dict:
  """Linear-probes each named (model, variables) encoder on the same splits; returns {name: metrics}."""
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
  if e.protocol == "finetune":
    return _finetune_all(config, encoders, builder=builder, train=train, test=test, subset=subset,
                         num_classes=num_classes, mesh=mesh, t0=t0)
  for name, (model, variables, recalibrate) in encoders.items():
    if recalibrate:
      variables = probe_lib.recalibrate_batch_stats(model, variables, train["image"], image_size=size,
                                                    mean=tuple(d.mean), std=tuple(d.std), batch_size=e.batch_size)
    tr = probe_lib.extract_features(model, variables, train["image"], mesh=mesh, **kw)
    te = probe_lib.extract_features(model, variables, test["image"], mesh=mesh, **kw)
    if e.protocol == "knn":
      results[name] = knn_lib.knn_eval(train_features=tr, train_labels=train["label"], test_features=te,
                                       test_labels=test["label"], num_classes=num_classes, k=e.knn_k,
                                       temperature=e.knn_temperature, weighting=e.knn_weighting)
      detail = f"k={e.knn_k}"
    else:
      results[name] = probe_lib.linear_probe(tr, train["label"], te, test["label"], num_classes=num_classes,
                                             l2_grid=tuple(e.l2_grid), max_iter=e.max_iter, seed=config.seed)
      detail = f"l2={results[name]['l2']:g}"
    r = results[name]
    if subset is not None:
      r["label_subset"] = _subset_summary(subset)
    print(f"{e.protocol} [{name}]: accuracy {r['accuracy']:.4f}  AUROC {r['auroc']:.4f}  ({detail})", flush=True)
  print(f"{e.protocol} evaluations done in {time.perf_counter() - t0:.0f}s "
        f"({len(train['label'])} train / {len(test['label'])} test examples, {num_classes} classes)", flush=True)
  return results


def _finetune_all(config, encoders, *, builder, train, test, subset, num_classes, mesh, t0):
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
    r = finetune_lib.finetune(
        model=model, variables=variables, train_images=train["image"], train_labels=train["label"],
        val_images=None if val is None else val["image"], val_labels=None if val is None else val["label"],
        test_images=test["image"], test_labels=test["label"], num_classes=num_classes,
        multi_label=np.ndim(train["label"]) == 2, image_size=size, mean=tuple(d.mean), std=tuple(d.std),
        steps=e.finetune_steps, batch_size=e.finetune_batch_size, learning_rate=e.finetune_learning_rate,
        weight_decay=e.finetune_weight_decay, backbone_lr_scale=e.finetune_backbone_lr_scale,
        warmup_steps=e.finetune_warmup_steps, eval_every=e.finetune_eval_every or None,
        eval_batch_size=e.batch_size, seed=config.seed, mesh=mesh, schedule=e.finetune_schedule,
        milestones=tuple(e.finetune_milestones), augment=e.finetune_augment)
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
  lines = [f"{title} on {config.data.builder}"
           f"{'/' + config.data.builder_config if config.data.builder_config else ''} "
           f"(train split '{config.data.train_split}', test split '{config.data.test_split}')",
           f"Protocol: {protocol}", *_subset_line(results), "",
           "| encoder | accuracy | AUROC (macro OvR) |", "|---|---|---|"]
  for name, r in results.items():
    lines.append(f"| {name} | {r['accuracy']:.4f} | {r['auroc']:.4f} |")
  names = list(results)
  if len(names) == 2:
    a, b = results[names[0]], results[names[1]]
    lines += ["", f"{names[0]} - {names[1]}: accuracy {a['accuracy'] - b['accuracy']:+.4f}, "
              f"AUROC {a['auroc'] - b['auroc']:+.4f}"]
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
  probe on all labels; e.g. 'probe_results_finetune_10pct_seed0' otherwise)."""
  e = config.eval
  name = "probe_results" + ("" if e.protocol == "linear_probe" else f"_{e.protocol}")
  if e.subset_file:
    name += "_" + os.path.splitext(os.path.basename(e.subset_file))[0]
  elif subsets.parse_spec(e.train_subset)[0] != "all":
    tag = subsets.file_name(dataset="x", split="x", spec=e.train_subset, seed=e.subset_seed)
    name += "_" + tag[len("x_x_"):-len(".json")]
  return name


def _write_results(workdir, results, table, name="probe_results"):
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, f"{name}.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, f"{name}.md"), "w") as f:
    f.write(table + "\n")


def run(config, workdir: str):
  """Dispatches on config.mode. Returns the probe results dict (empty for mode=pretrain)."""
  config_lib.validate(config)
  workdir = os.path.abspath(workdir)
  mesh = mesh_lib.make_mesh()
  builder = pipeline.builder_from_config(config.data)
  pipeline.check_channels(builder, config.data.channels)
  if config.mode == "pretrain":
    pretrain_lib.pretrain(config, workdir, builder=builder, mesh=mesh)
    return {}
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
  return results

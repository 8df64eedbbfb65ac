"""SWCL stage 2: label propagation. The stage-1 classifier (medssl_jax/swcl/pseudo_labeller.py) predicts every
image of the unlabelled pool and marks where the abnormal classes' evidence is, with class activation maps.

Per pool image (config.swcl.pool, sources in order, records in split order):
  * The image is decoded at `swcl.image_size`, squared by `swcl.fit` (the patch source of stage 3), and resized
    (antialiased bilinear, `views.eval_view`) to `swcl.classifier_image_size` for the classifier (inference-mode
    BatchNorm, config.data.mean / std).
  * Probabilities p_c: softmax over the classes (multi-label: per-class sigmoid).
  * CAM (Zhou et al. 2016): with A [h, w, K] the backbone's last-stage activations and W [K, C] the head's
    kernel (logits = mean_ij(A_ij) W + b), CAM_c(i, j) = relu(sum_k A_ijk W_kc) (no bias). For a linear head on
    global-average-pooled features this is Grad-CAM's map up to the factor 1 / (h w)
    (medssl_jax.evals.attention.grad_cam, which tests/test_swcl_pseudo.py checks it against).
  * Abnormality map = sum over the abnormal classes c (classes not in `swcl.normal_classes`) of p_c CAM_c, at
    (h, w), bilinearly upsampled (half-pixel centres, `attention.upsample`) to image_size and divided by its
    maximum (an all-zero map stays zero). The weighted sum is taken before upsampling, which is the same
    (upsampling is linear) and cheaper.
  * abnormal_prob = 1 - sum of the normal classes' p (single-label), or the largest abnormal class's p
    (multi-label).

Output folder <workdir>/propagation/ (read by the swcl_patches TFDS builder, stage 3):
  manifest.json      classes, normal_classes, multi_label, image_size, num_images, sources, pseudo_labeller
                     (stage-1 summary bits), plus classifier_image_size, fit, abnormal_classes,
                     predicted_class_counts, cam (the definition above), seconds
  images/<key>.png   RGB uint8 image_size x image_size (grayscale sources repeated over 3 channels)
  cams/<key>.png     8-bit grayscale abnormality map, round(255 x map)
  pseudo_labels.csv  key,source,index,patient_id,eye,abnormal_prob,prob_<class>...  (one row per image)
  cam_overlays.png   a grid of the first images with their abnormality maps
key = f"{k:06d}" over all sources; source = "builder/config:split"; patient_id = "<source>:<patient_id>" where
the source has a 'patient_id' feature, else "<source>:<index>"; eye = the 'eye' ClassLabel's name ('left' /
'right') where the source has one, else 'unknown'.

The folder is written under <workdir>/propagation.partial and renamed when complete, so an interrupted run
leaves no half folder (a leftover .partial is deleted and redone). A complete folder whose manifest matches the
current settings is returned as is; one that differs raises (it is never overwritten).
"""
from __future__ import annotations

import csv
import io
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from medssl_jax import paths
from medssl_jax.augment import views as views_lib
from medssl_jax.data import pipeline
from medssl_jax.evals import attention
from medssl_jax.models.resnet import ResNet
from medssl_jax.projects.swcl import pseudo_labeller
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train.step import normalize

OUT_DIR = "propagation"
MANIFEST = "manifest.json"
CSV_FILE = "pseudo_labels.csv"
OVERLAYS = "cam_overlays.png"
NUM_OVERLAYS = 8
CAM = ("CAM (Zhou et al. 2016): relu(last-stage activations x head kernel) per class; abnormality map = sum over "
       "abnormal classes of p_c x CAM_c, bilinearly upsampled to image_size, divided by its max")
# Manifest keys that must match for a folder to be reused (num_images, counts and timings follow from them).
_MATCH_KEYS = ("classes", "normal_classes", "multi_label", "image_size", "classifier_image_size", "fit",
               "pseudo_labeller")


def class_activation_maps(backbone, variables, images, *, kernel, bias):
  """(logits [B, C], CAM [B, C, h, w]) of a ResNet backbone + linear head on preprocessed images [B, H, W, C].

  variables: the backbone's {"params", "batch_stats"}; kernel [K, C], bias [C]: the head. CAM_c = relu(A W_c)
  on the last-stage activations A [B, h, w, K] (inference-mode BatchNorm), at the feature-map resolution.
  """
  if not isinstance(backbone, ResNet):
    raise ValueError(f"class activation maps need a ResNet backbone (a last-stage feature map); got "
                     f"{type(backbone).__name__} (config.model.encoder): SWCL stage 2 supports resnet18 / resnet50")
  _, stages = backbone.apply(variables, images, train=False, return_stages=True)
  a = stages[-1].astype(jnp.float32)
  kernel = jnp.asarray(kernel, jnp.float32)
  logits = jnp.mean(a, axis=(1, 2)) @ kernel + jnp.asarray(bias, jnp.float32)
  return logits, jax.nn.relu(jnp.einsum("bhwk,kc->bchw", a, kernel))


def abnormality_maps(cams, probs, abnormal, *, size: int):
  """sum_c abnormal[c] p_c CAM_c [B, h, w], upsampled to size x size and max-normalised to [0, 1].

  cams [B, C, h, w] >= 0, probs [B, C], abnormal: 0/1 [C] (the abnormal classes).
  """
  m = jnp.einsum("bchw,bc->bhw", cams, probs * jnp.asarray(abnormal, jnp.float32))
  m = attention.upsample(m, (size, size))
  peak = jnp.max(m, axis=(1, 2), keepdims=True)
  return jnp.where(peak > 0, m / jnp.where(peak > 0, peak, 1.0), 0.0)


def abnormal_probability(probs, normal, *, multi_label: bool):
  """1 - sum of the normal classes' probabilities (single-label) or the max abnormal-class probability
  (multi-label) per image, clipped to [0, 1]; probs [N, C], normal: bool [C]."""
  probs, normal = np.asarray(probs, np.float64), np.asarray(normal, bool)
  if multi_label:
    out = probs[:, ~normal].max(axis=1) if (~normal).any() else np.zeros(len(probs))
  else:
    out = 1.0 - probs[:, normal].sum(axis=1)
  return np.clip(out, 0.0, 1.0)


def _source_meta(builder, split: str, source: str) -> tuple[list[str], list[str]]:
  """(patient ids, eyes) of every record of the split, in order (labels are not read)."""
  features = builder.info.features
  n = pipeline.num_examples(builder, split)
  if "patient_id" in features:
    raw = pipeline.read_column(builder, split=split, key="patient_id")
    pids = [f"{source}:{p.decode() if isinstance(p, bytes) else p}" for p in raw]
  else:
    pids = [f"{source}:{i}" for i in range(n)]
  eye = features["eye"] if "eye" in features else None
  if isinstance(eye, tfds.features.ClassLabel):
    names = [nm if nm in ("left", "right") else "unknown" for nm in eye.names]
    eyes = [names[int(e)] for e in pipeline.read_column(builder, split=split, key="eye")]
  else:
    eyes = ["unknown"] * n
  return pids, eyes


def _expected(config, summary: dict, sources: list[dict]) -> dict:
  s = config.swcl
  classes = summary["classes"]
  normal = list(s.normal_classes)
  unknown = [c for c in normal if c not in classes]
  if unknown:
    raise ValueError(f"config.swcl.normal_classes names {unknown}, not classes of the labelled set "
                     f"{summary['labelled']}; its classes are {classes}")
  return {
      "classes": classes, "normal_classes": normal, "abnormal_classes": [c for c in classes if c not in normal],
      "multi_label": summary["multi_label"], "image_size": int(s.image_size),
      "classifier_image_size": int(s.classifier_image_size), "fit": s.fit, "sources": sources,
      "pseudo_labeller": {k: summary[k] for k in ("steps", "final_val_auroc", "labelled", "num_labelled",
                                                   "num_pool", "image_size", "settings")},
  }


def _check_reusable(path: str, manifest: dict, expected: dict):
  saved = {k: manifest.get(k) for k in _MATCH_KEYS}
  saved["sources"] = [e.get("source") for e in manifest.get("sources", [])]
  now = {k: expected[k] for k in _MATCH_KEYS}
  now["sources"] = [e["source"] for e in expected["sources"]]
  diff = sorted(k for k in now if json.loads(json.dumps(now[k])) != saved[k])
  if diff:
    details = "; ".join(f"{k}: saved={saved[k]!r} now={now[k]!r}" for k in diff)
    raise ValueError(f"{path} was written with other settings ({details[:2000]}). It is never overwritten: use a "
                     f"new --workdir, or delete {os.path.dirname(path)} to propagate again.")


def _make_fn(backbone, *, classifier_size: int, image_size: int, mean, std, multi_label: bool):
  @jax.jit
  def run(variables, kernel, bias, abnormal, images):
    x = normalize(views_lib.eval_view(images, size=classifier_size), mean, std)
    logits, cams = class_activation_maps(backbone, variables, x, kernel=kernel, bias=bias)
    probs = jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits)
    return probs, abnormality_maps(cams, probs, abnormal, size=image_size)
  return run


def propagate(config, workdir: str, *, mesh=None) -> dict:
  """Stage 2 (module docstring): writes <workdir>/propagation/ from the finished stage 1 and returns its manifest;
  returns the existing manifest when the folder was already written with the same settings."""
  s = config.swcl
  out_dir = paths.join(workdir, OUT_DIR)
  summary = pseudo_labeller.read_summary(config, workdir)
  sources = []
  for entry in pseudo_labeller.pool_entries(config):
    builder = pipeline.open_dataset(entry)
    sources.append(dict(entry, source=pseudo_labeller.source_name(builder, entry["split"]),
                        num_images=pipeline.num_examples(builder, entry["split"])))
  expected = _expected(config, summary, sources)
  manifest_path = paths.join(out_dir, MANIFEST)
  manifest = paths.read_json(manifest_path)
  if manifest is not None:
    _check_reusable(manifest_path, manifest, expected)
    print(f"propagation: {out_dir} reused ({manifest['num_images']} images)", flush=True)
    return manifest
  if paths.exists(out_dir):
    raise FileExistsError(f"{out_dir} exists but has no {MANIFEST}: not a propagation folder written by this code; "
                          "move or delete it")

  t0 = time.perf_counter()
  backbone, variables, summary = pseudo_labeller.load(config, workdir, mesh=mesh)
  classes, multi_label = expected["classes"], expected["multi_label"]
  normal = np.array([c in expected["normal_classes"] for c in classes])
  mesh = mesh or mesh_lib.make_mesh()
  n_dev = mesh.devices.size
  batch_size = -(-max(s.batch_size, n_dev) // n_dev) * n_dev
  run = _make_fn(backbone, classifier_size=s.classifier_image_size, image_size=s.image_size,
                 mean=tuple(config.data.mean), std=tuple(config.data.std), multi_label=multi_label)
  rep = lambda t: mesh_lib.replicate(t, mesh)
  bb_vars = rep(attention.backbone_variables(variables))
  head = variables["params"]["head"]
  kernel, bias, abnormal = rep(head["kernel"]), rep(head["bias"]), rep((~normal).astype(np.float32))

  tmp = paths.join(workdir, OUT_DIR + ".partial")
  if paths.exists(tmp):
    print(f"propagation: deleting {tmp}, left by an interrupted run", flush=True)
    paths.rmtree(tmp)
  paths.makedirs(paths.join(tmp, "images"))
  paths.makedirs(paths.join(tmp, "cams"))
  total = sum(src["num_images"] for src in sources)
  print(f"propagation: {total} pool images at {s.image_size} px (classifier at {s.classifier_image_size} px), "
        f"classes {classes}, normal {expected['normal_classes']}", flush=True)
  rows, all_probs, overlay_images, overlay_maps = [], [], [], []
  k, t_start, next_print = 0, time.perf_counter(), max(1, total // 10)
  for src in sources:
    builder = pipeline.open_dataset(src)
    pids, eyes = _source_meta(builder, src["split"], src["source"])
    index = 0
    for batch in pipeline.iterate_eval(builder, split=src["split"], batch_size=batch_size, image_size=s.image_size,
                                       fit=s.fit):
      x = mesh_lib.shard_batch({"x": batch["image"]}, mesh)["x"]
      probs, maps = jax.device_get(run(bb_vars, kernel, bias, abnormal, x))
      n = int(batch["mask"].sum())
      probs, maps, images = probs[:n], maps[:n], batch["image"][:n]
      ab = abnormal_probability(probs, normal, multi_label=multi_label)
      for i in range(n):
        key = f"{k:06d}"
        rgb = images[i] if images.shape[-1] == 3 else np.repeat(images[i][..., :1], 3, axis=-1)
        paths.save_image(Image.fromarray(rgb, "RGB"), paths.join(tmp, "images", f"{key}.png"))
        cam = np.round(255.0 * np.clip(maps[i], 0.0, 1.0)).astype(np.uint8)
        paths.save_image(Image.fromarray(cam, "L"), paths.join(tmp, "cams", f"{key}.png"))
        rows.append([key, src["source"], index, pids[index], eyes[index], f"{ab[i]:.6f}",
                     *(f"{p:.6f}" for p in probs[i])])
        if len(overlay_images) < NUM_OVERLAYS:
          overlay_images.append(rgb)
          overlay_maps.append(maps[i])
        k, index = k + 1, index + 1
      all_probs.append(probs)
      if k >= next_print or k == total:
        rate = k / (time.perf_counter() - t_start)
        print(f"propagation {k}/{total} images | {rate:.1f} images/s | ETA {(total - k) / rate:.0f}s", flush=True)
        next_print = k + max(1, total // 10)
    if index != src["num_images"]:
      raise RuntimeError(f"{src['source']}: read {index} records, the split has {src['num_images']}")

  buf = io.StringIO(newline="")
  writer = csv.writer(buf)
  writer.writerow(["key", "source", "index", "patient_id", "eye", "abnormal_prob"] + [f"prob_{c}" for c in classes])
  writer.writerows(rows)
  paths.write_text(paths.join(tmp, CSV_FILE), buf.getvalue())
  probs = np.concatenate(all_probs)
  if multi_label:
    threshold = config.objective.swcl.pseudo_label_threshold
    on = probs >= threshold
    counts = {c: int(on[:, j].sum()) for j, c in enumerate(classes)}
    how = f"probability >= objective.swcl.pseudo_label_threshold={threshold}"
  else:
    pred = probs.argmax(axis=1)
    counts = {c: int((pred == j).sum()) for j, c in enumerate(classes)}
    how = "argmax"
  print(f"propagation: predicted classes ({how}) of {total} images: " +
        ", ".join(f"{c} {m} ({100 * m / max(total, 1):.1f}%)" for c, m in counts.items()), flush=True)
  titles = [f"{classes[int(np.argmax(r_probs))]}, abnormal {float(r[5]):.2f}" for r, r_probs in
            zip(rows[:len(overlay_images)], probs[:len(overlay_images)])]
  if overlay_images:
    attention.save_overlays(np.stack(overlay_images), np.stack(overlay_maps), paths.join(tmp, OVERLAYS),
                            titles=titles)
  manifest = dict(expected, num_images=total, predicted_class_counts=counts, predicted_by=how, cam=CAM,
                  overlays=OVERLAYS, seconds=round(time.perf_counter() - t0, 1))
  text = json.dumps(manifest, indent=2)  # The manifest marks a finished folder.
  if paths.is_url(out_dir):  # Object stores move a folder file by file: the manifest goes in after the rest.
    paths.rename(tmp, out_dir)
    paths.write_text(paths.join(out_dir, MANIFEST), text)
  else:
    paths.write_text(paths.join(tmp, MANIFEST), text)
    paths.rename(tmp, out_dir)  # Last: the folder appears complete or not at all.
  print(f"propagation done: {total} images, CAMs and pseudo-labels in {out_dir} ({manifest['seconds']:.0f}s); "
        f"overlays: {paths.join(out_dir, OVERLAYS)}", flush=True)
  return manifest


__all__ = ["abnormal_probability", "abnormality_maps", "class_activation_maps", "propagate"]

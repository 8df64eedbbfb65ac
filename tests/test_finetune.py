"""Fine-tuning protocol on tiny synthetic data: learning, frozen backbone (against a numpy AdamW on
extracted features), determinism, 1 vs 8 devices, multi-label ViT, schedule and argument errors."""
import functools
import math

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from medssl_jax.evals import finetune as ft
from medssl_jax.evals import linear_probe as probe_lib
from medssl_jax.models import MLPHead, SSLModel, ViT, resnet
from medssl_jax.train import mesh as mesh_lib

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def squares(n, seed, *, multi_label=False):
  """32 px noisy grey images with bright 10 px squares.

  Single-label (4 classes, chance 25%): one square, class = 2 * (bottom half) + (green, else red);
  flip- and crop-robust. Multi-label (3 labels): label k = a square lit in channel k is present.
  """
  rng = np.random.default_rng(seed)
  x = rng.integers(60, 100, (n, 32, 32, 3)).astype(np.uint8)
  if multi_label:
    y = rng.integers(0, 2, (n, 3))
    for i in range(n):
      for k in np.flatnonzero(y[i]):
        top, left = rng.integers(0, 22, 2)
        x[i, top:top + 10, left:left + 10, k] = 250
    return x, y
  y = rng.integers(0, 4, n)
  for i in range(n):
    top = rng.integers(1, 6) if y[i] < 2 else rng.integers(18, 22)
    left = rng.integers(1, 22)
    x[i, top:top + 10, left:left + 10, y[i] % 2] = 250
  return x, y


@functools.lru_cache(maxsize=None)
def tiny_resnet():
  model = SSLModel(backbone=resnet("resnet18", width_multiplier=0.125, stem="cifar"),
                   projector=MLPHead(hidden_dims=(16,), out_dim=8))
  variables = jax.jit(lambda k: model.init(k, np.zeros((2, 32, 32, 3), np.float32), train=False))(jax.random.key(0))
  return model, jax.device_get(variables)


def run(**overrides):
  model, variables = tiny_resnet()
  (xtr, ytr), (xte, yte) = squares(128, 0), squares(48, 1)
  kw = dict(model=model, variables=variables, train_images=xtr, train_labels=ytr, test_images=xte, test_labels=yte,
            num_classes=4, image_size=32, mean=MEAN, std=STD, steps=30, batch_size=32, learning_rate=3e-3,
            weight_decay=1e-4, seed=0)
  return ft.finetune(**dict(kw, **overrides))


def test_full_finetune_learns_selects_on_val_and_is_deterministic():
  xv, yv = squares(40, 2)
  a = run(val_images=xv, val_labels=yv, eval_every=10, return_variables=True)
  assert a["accuracy"] >= 0.9 and a["auroc"] >= 0.95  # Chance: 0.25 / 0.5.
  assert np.mean(a["curve"]["train_loss"][-5:]) < 0.5 * a["curve"]["train_loss"][0]
  assert [v["step"] for v in a["val_curve"]] == [10, 20, 30]
  # Selection rule, recomputed: highest val AUROC, then accuracy, then lowest loss, then the earliest step.
  ref = max(a["val_curve"], key=lambda v: (v["auroc"], v["accuracy"], -v["loss"], -v["step"]))
  assert a["selected_step"] == ref["step"] and a["val_auroc"] == ref["auroc"]
  assert "validation AUROC" in a["selection"]
  # The backbone trained (parameters and BatchNorm statistics moved).
  _, variables = tiny_resnet()
  before, after = variables["params"]["backbone"], a["variables"]["params"]["backbone"]
  assert max(jax.tree.leaves(jax.tree.map(lambda p, q: np.abs(p - q).max(), before, after))) > 1e-3
  assert not np.allclose(variables["batch_stats"]["backbone"]["stem_bn"]["mean"],
                         a["variables"]["batch_stats"]["backbone"]["stem_bn"]["mean"])
  # Same seed -> the same run, bit for bit; the test-curve diagnostic changes nothing reported.
  b = run(val_images=xv, val_labels=yv, eval_every=10, return_variables=True, test_curve=True)
  assert a["curve"] == b["curve"] and a["val_curve"] == b["val_curve"] and a["accuracy"] == b["accuracy"]
  jax.tree.map(np.testing.assert_array_equal, a["variables"], b["variables"])
  assert [t["step"] for t in b["test_curve"]] == [10, 20, 30] and "test_curve" not in a
  assert b["test_curve"][-1]["auroc"] == pytest.approx(run(steps=30)["auroc"])  # The last step's test AUROC.


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
  """SIGTERM at step 15 checkpoints and stops; the same call then continues from step 15 and returns what an
  uninterrupted run returns (curves, selection, test metrics, weights)."""
  import os
  import signal
  from medssl_jax.train import guard
  xv, yv = squares(40, 2)
  kw = dict(val_images=xv, val_labels=yv, eval_every=10, return_variables=True, checkpoint_every_s=1e9)
  whole = run(**kw)
  schedule = ft.learning_rate_at

  def stop_at_15(step, **kwargs):
    if step == 15:
      os.kill(os.getpid(), signal.SIGTERM)
    return schedule(step, **kwargs)
  monkeypatch.setattr(ft, "learning_rate_at", stop_at_15)
  with pytest.raises(guard.Interrupted) as stopped:
    run(checkpoint_dir=str(tmp_path), **kw)
  assert stopped.value.saved == 15 and "holds the state, the curves and the selection so far;" in str(stopped.value)
  called = []
  monkeypatch.setattr(ft, "learning_rate_at", lambda step, **kwargs: called.append(step) or schedule(step, **kwargs))
  resumed = run(checkpoint_dir=str(tmp_path), **kw)
  assert called[0] == 16  # The first step trained (the schedule is then listed for the result).
  for k in ("curve", "val_curve", "selected_step", "accuracy", "auroc", "loss"):
    assert resumed[k] == whole[k], k
  jax.tree.map(np.testing.assert_array_equal, resumed["variables"], whole["variables"])
  # Finished: the call is answered from the last checkpoint; other settings get their own folder.
  assert run(checkpoint_dir=str(tmp_path), **kw)["val_curve"] == whole["val_curve"]
  run(checkpoint_dir=str(tmp_path), steps=2, **kw)
  assert len(os.listdir(tmp_path)) == 2


def numpy_adamw_head(feats, labels, order, *, w, b, steps, batch_size, lr, wd, num_classes):
  """Softmax regression on fixed features, AdamW by hand (decay on the kernel only), cosine lr."""
  params = {"w": w.astype(np.float64), "b": b.astype(np.float64)}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(v) for k, v in params.items()}
  b1, b2, eps = 0.9, 0.999, 1e-8
  for t in range(1, steps + 1):
    idx = order[(t - 1) * batch_size:t * batch_size]
    f, y = feats[idx].astype(np.float64), labels[idx]
    z = f @ params["w"] + params["b"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(num_classes)[y]) / len(idx)
    grads = {"w": f.T @ g, "b": g.sum(0)}
    rate = lr * 0.5 * (1 + math.cos(math.pi * (t - 1) / steps))
    for k in params:
      m[k] = b1 * m[k] + (1 - b1) * grads[k]
      v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
      u = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
      if k == "w":
        u = u + wd * params[k]
      params[k] = params[k] - rate * u
  return params


def test_frozen_backbone_matches_numpy_adamw_on_features():
  model, variables = tiny_resnet()
  steps, bs, lr, wd = 30, 32, 3e-2, 1e-2
  r = run(backbone_lr_scale=0.0, augment=False, steps=steps, learning_rate=lr, weight_decay=wd, return_variables=True)
  # Backbone parameters and BatchNorm statistics unchanged (inference mode, no gradients).
  jax.tree.map(np.testing.assert_array_equal, r["variables"]["params"]["backbone"], variables["params"]["backbone"])
  jax.tree.map(np.testing.assert_array_equal, r["variables"]["batch_stats"]["backbone"],
               variables["batch_stats"]["backbone"])
  # Reference: the probe's feature extractor + AdamW by hand, same head init and batch order.
  xtr, ytr = squares(128, 0)
  feats = probe_lib.extract_features(model, variables, xtr, image_size=32, mean=MEAN, std=STD, batch_size=128)
  head0 = nn.Dense(4, kernel_init=nn.initializers.normal(ft.HEAD_INIT_STD)).init(
      jax.random.fold_in(jax.random.key(0), 0), feats[:8])["params"]
  rng = np.random.default_rng(0)
  order = np.concatenate([rng.permutation(128) for _ in range(math.ceil(steps * bs / 128))])
  ref = numpy_adamw_head(feats, ytr, order, w=np.asarray(head0["kernel"]), b=np.asarray(head0["bias"]),
                         steps=steps, batch_size=bs, lr=lr, wd=wd, num_classes=4)
  head = r["variables"]["params"]["head"]
  np.testing.assert_allclose(head["kernel"], ref["w"], rtol=2e-3, atol=2e-4)
  np.testing.assert_allclose(head["bias"], ref["b"], rtol=2e-3, atol=2e-4)
  assert r["selected_step"] == steps and r["selection"] == "last step (no validation data)"
  assert r["val_auroc"] is None and 0.0 <= r["accuracy"] <= 1.0


def test_one_vs_eight_devices_same_first_step():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")
  one = run(steps=1, mesh=mesh_lib.make_mesh(jax.devices()[:1]), return_variables=True)
  eight = run(steps=1, mesh=mesh_lib.make_mesh(jax.devices()[:8]), return_variables=True)
  np.testing.assert_allclose(one["curve"]["train_loss"], eight["curve"]["train_loss"], rtol=1e-6)
  # BatchNorm statistics of the global batch (synchronised), not of each device's 4 examples. (Parameters
  # are not compared: Adam's first update is lr * sign(grad), which float noise flips where grad ~ 0.)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one["variables"]["batch_stats"],
               eight["variables"]["batch_stats"])
  assert one["accuracy"] == pytest.approx(eight["accuracy"], abs=1 / 48)


def test_multi_label_vit(tmp_path):
  model = SSLModel(backbone=ViT(width=32, depth=1, num_heads=2, patch_size=8),
                   projector=MLPHead(hidden_dims=(), out_dim=8))
  variables = jax.jit(lambda k: model.init(k, np.zeros((2, 32, 32, 3), np.float32), train=False))(jax.random.key(0))
  assert "batch_stats" not in variables
  (xtr, ytr), (xte, yte) = squares(96, 3, multi_label=True), squares(37, 4, multi_label=True)  # 37: padded eval.
  tune = functools.partial(
      ft.finetune, model=model, variables=variables, train_images=xtr, train_labels=ytr, test_images=xte,
      test_labels=yte, val_images=xte[:20], val_labels=yte[:20], num_classes=3, multi_label=True, image_size=32,
      mean=MEAN, std=STD, steps=30, batch_size=32, learning_rate=3e-3, weight_decay=0.05, warmup_steps=3, seed=1,
      eval_batch_size=16, checkpoint_dir=str(tmp_path))
  r = tune()
  assert tune()["auroc"] == r["auroc"]  # Restored from the finished checkpoint (a ViT has no BatchNorm state).
  assert np.isfinite(r["auroc"]) and len(r["auroc_per_class"]) == 3 and 0.0 <= r["accuracy"] <= 1.0
  assert r["auroc"] > 0.6  # Three labels, chance 0.5.
  assert np.isfinite(r["loss"]) and r["val_curve"][-1]["step"] == 30
  assert np.mean(r["curve"]["train_loss"][-5:]) < r["curve"]["train_loss"][0]


@pytest.mark.parametrize("warmup", [0, 5])
def test_learning_rate_schedule_matches_optax(warmup):
  steps, peak = 20, 0.1
  sched = (optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps, end_value=0.0) if warmup
           else optax.cosine_decay_schedule(peak, steps))
  for step in range(1, steps + 1):
    assert ft.learning_rate_at(step, learning_rate=peak, steps=steps, warmup_steps=warmup) == pytest.approx(
        float(sched(step - 1)), abs=1e-7)


def test_clear_errors():
  x, y = squares(16, 0)
  model, variables = tiny_resnet()
  base = dict(model=model, variables=variables, train_images=x, train_labels=y, test_images=x, test_labels=y,
              num_classes=4, image_size=32, mean=MEAN, std=STD, steps=2, batch_size=8, learning_rate=1e-3,
              weight_decay=0.0)
  cases = [
      (dict(train_labels=np.eye(4)[y]), r"train_labels must be \[N\] integer classes.*multi_label=True"),
      (dict(multi_label=True), r"train_labels must be \[N, num_classes\]"),
      (dict(multi_label=True, train_labels=np.eye(4)[y], test_labels=np.eye(4)[y] * 2),
       r"test_labels must hold only 0/1"),
      (dict(test_labels=y[:10]), r"test_labels has 10 rows but test_images has 16"),
      (dict(train_labels=np.where(y == 0, 4, y)), r"train_labels must be in \[0, num_classes=4\)"),
      (dict(val_images=x), "val_images and val_labels must be given together"),
      (dict(val_images=x, val_labels=np.eye(4)[y]), r"val_labels must be \[N\] integer classes"),
      (dict(batch_size=12), "batch_size=12 must be a positive multiple of the mesh's"),
      (dict(train_images=x.astype(np.float32)), "train_images must be uint8"),
      (dict(backbone_lr_scale=-1.0), "backbone_lr_scale"),
      (dict(num_classes=1), "num_classes=1"),
      (dict(variables={"params": {}}), r"variables\['params'\] has no 'backbone'"),
  ]
  if jax.device_count() == 1:
    cases = [c for c in cases if "batch_size" not in c[0]]
  for override, match in cases:
    with pytest.raises(ValueError, match=match):
      ft.finetune(**dict(base, **override))


def test_multistep_schedule():
  from medssl_jax.evals import finetune as ft
  lrs = [ft.learning_rate_at(s, learning_rate=1e-3, steps=100, schedule="multistep", milestones=(0.5, 0.75))
         for s in (1, 50, 51, 75, 76, 100)]
  np.testing.assert_allclose(lrs, [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-9)
  text = ft.describe(schedule="multistep", milestones=(0.5, 0.75), augment=False, weight_decay=0.0)
  assert "Adam, lr x0.1" in text and "lr x0.1 at 50%, 75% of training" in text and "no augmentation" in text
  with pytest.raises(ValueError, match="schedule='step'"):
    ft.learning_rate_at(1, learning_rate=1.0, steps=10, schedule="step")


def test_finetune_cache_path_names_the_fine_tuning_not_the_pretraining(tmp_path):
  """The key of a kept fine-tuning result: the same for arms that differ only in what pretraining reads
  (objective, schedule, heads, inflation source), another for any fine-tuning setting, the backbone's starting
  weights or BatchNorm statistics, and the recalibration."""
  from medssl_jax import experiment
  from medssl_jax.protocols import probe as probe_protocol
  config = experiment.default_config()
  rng = np.random.default_rng(0)
  variables = {"params": {"backbone": {"conv": rng.normal(size=(3, 3)).astype(np.float32)},
                          "projector": {"dense": rng.normal(size=(3, 2)).astype(np.float32)}},
               "batch_stats": {"backbone": {"mean": np.zeros(3, np.float32)}}}
  assert probe_protocol.finetune_cache_path(config, variables, recalibrate=True) is None  # "" = no cache.
  config.eval.finetune_cache_dir = str(tmp_path)
  key = lambda c=config, v=variables, recalibrate=True: probe_protocol.finetune_cache_path(c, v, recalibrate=recalibrate)
  assert key().startswith(str(tmp_path)) and key().endswith(".json")

  def changed(dotted, value):
    c = config.copy_and_resolve_references()
    *parents, last = dotted.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[last] = value
    return c

  for dotted, value in [("objective.name", "byol"), ("train.num_steps", 7), ("train.learning_rate", 0.5),
                        ("model.predictor_hidden_dims", (8,)), ("model.inflate_from", "x.py"), ("mode", "supervised"),
                        ("eval.compare_random_init", False)]:
    assert key(changed(dotted, value)) == key(), dotted
  for dotted, value in [("eval.finetune_steps", 7), ("eval.finetune_learning_rate", 0.5), ("eval.train_subset", "10%"),
                        ("seed", 3), ("data.image_size", 32), ("model.width_multiplier", 0.5)]:
    assert key(changed(dotted, value)) != key(), dotted
  other_head = {**variables, "params": {**variables["params"], "projector": {"dense": np.ones((3, 2), np.float32)}}}
  assert key(v=other_head) == key()  # A fine-tuning starts from the backbone only.
  other_weights = {**variables, "params": {**variables["params"], "backbone": {"conv": np.ones((3, 3), np.float32)}}}
  other_stats = {**variables, "batch_stats": {"backbone": {"mean": np.ones(3, np.float32)}}}
  assert len({key(), key(v=other_weights), key(v=other_stats), key(recalibrate=False)}) == 4

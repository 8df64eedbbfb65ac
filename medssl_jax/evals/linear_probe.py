"""Linear probe on frozen features: the standard SSL evaluation protocol.

Protocol (named in every report): features are the backbone's global-average-pooled output in
inference mode; they are standardised with the training split's mean/std; a multinomial logistic
regression is trained full-batch with L-BFGS; its L2 weight is chosen on a held-out part of the
training split, then the probe is refit on the whole training split and scored on the test split.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from medssl_jax.augment import views as views_lib
from medssl_jax.evals import metrics as metrics_lib
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train.step import normalize

PROTOCOL = "linear probe: backbone features (ResNet: global average pool; ViT: class token), standardised, softmax regression (L-BFGS; multi-label: one logistic regression per class), L2 chosen on 20% of train"


def embed_fn(model, *, image_size, mean, std):
  """The jitted feature map embed(variables, uint8 images [B, H, W, C]) -> [B, C] of `extract_features`."""

  @jax.jit
  def embed(variables, x):
    x = normalize(views_lib.eval_view(x, size=image_size), mean, std)
    return model.apply(variables, x, method=model.embed)

  return embed


def extract_features(model, variables, images, *, image_size, mean, std, batch_size=256, mesh=None,
                     train_mode_bn=False):
  """Backbone features [N, C] for uint8 images [N, H, W, C], in batches, sharded over the mesh.

  The last batch is zero-padded to full size (static shapes, one compile) and the padding dropped.
  """
  mesh = mesh or mesh_lib.make_mesh()
  n_dev = mesh.devices.size
  batch_size = max(n_dev, batch_size // n_dev * n_dev)
  embed = embed_fn(model, image_size=image_size, mean=mean, std=std)
  variables = mesh_lib.replicate(variables, mesh)
  out = mesh_lib.apply_batched(lambda b: embed(variables, b["image"]), {"image": images}, batch_size=batch_size,
                               mesh=mesh)
  if out is None:
    raise ValueError("extract_features: no images (an empty split?)")
  return out


def recalibrate_batch_stats(model, variables, images, *, image_size, mean, std, batch_size=256, num_batches=20):
  """Re-estimates BatchNorm running statistics with forward passes in train mode (no gradients).

  A randomly initialised encoder has placeholder statistics (mean 0, var 1); without this its
  inference-mode features are badly scaled, which would make the random baseline unfairly weak.
  """
  if not jax.tree.leaves(variables.get("batch_stats", {})):
    return variables  # No BatchNorm (e.g. a ViT): nothing to recalibrate.

  @jax.jit
  def update(variables, x):
    x = normalize(views_lib.eval_view(x, size=image_size), mean, std)
    _, mutated = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"mask": jax.random.key(0)})
    return {"params": variables["params"], "batch_stats": mutated["batch_stats"]}

  # Momentum 0 would be exact for one batch; here we run the EMA over several batches instead.
  for i in range(min(num_batches, max(1, len(images) // batch_size))):
    variables = update(variables, jnp.asarray(images[i * batch_size:(i + 1) * batch_size]))
  return variables


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter", "multi_label"))
def _fit_softmax_regression(x, y, l2, *, num_classes, max_iter, multi_label=False):
  """Full-batch multinomial logistic regression with L-BFGS (multi_label: one logistic regression per class,
  sigmoid cross-entropy averaged over classes, on [N, K] 0/1 targets). Returns {"w", "b"}.

  Jitted once per (shape, classes, iterations); the L2 weight is traced so a sweep does not recompile.
  """
  x = jnp.asarray(x, jnp.float32)
  targets = jnp.asarray(y, jnp.float32) if multi_label else jax.nn.one_hot(y, num_classes)
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}

  def loss(p):
    logits = x @ p["w"] + p["b"]
    data = (optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=1) if multi_label
            else optax.softmax_cross_entropy(logits, targets))
    return data.mean() + 0.5 * l2 * jnp.sum(p["w"] ** 2)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def body(carry, _):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(params, updates), state), value

  (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=max_iter)
  return params


def _predict(params, x, multi_label=False):
  logits = jnp.asarray(x, jnp.float32) @ params["w"] + params["b"]
  return np.asarray(jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits))


def _val_score(y, probs, multi_label):
  """What picks the L2 weight: accuracy (single-label), macro AUROC (multi-label: accuracy at 0.5 rewards
  predicting every rare finding absent)."""
  if not multi_label:
    return metrics_lib.accuracy(y, probs)
  auc = metrics_lib.classification_metrics(y, probs)["auroc"]
  return -1.0 if np.isnan(auc) else auc


def linear_probe(train_x, train_y, test_x, test_y, *, num_classes, l2_grid=(1e-4, 1e-3, 1e-2, 1e-1),
                 max_iter=200, val_fraction=0.2, seed=0, return_predictor=False):
  """Fits and scores a linear probe. Returns a dict of metrics and the chosen L2 weight.

  Multi-label data (train_y / test_y [N, K] 0/1, num_classes = K): one logistic regression per class, the
  L2 weight chosen by validation macro AUROC; "accuracy" is then every label's accuracy at 0.5.

  return_predictor=True returns (metrics, predictor) instead: predictor(features [M, D]) -> class
  probabilities [M, num_classes] of the refit probe (the training split's standardisation applied), e.g.
  to score the probe on another dataset (medssl_jax/evals/ood.py). The metrics are the same either way.
  """
  train_x = np.asarray(train_x, np.float32)
  test_x = np.asarray(test_x, np.float32)
  mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
  train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
  rng = np.random.default_rng(seed)
  perm = rng.permutation(len(train_x))
  n_val = max(1, int(len(train_x) * val_fraction))
  val_idx, fit_idx = perm[:n_val], perm[n_val:]
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  multi = train_y.ndim == 2
  if multi and (train_y.shape[1] != num_classes or test_y.ndim != 2 or test_y.shape[1] != num_classes):
    raise ValueError(f"linear_probe: multi-label targets must be [N, num_classes={num_classes}] for train and test, "
                     f"got shapes {train_y.shape} and {test_y.shape}")
  fit = functools.partial(_fit_softmax_regression, num_classes=num_classes, max_iter=max_iter, multi_label=multi)
  val_scores = {}
  for l2 in l2_grid:
    p = fit(train_x[fit_idx], train_y[fit_idx], l2)
    val_scores[l2] = _val_score(train_y[val_idx], _predict(p, train_x[val_idx], multi), multi)
  best_l2 = max(l2_grid, key=lambda l2: (val_scores[l2], l2))  # Ties go to the stronger regulariser.
  params = fit(train_x, train_y, best_l2)
  probs = _predict(params, test_x, multi)
  result = dict(metrics_lib.classification_metrics(test_y, probs), l2=best_l2)
  result["val_auroc" if multi else "val_accuracy"] = val_scores[best_l2]
  result["train_accuracy"] = metrics_lib.classification_metrics(train_y, _predict(params, train_x, multi))["accuracy"]
  if not return_predictor:
    return result
  dim = train_x.shape[1]

  def predictor(features):
    x = np.asarray(features, np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
      raise ValueError(f"linear probe predictor: features must be [M, {dim}] (the probe's feature dimension), "
                       f"got shape {x.shape}")
    return _predict(params, (x - mu) / sd, multi)

  return result, predictor

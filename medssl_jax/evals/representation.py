"""Representation analyses of frozen features: neural-collapse measures, layer-wise features, 2-D maps.

Three pieces, each usable alone:

* `neural_collapse(features=, labels=)`: the within/between-class geometry of a feature layer
  (Papyan, Han & Donoho 2020, "Prevalence of neural collapse"; the variability ratio tr(S_W)/tr(S_B) as
  in SSL analyses such as Ben-Shaul et al. 2023), plus nearest-class-centre (NCC) accuracy.
* `layer_features(model, variables, images, ...)`: global-average-pooled features of every ResNet
  stage, the backbone output and each projector layer of an `SSLModel`, in inference mode, so a
  protocol can ask "where to cut" (the guillotine comparison: backbone vs. projector layers).
* `embedding_map(features=, labels=, path=)`: a deterministic t-SNE or PCA map saved as a PNG.

All statistics are computed on the host in float64 numpy.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from medssl_jax import paths
from medssl_jax.augment import views as views_lib
from medssl_jax.models.heads import MLPHead
from medssl_jax.models.resnet import STAGE_SIZES, ResNet
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train.step import normalize

PROTOCOL = ("neural collapse: class means / covariances of inference-mode features (ResNet stages: global "
            "average pool), float64; NC1 = tr(S_W pinv(S_B))/C with pinv on the top C-1 between-class "
            "directions; NC2 from cosines of centred class means; NCC = nearest class mean (Euclidean)")

WEIGHTINGS = ("balanced", "samples")
METHODS = ("tsne", "pca")


# ----------------------------------------------------------------------------------------------------
# Neural collapse.
# ----------------------------------------------------------------------------------------------------

def _check_features_labels(features, labels, *, fn: str, features_name="features", labels_name="labels"):
  x = np.asarray(features)
  y = np.asarray(labels)
  if x.ndim != 2:
    raise ValueError(f"{fn}: {features_name} must be a 2-D array [N, D], got shape {x.shape}")
  if y.ndim != 1 or len(y) != len(x):
    raise ValueError(f"{fn}: {labels_name} must be a 1-D array with one label per row of {features_name} "
                     f"(N={len(x)}), got shape {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
      y = y.astype(np.int64)
    else:
      raise ValueError(f"{fn}: {labels_name} must be integer class ids, got dtype {y.dtype}")
  if x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"{fn}: {features_name} must have at least one row and one column, got shape {x.shape}")
  x = x.astype(np.float64)
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{fn}: {features_name} contain NaN or infinite values")
  return x, y


def class_means(features, labels):
  """(classes [C] sorted, class means [C, D] float64, counts [C]) of the classes present in `labels`."""
  x, y = _check_features_labels(features, labels, fn="class_means")
  classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
  sums = np.zeros((len(classes), x.shape[1]))
  np.add.at(sums, inverse, x)
  return classes, sums / counts[:, None], counts


def neural_collapse(*, features, labels, weighting: str = "balanced") -> dict:
  """Neural-collapse measures of one feature layer.

  Let C be the number of classes present in `labels` (at least 2), mu_c the class means and mu_G the
  centre. With weighting="balanced" (default) every class counts equally: mu_G = mean of the class
  means and S_W = mean over classes of the (biased, 1/N_c) class covariances. With weighting="samples"
  (Papyan et al.'s code): mu_G = mean of all samples and S_W = (1/N) sum_i (h_i - mu_{y_i})(...)^T. The
  two coincide on balanced data. In both, S_B = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T.

  Returns a dict of floats:
    nc1: tr(S_W pinv(S_B)) / C (NC1; -> 0 under collapse). pinv keeps at most the top C - 1 singular
      directions of the centred class means (S_B has rank <= C - 1), those above max(C, D) * eps * the largest.
    within_between_ratio: tr(S_W) / tr(S_B) (class-distance normalised variance).
    norm_cv: std / mean of ||mu_c - mu_G|| over classes (NC2, equinorm; -> 0).
    cos_mean, cos_std: mean and std over pairs c < c' of cos(mu_c - mu_G, mu_c' - mu_G) (NC2,
      equiangularity: a simplex ETF has cos_mean = -1/(C-1), cos_std = 0).
    cos_etf_gap: mean over pairs of |cos + 1/(C-1)| (Papyan et al.'s "max-angle" measure; -> 0).
    ncc_accuracy: in-sample accuracy of the nearest class mean (Euclidean) classifier.
    num_classes: C. tr_within, tr_between: the two traces.
  Degenerate cases give inf / nan rather than errors: S_B = 0 (all class means equal) makes nc1 and
  the ratio inf (nan if S_W = 0 too); a class mean at the centre makes its cosines nan.
  """
  fn = "neural_collapse"
  if weighting not in WEIGHTINGS:
    raise ValueError(f"{fn}: weighting={weighting!r} is not known; valid choices: {list(WEIGHTINGS)}")
  x, y = _check_features_labels(features, labels, fn=fn)
  classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
  c = len(classes)
  if c < 2:
    raise ValueError(f"{fn}: labels must contain at least 2 classes for between-class statistics, got "
                     f"{c} ({classes.tolist()})")
  d = x.shape[1]
  sums = np.zeros((c, d))
  np.add.at(sums, inverse, x)
  means = sums / counts[:, None]
  within = x - means[inverse]  # [N, D], h_i - mu_{y_i}.
  if weighting == "balanced":
    centre = means.mean(axis=0)
    sample_w = 1.0 / (c * counts[inverse])  # Each class weighs 1/C, spread over its samples.
  else:
    centre = x.mean(axis=0)
    sample_w = np.full(len(x), 1.0 / len(x))
  m = means - centre  # [C, D] centred class means.
  tr_w = float(np.sum(sample_w * np.sum(within**2, axis=1)))
  tr_b = float(np.sum(m**2) / c)

  # S_B = M^T M / C = V diag(s^2 / C) V^T, so tr(S_W pinv(S_B)) = sum_k (C / s_k^2) v_k^T S_W v_k, and
  # v_k^T S_W v_k is the weighted mean of the squared projections of the within-class residuals.
  _, s, vt = np.linalg.svd(m, full_matrices=False)
  keep = s > s[0] * max(c, d) * np.finfo(np.float64).eps
  # The centred means have rank <= C - 1 (they sum to zero, with either weighting): a C-th direction is
  # rounding noise of a large shared offset, and dividing by its tiny s^2 blew NC1 up to ~1e28.
  keep[c - 1:] = False
  if s[0] > 0:
    proj = within @ vt[keep].T  # [N, r]
    nc1 = float(np.sum((sample_w @ proj**2) * c / s[keep]**2) / c)
  else:
    nc1 = np.inf if tr_w > 0 else np.nan
  ratio = tr_w / tr_b if tr_b > 0 else (np.inf if tr_w > 0 else np.nan)

  norms = np.linalg.norm(m, axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    norm_cv = float(norms.std() / norms.mean()) if norms.mean() > 0 else np.nan
    unit = m / norms[:, None]
    cos = (unit @ unit.T)[np.triu_indices(c, k=1)]
  return {"nc1": nc1, "within_between_ratio": float(ratio), "norm_cv": norm_cv,
          "cos_mean": float(np.mean(cos)), "cos_std": float(np.std(cos)),
          "cos_etf_gap": float(np.mean(np.abs(cos + 1.0 / (c - 1)))),
          "ncc_accuracy": _ncc_accuracy(means, classes, x, y), "num_classes": c,
          "tr_within": tr_w, "tr_between": tr_b}


def _ncc_accuracy(means, classes, x, y) -> float:
  # ||x - mu||^2 = ||x||^2 - 2 x.mu + ||mu||^2; the ||x||^2 term does not change the argmin.
  dist = -2.0 * x @ means.T + np.sum(means**2, axis=1)[None]
  return float(np.mean(classes[np.argmin(dist, axis=1)] == y))


def ncc_accuracy(*, train_features, train_labels, test_features=None, test_labels=None) -> float:
  """Nearest-class-centre accuracy: class means of the training features, each test row assigned to
  the nearest mean in Euclidean distance (ties to the smaller class id). Without test arrays it is the
  in-sample accuracy on the training features. Test labels absent from training count as errors."""
  fn = "ncc_accuracy"
  x, y = _check_features_labels(train_features, train_labels, fn=fn, features_name="train_features",
                                labels_name="train_labels")
  if (test_features is None) != (test_labels is None):
    raise ValueError(f"{fn}: pass both test_features and test_labels, or neither")
  if test_features is not None:
    tx, ty = _check_features_labels(test_features, test_labels, fn=fn, features_name="test_features",
                                    labels_name="test_labels")
    if tx.shape[1] != x.shape[1]:
      raise ValueError(f"{fn}: test_features have {tx.shape[1]} dimensions, train_features {x.shape[1]}")
  else:
    tx, ty = x, y
  classes, means, _ = class_means(x, y)
  return _ncc_accuracy(means, classes, tx, ty)


def neural_collapse_by_layer(*, features: Mapping[str, np.ndarray], labels, weighting: str = "balanced") -> dict:
  """`neural_collapse` of each layer of a `layer_features` dict: {layer name: measures}."""
  return {name: neural_collapse(features=f, labels=labels, weighting=weighting) for name, f in features.items()}


# ----------------------------------------------------------------------------------------------------
# Layer-wise features.
# ----------------------------------------------------------------------------------------------------

def _is_resnet(backbone) -> bool:
  return isinstance(backbone, ResNet)


def available_layers(model) -> list[str]:
  """Layer names `layer_features` can return for `model`, in network order.

  ResNet backbones: "stage1" ... "stage{n-1}" (global-average-pooled stage outputs) and "backbone"
  (the pooled last stage = `model.embed`; "stage{n}" is accepted as an alias). Other backbones (ViT):
  "backbone" only. Projector: for an `MLPHead`, "projector/hidden{i}" (after BN and ReLU of hidden layer
  i) and "projector/out" (the projection, after the output BN if any); any other projector (DINO, SwAV
  heads) exposes "projector/out" = its "projection" output. Models without a projector (MAE): backbone
  layers only.
  """
  backbone = getattr(model, "backbone", None)
  names = []
  if backbone is not None and _is_resnet(backbone):
    names += [f"stage{i + 1}" for i in range(len(STAGE_SIZES.get(backbone.depth, ())) - 1)]
  names.append("backbone")
  projector = getattr(model, "projector", None)
  if projector is not None:
    if isinstance(projector, MLPHead):
      names += [f"projector/hidden{i + 1}" for i in range(len(projector.hidden_dims))]
    names.append("projector/out")
  return names


def _all_layers(module, x):
  """Inference-mode outputs of every exposed layer, as {name: [B, d] float32}. Run via model.apply."""
  out = {}
  backbone = getattr(module, "backbone", None)
  if backbone is not None and _is_resnet(backbone):
    features, stages = backbone(x, train=False, return_stages=True)
    for i, s in enumerate(stages):
      out[f"stage{i + 1}"] = jnp.mean(s, axis=(1, 2)).astype(jnp.float32)
  elif backbone is not None:
    features = backbone(x, train=False)
  else:
    features = module.embed(x)
  out["backbone"] = features.astype(jnp.float32)
  projector = getattr(module, "projector", None)
  if projector is not None:
    if isinstance(projector, MLPHead):
      z, hidden = projector(features, train=False, return_layers=True)
      for i, h in enumerate(hidden[:-1]):
        out[f"projector/hidden{i + 1}"] = h.astype(jnp.float32)
    else:
      z = projector(features, train=False)
      z = z["projection"] if isinstance(z, dict) else z
    out["projector/out"] = z.astype(jnp.float32)
  return out


def layer_features(model, variables, images, *, image_size: int, mean, std, layers: Sequence[str] | None = None,
                   batch_size: int = 256, mesh=None) -> dict:
  """Features of several layers of a model for uint8 images [N, H, W, C]: {layer name: [N, d] float32}.

  The same preprocessing as `linear_probe.extract_features` (eval_view resize to `image_size`, then
  (x - mean) / std), inference mode (running BatchNorm statistics), batches sharded over the mesh with
  the last batch zero-padded and the padding dropped. ResNet stages are global-average-pooled; the
  "backbone" layer is exactly `model.embed`. `layers` (default: all of `available_layers(model)`)
  picks and orders the layers returned. Everything is computed in one forward pass per batch.
  """
  fn = "layer_features"
  valid = available_layers(model)
  aliases = {}
  if _is_resnet(getattr(model, "backbone", None)):
    aliases[f"stage{len(STAGE_SIZES[model.backbone.depth])}"] = "backbone"
  layers = list(valid if layers is None else layers)
  unknown = [l for l in layers if l not in valid and l not in aliases]
  if unknown or not layers:
    raise ValueError(f"{fn}: layers={layers!r} must be a non-empty list of names from {valid} "
                     f"(aliases: {aliases}); unknown: {unknown}")
  images = np.asarray(images)
  if images.ndim != 4 or len(images) == 0:
    raise ValueError(f"{fn}: images must be a non-empty [N, H, W, C] array, got shape {images.shape}")
  if batch_size < 1:
    raise ValueError(f"{fn}: batch_size must be >= 1, got {batch_size}")
  mesh = mesh or mesh_lib.make_mesh()
  n_dev = mesh.devices.size
  batch_size = max(n_dev, batch_size // n_dev * n_dev)
  wanted = sorted({aliases.get(l, l) for l in layers})

  @jax.jit
  def forward(variables, x):
    # Every layer, whatever was asked for: the program (and its persistent-cache entry) is then the
    # same for any `layers`, and the pooled outputs are small.
    x = normalize(views_lib.eval_view(x, size=image_size), mean, std)
    return model.apply(variables, x, method=_all_layers)

  variables = mesh_lib.replicate(variables, mesh)
  merged = mesh_lib.apply_batched(lambda b: {k: v for k, v in forward(variables, b["image"]).items() if k in wanted},
                                  {"image": images}, batch_size=batch_size, mesh=mesh)
  return {l: merged[aliases.get(l, l)] for l in layers}


# ----------------------------------------------------------------------------------------------------
# 2-D embedding maps.
# ----------------------------------------------------------------------------------------------------

def embedding_map(*, features, labels, path: str, method: str = "tsne", class_names=None, seed: int = 0,
                  title: str | None = None) -> np.ndarray:
  """A 2-D map of features [N, D] saved as a PNG scatter coloured by label; returns the coordinates [N, 2].

  method="tsne": scikit-learn t-SNE (Barnes-Hut, 2 components, perplexity min(30, (N - 1) / 3),
  learning_rate="auto", PCA initialisation, 1000 iterations, random_state=seed, one thread) on the raw (not
  standardised) features, reduced to 50 PCA components first where D > 50 and N > 50 (the usual
  practice; neighbourhoods are then computed on the leading variance). Needs N >= 4.
  method="pca": the first two principal components (full SVD, scikit-learn's sign convention).
  Both are deterministic for a given seed. class_names: a sequence indexed by label or a
  {label: name} mapping for the legend (default: the label values). The PNG is 7 x 6 inches at 120 dpi
  (Agg canvas, no pyplot state), the legend outside the axes; parent directories are created.
  """
  fn = "embedding_map"
  if method not in METHODS:
    raise ValueError(f"{fn}: method={method!r} is not known; valid choices: {list(METHODS)}")
  x, y = _check_features_labels(features, labels, fn=fn)
  n, d = x.shape
  min_n = 4 if method == "tsne" else 2
  if n < min_n:
    raise ValueError(f"{fn}: {method} needs at least {min_n} rows of features, got N={n}")
  if not path:
    raise ValueError(f"{fn}: path must name the PNG file to write, got {path!r}")
  classes = np.unique(y)
  names = _class_names(class_names, classes, fn=fn)

  from sklearn.decomposition import PCA
  if method == "pca":
    if d < 2:
      coords = np.concatenate([x - x.mean(0), np.zeros((n, 1))], axis=1)
    else:
      coords = PCA(n_components=2, svd_solver="full", random_state=seed).fit_transform(x)
  else:
    from sklearn.manifold import TSNE
    if d > 50 and n > 50:
      x = PCA(n_components=50, svd_solver="full", random_state=seed).fit_transform(x)
    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3.0), learning_rate="auto", init="pca",
                max_iter=1000, random_state=seed, n_jobs=1)
    from threadpoolctl import threadpool_limits
    # One thread: Barnes-Hut's OpenMP sums are then in a fixed order (bit-identical maps on any machine),
    # and spinning OpenMP threads next to XLA's on few shared cores were ~100x slower in the tests.
    with threadpool_limits(limits=1):
      coords = tsne.fit_transform(x.astype(np.float32))
  coords = np.asarray(coords, np.float64)
  _plot(coords, y, classes, names, path=path, title=title or f"{method.upper() if method == 'pca' else 't-SNE'}"
        f" of {n} embeddings ({d}-d)")
  return coords


def _class_names(class_names, classes, *, fn):
  if class_names is None:
    return {c: str(c) for c in classes}
  if isinstance(class_names, Mapping):
    missing = [int(c) for c in classes if c not in class_names]
    if missing:
      raise ValueError(f"{fn}: class_names has no entry for labels {missing}")
    return {c: str(class_names[c]) for c in classes}
  class_names = list(class_names)
  bad = [int(c) for c in classes if not 0 <= c < len(class_names)]
  if bad:
    raise ValueError(f"{fn}: class_names (a sequence of {len(class_names)} names indexed by label) does "
                     f"not cover labels {bad}")
  return {c: str(class_names[c]) for c in classes}


def _plot(coords, y, classes, names, *, path, title):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  import matplotlib

  fig = Figure(figsize=(7, 6), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"]
  size = float(np.clip(2000.0 / max(len(y), 1), 2.0, 30.0))
  for i, c in enumerate(classes):
    sel = y == c
    color = cmap(i if len(classes) <= 20 else i / max(len(classes) - 1, 1))
    ax.scatter(coords[sel, 0], coords[sel, 1], s=size, color=color, alpha=0.8, linewidths=0,
               label=f"{names[c]} ({int(sel.sum())})")
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", markerscale=max(1.0, 20.0 / size) ** 0.5,
            ncol=1 if len(classes) <= 25 else 2, frameon=False)
  fig.tight_layout()
  paths.save_figure(fig, path, format="png")

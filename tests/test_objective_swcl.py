"""SWCL: the weighted contrastive loss and its positive weights against plain double loops over the
formula, the pair scheme against SimCLR, 1 vs 8 devices through the real loss function, the
iterator's extra keys, and the errors for bad schemes and datasets."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import device_testing

from medssl_jax import objectives
from medssl_jax.config import load as load_config
from medssl_jax.experiment import validate
from medssl_jax.data import pipeline
from medssl_jax.synthetic import fundus as sf
from medssl_jax.objectives import contrastive_loss, swcl, weighted_contrastive_loss
from medssl_jax.train import mesh as mesh_lib
from medssl_jax.train import pretrain as pretrain_lib
from medssl_jax.train import step as step_lib
from medssl_jax import experiment


def reference_weighted_loss(emb, w, t):
  """loss_i = -sum_p w_ip log softmax_{a != i}(s_ia / t)[p] / sum_p w_ip, one anchor and pair at a time,
  averaged over anchors with a positive weight."""
  emb = np.asarray(emb, np.float64)
  z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  n = len(z)
  total, anchors = 0.0, 0
  for i in range(n):
    denom = sum(math.exp(z[i] @ z[a] / t) for a in range(n) if a != i)
    num, wsum = 0.0, 0.0
    for p in range(n):
      if p != i and w[i][p] > 0:
        num += w[i][p] * math.log(math.exp(z[i] @ z[p] / t) / denom)
        wsum += w[i][p]
    if wsum > 0:
      total += -num / wsum
      anchors += 1
  return total / anchors


def reference_weights(fields, num_views, scheme, abn_thr=0.5, pl_thr=0.5):
  """SWCL positive weights by the rules, one (row, column) pair at a time over the stacked views."""
  b = len(fields["patient"])
  n = num_views * b
  w = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      x, y = i % b, j % b
      if x == y:
        w[i, j] = 1.0  # Views of one patch (and the ignored diagonal).
        continue
      if scheme == ("pair",):
        continue
      weight = 1.0
      for key in scheme:
        if key == "patient" and fields["patient"][x] != fields["patient"][y]:
          weight = 0.0
        if key == "position" and fields["position"][x] != fields["position"][y]:
          weight = 0.0
        if key == "abnormality" and ((fields["abnormality"][x] > abn_thr) != (fields["abnormality"][y] > abn_thr)):
          weight = 0.0
        if key == "pseudo_label":
          sx = {k for k, p in enumerate(fields["pseudo_label"][x]) if p > pl_thr}
          sy = {k for k, p in enumerate(fields["pseudo_label"][y]) if p > pl_thr}
          weight *= len(sx & sy) / len(sx | sy) if (sx | sy) else 1.0
      w[i, j] = weight
  return w


def make_fields(b, seed=0, k=3):
  """Hand-built semi-weak labels with plenty of agreements: few patients and positions, abnormality
  scores on both sides of (and exactly at) 0.5, pseudo-labels including empty sets."""
  rng = np.random.default_rng(seed)
  abn = rng.choice([0.1, 0.5, 0.7, 0.9], size=b).astype(np.float32)
  pl = rng.choice([0.2, 0.8], size=(b, k)).astype(np.float32)
  pl[0] = pl[1] = 0.1  # Two empty pseudo-label sets: overlap 1.
  return {"patient": rng.integers(0, 2, b).astype(np.int64), "position": rng.integers(0, 3, b).astype(np.int64),
          "abnormality": abn, "pseudo_label": pl, "eye": rng.integers(0, 2, b).astype(np.int64),
          "label": np.zeros(b, np.int32), "id": np.arange(b, dtype=np.int32)}


SCHEMES = [("pair",), ("patient",), ("position",), ("abnormality",), ("patient", "position", "abnormality"),
           ("pseudo_label",), ("patient", "pseudo_label")]


def _config(scheme, temperature=0.2):
  c = experiment.default_config()
  c.objective.name = "swcl"
  c.objective.swcl.scheme = scheme
  c.objective.temperature = temperature
  return c


@pytest.mark.parametrize("scheme", SCHEMES)
def test_loss_matches_reference_for_each_scheme(scheme):
  b, views = 8, 2
  fields = make_fields(b, seed=len(scheme))
  rng = np.random.default_rng(1)
  proj = rng.normal(size=(views * b, 5)).astype(np.float32)
  w_ref = reference_weights(fields, views, scheme)
  w = swcl.positive_weights(batch={k: jnp.asarray(v) for k, v in fields.items()}, num_views=views, scheme=scheme,
                            abnormality_threshold=0.5, pseudo_label_threshold=0.5)
  assert w.dtype == jnp.float32 and w.shape == (views * b, views * b)
  np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-6)
  if scheme not in (("pair",), ("patient", "position", "abnormality")):
    assert (w_ref[:b, :b] > 0).sum() > 2 * b, f"{scheme}: the batch should have cross-patch positives"
  if "pseudo_label" in scheme:
    assert ((w_ref > 0) & (w_ref < 1)).any(), "fractional Jaccard weights should occur"
  student = [{"projection": jnp.asarray(proj[v * b:(v + 1) * b])} for v in range(views)]
  loss, metrics, updates = objectives.get_objective("swcl").loss(
      student=student, teacher=None, batch={k: jnp.asarray(v) for k, v in fields.items()}, state={}, step=0,
      config=_config(scheme))
  assert updates == {}
  np.testing.assert_allclose(float(loss), reference_weighted_loss(proj, w_ref, 0.2), rtol=1e-5)
  extra = ((w_ref > 0).sum(axis=1) - views).mean()
  np.testing.assert_allclose(float(metrics["extra_positives"]), extra, rtol=1e-6)
  assert float(metrics["num_anchors"]) == views * b


def test_weighted_metrics_match_reference():
  rng = np.random.default_rng(2)
  emb = rng.normal(size=(6, 4)).astype(np.float32)
  w = rng.choice([0.0, 0.0, 0.5, 1.0], size=(6, 6)).astype(np.float32)
  w[5] = 0.0  # Row 5 has no positives: not an anchor.
  loss, m = weighted_contrastive_loss(embeddings=jnp.asarray(emb), positive_weights=jnp.asarray(w), temperature=0.3)
  np.testing.assert_allclose(float(loss), reference_weighted_loss(emb, w, 0.3), rtol=1e-5)
  z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  s = z @ z.T
  off = ~np.eye(6, dtype=bool)
  wo = np.where(off, w, 0.0)
  np.testing.assert_allclose(float(m["pos_sim"]), (wo * s).sum() / wo.sum(), rtol=1e-5)
  neg = off & (wo == 0)
  np.testing.assert_allclose(float(m["neg_sim"]), s[neg].mean(), rtol=1e-5)
  anchors = [i for i in range(6) if wo[i].sum() > 0]
  nearest = [max((a for a in range(6) if a != i), key=lambda a: s[i, a]) for i in anchors]
  np.testing.assert_allclose(float(m["top1"]), np.mean([wo[i, j] > 0 for i, j in zip(anchors, nearest)]), rtol=1e-6)
  assert float(m["num_anchors"]) == len(anchors)


@pytest.mark.parametrize("with_mask", [False, True])
def test_binary_weights_equal_contrastive_loss_exactly(with_mask):
  rng = np.random.default_rng(3)
  emb = jnp.asarray(rng.normal(size=(10, 6)), jnp.float32)
  ids = jnp.asarray([0, 1, 2, 0, 1, 3, 4, 4, 2, 5])
  w = (ids[:, None] == ids[None, :]).astype(jnp.float32)
  mask = jnp.asarray([1, 1, 1, 1, 0, 1, 1, 1, 0, 1]) if with_mask else None
  a = jax.jit(lambda e: contrastive_loss(embeddings=e, ids=ids, temperature=0.1, mask=mask))(emb)
  b = jax.jit(lambda e: weighted_contrastive_loss(embeddings=e, positive_weights=w, temperature=0.1, mask=mask))(emb)
  for k in ("pos_sim", "neg_sim", "top1", "num_anchors"):
    np.testing.assert_array_equal(np.asarray(a[1][k]), np.asarray(b[1][k]), err_msg=k)
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  ga = jax.grad(lambda e: contrastive_loss(embeddings=e, ids=ids, temperature=0.1, mask=mask)[0])(emb)
  gb = jax.grad(lambda e: weighted_contrastive_loss(embeddings=e, positive_weights=w, temperature=0.1,
                                                    mask=mask)[0])(emb)
  np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=1e-6, atol=1e-7)


def test_pair_scheme_is_simclr():
  b = 6
  fields = make_fields(b)
  proj = jnp.asarray(np.random.default_rng(4).normal(size=(2 * b, 8)), jnp.float32)
  student = [{"projection": proj[:b]}, {"projection": proj[b:]}]
  kw = dict(student=student, teacher=None, state={}, step=0, config=_config(("pair",)))
  simclr, m1, _ = objectives.get_objective("simclr").loss(batch={"label": jnp.asarray(fields["label"])}, **kw)
  pair, m2, _ = objectives.get_objective("swcl").loss(batch={"label": jnp.asarray(fields["label"])}, **kw)
  np.testing.assert_allclose(float(pair), float(simclr), rtol=1e-6)
  assert float(m2["extra_positives"]) == 0.0 and float(m1["top1"]) == float(m2["top1"])


def test_scheme_errors_and_batch_keys():
  for bad, match in [(("patient", "eye"), r"unknown key\(s\) \['eye'\]; valid keys: \['pair', 'patient'"),
                     (("pair", "patient"), "'pair'.*cannot be combined"),
                     ((), "is empty"),
                     ("patient", "must be a tuple"),
                     (("position", "position"), "repeats")]:
    with pytest.raises(ValueError, match=match):
      swcl.check_scheme(bad)
  assert swcl.SWCL.batch_keys(_config(("pair",))) == ()
  assert swcl.SWCL.batch_keys(_config(("abnormality", "patient", "pseudo_label"))) == (
      "abnormality", "patient", "pseudo_label")
  with pytest.raises(KeyError, match=r"needs batch features \['position'\]"):
    swcl.positive_weights(batch={"patient": jnp.zeros(4)}, num_views=2, scheme=("patient", "position"))
  c = _config(("patient", "pair"))
  c.mode = "pretrain"
  with pytest.raises(ValueError, match="cannot be combined"):
    validate(c)


# ---------------------------------------------------------------- through the trainer


def tiny_config(scheme):
  c = load_config("fundus_simclr", "quick")
  c.objective.name = "swcl"
  c.objective.swcl.scheme = scheme
  for v in c.augment.views:
    v.crop_size = 16
  c.data.image_size = 32
  return validate(c)


def _batch(n=16, seed=0):
  images, _ = sf.generate(n, size=32, seed=seed)
  fields = make_fields(n, seed=seed, k=4)
  return dict({k: v for k, v in fields.items() if k != "eye"}, image=images)


_loss_and_grads = device_testing.loss_and_grads


def test_one_vs_eight_devices_and_train_step():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")
  config = tiny_config(("patient", "position", "abnormality", "pseudo_label"))
  model, objective, tx, schedule = pretrain_lib.build(config)
  state = pretrain_lib.init_train_state(config, model, tx, jax.random.key(0))
  batch = _batch()
  key = jax.random.key(42)
  step0_key = jax.random.fold_in(key, 0)  # What the train step below draws its views from at step 0.
  one = _loss_and_grads(jax.devices()[:1], config, state, batch, step0_key)
  eight = _loss_and_grads(jax.devices()[:8], config, state, batch, step0_key)
  device_testing.assert_same(one, eight)
  assert float(one[1]["extra_positives"]) > 0  # The semi-weak labels add positives in this batch.

  # The jitted train step on 8 devices: a finite loss and an update.
  mesh = mesh_lib.make_mesh(jax.devices()[:8])
  step = step_lib.make_train_step(model, objective, tx, schedule, config, mesh)
  st = mesh_lib.replicate(jax.tree.map(np.array, state), mesh)
  new_state, metrics = step(st, mesh_lib.shard_batch(batch, mesh), key)
  assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1
  np.testing.assert_allclose(float(metrics["loss"]), one[0], rtol=2e-4, err_msg="train-step loss")


# ---------------------------------------------------------------- input pipeline


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
  return pipeline.get_builder("synthetic_fundus", config="tiny", data_dir=str(tmp_path_factory.mktemp("tfds")))


def test_iterator_extra_keys_are_aligned_with_ids(builder):
  truth = pipeline.load_split_arrays(builder, split="train", extra_keys=("eye",))
  eye_of = dict(zip(truth["id"].tolist(), truth["eye"].tolist()))
  assert len(set(eye_of.values())) == 2
  args = dict(global_batch_size=8, seed=0, process_index=0, process_count=1)
  it = pipeline.make_train_iterator(builder, extra_keys=("eye",), **args)
  plain = pipeline.make_train_iterator(builder, **args)
  for _ in range(3):
    batch, ref = next(it), next(plain)
    assert set(batch) == {"image", "label", "id", "eye"} and set(ref) == {"image", "label", "id"}
    assert batch["eye"].shape == (8,) and batch["eye"].dtype == np.int64
    assert batch["eye"].tolist() == [eye_of[i] for i in batch["id"].tolist()]
    for k in ref:  # The extra key changes nothing else.
      np.testing.assert_array_equal(batch[k], ref[k])
  with pytest.raises(KeyError, match=r"has no feature 'patient'.*\['eye', 'id', 'image', 'label'\]"):
    pipeline.make_train_iterator(builder, extra_keys=("patient",), **args)


def test_decoder_casts_extra_features_to_the_dataset_dtype():
  # A data source hands float32 scalars back as Python floats: the batch must still hold float32.
  import io
  from PIL import Image
  png = io.BytesIO()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png, format="PNG")
  record = {"image": png.getvalue(), "label": 1, "id": 3, "abnormality": 0.25, "patient": 7, "eye": 1}
  decode = pipeline._Decode("train", None, 3, extra_keys=("abnormality", "patient"),
                            extra_dtypes={"abnormality": np.float32, "patient": np.int64})
  out = decode(0, record)
  assert out["abnormality"].dtype == np.float32 and float(out["abnormality"]) == 0.25
  assert out["patient"].dtype == np.int64 and int(out["patient"]) == 7 and "eye" not in out
  plain = pipeline._Decode("train", None, 3)(0, record)
  assert set(plain) == {"image", "label", "id"}


def test_pretrain_names_missing_dataset_features(builder):
  objective = objectives.get_objective("swcl")
  assert pretrain_lib.objective_batch_keys(_config(("pair",)), objective, builder) == ()
  assert pretrain_lib.objective_batch_keys(_config(("pair",)), objectives.get_objective("simclr"), builder) == ()
  with pytest.raises(ValueError, match=r"objective 'swcl' with config.objective.swcl.scheme=\('patient', "
                                       r"'position'\) needs dataset features \['patient', 'position'\].*"
                                       r"synthetic_fundus/tiny.*\['eye', 'id', 'image', 'label'\]"):
    pretrain_lib.objective_batch_keys(_config(("patient", "position")), objective, builder)

"""CLIP / ConVIRT losses, retrieval recall and the text tower against straightforward references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import flax.linen as nn

from medssl_jax.models.text import TextTransformer
from medssl_jax.objectives.image_text import clip_loss, convirt_loss, retrieval_recall
from medssl_jax.train import mesh as mesh_lib


def reference_directions(img, txt, t, mask=None):
  """(L_i2t, L_t2i) written one anchor and one candidate at a time, float64."""
  img = np.asarray(img, np.float64)
  txt = np.asarray(txt, np.float64)
  img = img / np.linalg.norm(img, axis=1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  n = len(img)
  valid = [i for i in range(n) if mask is None or mask[i]]
  i2t, t2i = [], []
  for i in valid:
    i2t.append(-math.log(math.exp(img[i] @ txt[i] / t) / sum(math.exp(img[i] @ txt[j] / t) for j in valid)))
    t2i.append(-math.log(math.exp(txt[i] @ img[i] / t) / sum(math.exp(txt[i] @ img[j] / t) for j in valid)))
  return np.mean(i2t), np.mean(t2i)


def _pairs(n, d, seed):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("n,d,t,use_mask", [(6, 4, 0.07, False), (8, 5, 0.5, True), (10, 16, 1.0, True)])
def test_clip_matches_reference(n, d, t, use_mask):
  img, txt = _pairs(n, d, n + d)
  mask = np.arange(n) % 3 != 1 if use_mask else None
  loss, m = clip_loss(image_embeddings=jnp.asarray(img), text_embeddings=jnp.asarray(txt), temperature=t,
                      mask=None if mask is None else jnp.asarray(mask))
  a, b = reference_directions(img, txt, t, mask)
  np.testing.assert_allclose(float(loss), (a + b) / 2, rtol=1e-5)
  np.testing.assert_allclose([float(m["loss_i2t"]), float(m["loss_t2i"])], [a, b], rtol=1e-5)
  assert float(m["num_pairs"]) == (n if mask is None else mask.sum())


@pytest.mark.parametrize("lam,t", [(0.75, 0.1), (0.3, 0.25), (1.0, 0.1)])
def test_convirt_matches_reference_with_mask(lam, t):
  img, txt = _pairs(9, 6, 3)
  mask = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1], bool)
  loss, _ = convirt_loss(image_embeddings=jnp.asarray(img), text_embeddings=jnp.asarray(txt), temperature=t,
                         image_to_text_weight=lam, mask=jnp.asarray(mask))
  a, b = reference_directions(img, txt, t, mask)
  np.testing.assert_allclose(float(loss), lam * a + (1 - lam) * b, rtol=1e-5)
  # Padding rows really are ignored: dropping them gives the same loss.
  unpadded, _ = convirt_loss(image_embeddings=jnp.asarray(img[mask]), text_embeddings=jnp.asarray(txt[mask]),
                             temperature=t, image_to_text_weight=lam)
  np.testing.assert_allclose(float(loss), float(unpadded), rtol=1e-6)


def test_clip_is_convirt_at_half_and_learned_logit_scale():
  img, txt = _pairs(8, 5, 7)
  clip, m_clip = clip_loss(image_embeddings=jnp.asarray(img), text_embeddings=jnp.asarray(txt), temperature=0.2)
  convirt, _ = convirt_loss(image_embeddings=jnp.asarray(img), text_embeddings=jnp.asarray(txt), temperature=0.2,
                            image_to_text_weight=0.5)
  np.testing.assert_allclose(float(clip), float(convirt), rtol=1e-6)
  # Both take t itself; CLIP's logit_scale = log(1/t) passes as temperature=exp(-logit_scale), traced.
  def f(logit_scale):
    return clip_loss(image_embeddings=jnp.asarray(img), text_embeddings=jnp.asarray(txt),
                     temperature=jnp.exp(-logit_scale))[0]
  np.testing.assert_allclose(float(jax.jit(f)(jnp.log(1 / 0.2))), float(clip), rtol=1e-5)
  g = jax.grad(f)(jnp.log(1 / 0.2))
  eps = 1e-3
  fd = (float(f(jnp.log(5.0) + eps)) - float(f(jnp.log(5.0) - eps))) / (2 * eps)
  np.testing.assert_allclose(float(g), fd, rtol=2e-2, atol=1e-3)
  assert -1 <= float(m_clip["neg_sim"]) <= 1


def test_perfect_alignment():
  # Orthogonal pairs, text == image: top1 = 1, pos_sim 1, neg_sim 0, loss ~ 0 at low temperature.
  emb = jnp.eye(6, 8) * 3.0
  loss, m = clip_loss(image_embeddings=emb, text_embeddings=emb, temperature=0.01)
  assert float(loss) < 1e-6
  for k, want in [("i2t_top1", 1.0), ("t2i_top1", 1.0), ("pos_sim", 1.0), ("neg_sim", 0.0)]:
    np.testing.assert_allclose(float(m[k]), want, atol=1e-6, err_msg=k)
  loss, _ = convirt_loss(image_embeddings=emb, text_embeddings=emb, temperature=0.01)
  assert float(loss) < 1e-6


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="same shape"):
    clip_loss(image_embeddings=jnp.ones((4, 3)), text_embeddings=jnp.ones((5, 3)))
  with pytest.raises(ValueError, match="mask"):
    clip_loss(image_embeddings=jnp.ones((4, 3)), text_embeddings=jnp.ones((4, 3)), mask=jnp.ones(3))
  with pytest.raises(ValueError, match="lambda"):
    convirt_loss(image_embeddings=jnp.ones((4, 3)), text_embeddings=jnp.ones((4, 3)), image_to_text_weight=1.5)


def test_one_vs_eight_devices():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices: run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py sets it)")
  img, txt = _pairs(16, 8, 11)
  batch = {"image": img, "text": txt, "mask": (np.arange(16) % 5 != 4)}

  def f(image, text, mask, log_t):
    return clip_loss(image_embeddings=image, text_embeddings=text, temperature=jnp.exp(log_t), mask=mask)

  def run_on(devices):
    mesh = mesh_lib.make_mesh(devices)
    b = mesh_lib.shard_batch(batch, mesh)
    assert b["image"].sharding.num_devices == len(devices)
    fn = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 3), has_aux=True))
    return jax.device_get(fn(b["image"], b["text"], b["mask"], jnp.log(0.1)))

  (l1, m1), g1 = run_on(jax.devices()[:1])
  (l8, m8), g8 = run_on(jax.devices()[:8])
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b in zip(g1, g8):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # And the global-batch value: the reference on all 16 rows, not per-device shards of 2.
  a, b = reference_directions(img, txt, 0.1, batch["mask"])
  np.testing.assert_allclose(l8, (a + b) / 2, rtol=1e-5)
  # Masked rows get zero gradient.
  assert np.all(g8[0][~batch["mask"]] == 0) and np.all(g8[1][~batch["mask"]] == 0)


def reference_recall(img, txt, k):
  img = img / np.linalg.norm(img, axis=1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  sim = img @ txt.T
  i2t = np.mean([i in np.argsort(-sim[i])[:k] for i in range(len(img))])
  t2i = np.mean([j in np.argsort(-sim[:, j])[:k] for j in range(len(img))])
  return i2t, t2i


def test_retrieval_recall():
  rng = np.random.default_rng(5)
  img = rng.normal(size=(30, 6))
  txt = img + rng.normal(size=(30, 6)) * 1.0  # Noisy pairs: recall between 0 and 1.
  r = retrieval_recall(image_embeddings=img, text_embeddings=txt, ks=(1, 5, 10, 50))
  for k in (1, 5, 10):
    i2t, t2i = reference_recall(img, txt, k)
    assert r[f"i2t_R@{k}"] == pytest.approx(i2t) and r[f"t2i_R@{k}"] == pytest.approx(t2i)
  assert 0 < r["i2t_R@1"] < 1 and r["i2t_R@1"] <= r["i2t_R@5"] <= r["i2t_R@10"]
  assert r["i2t_R@50"] == r["t2i_R@50"] == 1.0
  perfect = retrieval_recall(image_embeddings=img, text_embeddings=img, ks=(1,))
  assert perfect == {"i2t_R@1": 1.0, "t2i_R@1": 1.0}


def test_collapsed_embeddings_score_chance_recall():
  """Every embedding the same: each query's true partner is tied with all N candidates, so recall@k is k / N
  (random order among ties), not 1."""
  same = np.ones((20, 4))
  r = retrieval_recall(image_embeddings=same, text_embeddings=same, ks=(1, 5, 20))
  assert r == pytest.approx({"i2t_R@1": 0.05, "t2i_R@1": 0.05, "i2t_R@5": 0.25, "t2i_R@5": 0.25, "i2t_R@20": 1.0,
                             "t2i_R@20": 1.0})
  # Two templated reports for 10 images each: a query's partner ties with 9 others of its template.
  rng = np.random.default_rng(0)
  img = rng.normal(size=(20, 4))
  templates = rng.normal(size=(2, 4))
  txt = templates[np.arange(20) % 2]
  img = txt + 1e-3 * img  # Each image nearest its own template.
  r = retrieval_recall(image_embeddings=img, text_embeddings=txt, ks=(1, 10))
  assert r["i2t_R@1"] == pytest.approx(0.1) and r["i2t_R@10"] == pytest.approx(1.0)


VOCAB = 20


def _text_batch(rng, b, length):
  ids = rng.integers(5, VOCAB, size=(b, length)).astype(np.int32)
  lengths = rng.integers(2, length + 1, size=b)
  mask = np.arange(length)[None, :] < lengths[:, None]
  ids[:, 0] = 2  # [CLS]
  return np.where(mask, ids, 0).astype(np.int32), mask


def test_text_transformer_shapes_and_padding_invariance():
  rng = np.random.default_rng(0)
  ids, mask = _text_batch(rng, 4, 8)
  model = TextTransformer(vocab_size=VOCAB, width=32, depth=2, heads=2, max_length=8, out_dim=16)
  params = model.init(jax.random.key(0), ids, mask, train=False)
  out = model.apply(params, ids, mask, train=False)
  assert out.shape == (4, 16) and out.dtype == jnp.float32 and model.num_features == 16
  # Any tokens at padded positions: same output.
  junk = np.where(mask, ids, rng.integers(1, VOCAB, size=ids.shape)).astype(np.int32)
  np.testing.assert_allclose(model.apply(params, junk, mask, train=False), out, rtol=1e-5, atol=1e-6)
  # A shorter padded length with the same real tokens: same output.
  short = int(mask.sum(1).max())
  np.testing.assert_allclose(model.apply(params, ids[:, :short], mask[:, :short], train=True), out,
                             rtol=1e-5, atol=1e-6)
  # Real tokens do matter.
  changed = ids.copy()
  changed[:, 1] = (ids[:, 1] + 1) % VOCAB
  assert not np.allclose(model.apply(params, changed, mask, train=False), out, atol=1e-4)
  no_proj = TextTransformer(vocab_size=VOCAB, width=32, depth=1, heads=2, max_length=8)
  p2 = no_proj.init(jax.random.key(1), ids, mask, train=False)
  assert no_proj.apply(p2, ids, mask, train=False).shape == (4, 32)
  with pytest.raises(ValueError, match="max_length"):
    model.apply(params, np.zeros((1, 9), np.int32), np.ones((1, 9), bool), train=False)


class _Pair(nn.Module):
  @nn.compact
  def __call__(self, images, ids, mask):
    img = nn.Dense(16, name="image_proj")(images)
    txt = TextTransformer(vocab_size=VOCAB, width=32, depth=1, heads=2, max_length=8, out_dim=16,
                          name="text")(ids, mask, train=True)
    return img, txt


def test_clip_training_lowers_loss():
  rng = np.random.default_rng(1)
  images = rng.normal(size=(16, 12)).astype(np.float32)
  ids, mask = _text_batch(rng, 16, 8)
  model = _Pair()
  params = model.init(jax.random.key(0), images, ids, mask)
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  def loss_fn(p):
    img, txt = model.apply(p, images, ids, mask)
    return clip_loss(image_embeddings=img, text_embeddings=txt, temperature=0.1)

  @jax.jit
  def step(p, s):
    (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss, m

  losses = []
  for _ in range(30):
    params, opt_state, loss, m = step(params, opt_state)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses
  assert float(m["i2t_top1"]) > 0.5

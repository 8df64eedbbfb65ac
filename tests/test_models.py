"""Encoder output shapes and exact parameter counts (torchvision's backbones, without the fc layer)."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from medssl_jax.models import MLPHead, resnet


def count(module, size, **kw):
  v = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((2, size, size, 3)), **kw))
  return sum(x.size for x in jax.tree.leaves(v["params"])), v


@pytest.mark.parametrize("name,stem,size,expected,dim", [
    # torchvision resnet18: 11,689,512 total - 513,000 fc = 11,176,512.
    ("resnet18", "imagenet", 64, 11_176_512, 512),
    # CIFAR stem: 3x3x3x64 conv instead of 7x7x3x64.
    ("resnet18", "cifar", 32, 11_176_512 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64, 512),
    # torchvision resnet50: 25,557,032 total - 2,049,000 fc = 23,508,032.
    ("resnet50", "imagenet", 64, 23_508_032, 2048),
])
def test_parameter_counts(name, stem, size, expected, dim):
  model = resnet(name, stem=stem)
  n, _ = count(model, size, train=False)
  assert n == expected
  assert model.num_features == dim


def test_output_shapes_and_width_multiplier():
  model = resnet("resnet18", stem="cifar", width_multiplier=0.125)
  x = jnp.ones((3, 28, 28, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  feats, stages = model.apply(variables, x, train=False, return_stages=True)
  assert feats.shape == (3, 64) and feats.dtype == jnp.float32
  assert [s.shape for s in stages] == [(3, 28, 28, 8), (3, 14, 14, 16), (3, 7, 7, 32), (3, 4, 4, 64)]
  big = resnet("resnet18", stem="imagenet")
  _, v = count(big, 64, train=False)
  # ImageNet stem: /4 in the stem, then /2 in each of 3 stages.
  out = jax.eval_shape(lambda v: big.apply(v, jnp.zeros((2, 64, 64, 3)), train=False, return_stages=True), v)
  assert out[1][-1].shape == (2, 2, 2, 512)


def test_bf16_compute_keeps_float32_params_and_features():
  model = resnet("resnet18", stem="cifar", width_multiplier=0.125, dtype=jnp.bfloat16)
  x = jnp.ones((2, 16, 16, 3))
  v = model.init(jax.random.key(0), x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v))
  assert model.apply(v, x, train=False).dtype == jnp.float32


def test_projector_head():
  head = MLPHead(hidden_dims=(32,), out_dim=8)
  v = head.init(jax.random.key(0), jnp.ones((4, 16)), train=False)
  n = sum(x.size for x in jax.tree.leaves(v["params"]))
  assert n == 16 * 32 + 2 * 32 + 32 * 8 + 8
  assert head.apply(v, jnp.ones((4, 16)), train=False).shape == (4, 8)


def test_unknown_names():
  with pytest.raises(ValueError, match="'resnet19'.*resnet18"):
    resnet("resnet19")
  with pytest.raises(ValueError, match="stem 'tiny'"):
    resnet("resnet18", stem="tiny").init(jax.random.key(0), jnp.ones((1, 8, 8, 3)), train=False)


@pytest.mark.parametrize("side,k,stride,padding", [
    (2, 3, 1, "SAME"), (4, 3, 2, "SAME"), (4, 3, 2, ((1, 1), (1, 1))), (3, 3, 2, "SAME"), (2, 7, 2, ((3, 3), (3, 3))),
    (8, 3, 1, "SAME"),                                                   # Tiny output maps; above them, stride 1.
    (8, 3, 2, "SAME"), (7, 3, 2, "SAME"), (8, 3, 2, ((1, 1), (1, 1))), (9, 3, 3, "SAME"), (11, 7, 2, ((3, 3), (3, 3))),
    (8, 2, 2, ((0, 1), (1, 0))),                                         # Strided: phase input gradient.
    (8, 1, 2, "SAME"), (7, 1, 2, "SAME"), (6, 1, 3, ((1, 0), (0, 1))), (8, 1, 1, "SAME")])  # 1x1: matmul.
def test_resnet_conv_matches_lax_conv(side, k, stride, padding):
  """The ResNet's convolution (im2col for tiny output maps; on CPU, a matmul for 1x1 kernels and the phase input
  gradient for strides; XLA's elsewhere) equals XLA's convolution: values and both gradients."""
  resnet_lib = importlib.import_module("medssl_jax.models.resnet")  # The module; models.resnet is a function.
  dn = ("NHWC", "HWIO", "NHWC")
  x = jax.random.normal(jax.random.key(0), (5, side, side, 8))
  w = jax.random.normal(jax.random.key(1), (k, k, 8, 6))
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=dn,
                                              precision="highest")
  new = lambda x, w: resnet_lib.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=lax.conv_dimension_numbers(x.shape, w.shape, dn),
      precision="highest")
  np.testing.assert_allclose(new(x, w), ref(x, w), rtol=1e-5, atol=1e-4)
  if (stride > 1 or k == 1) and side > 4:  # The CPU rewrites are the ones under test, not XLA's own convolution.
    jaxpr = str(jax.make_jaxpr(new)(x, w))
    assert ("custom_vjp" in jaxpr) if k > 1 else ("conv_general_dilated" not in jaxpr)
  loss = lambda f: jax.grad(lambda x, w: (f(x, w) ** 2).sum(), argnums=(0, 1))(x, w)
  for a, b in zip(loss(new), loss(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)

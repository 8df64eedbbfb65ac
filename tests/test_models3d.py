"""3D ResNets (MedMNIST's ResNet-18+3D / ResNet-50+3D), 2D -> 3D weight inflation (I3D, ACS), 3D U-Net.

Models run at width 1/16 on volumes of 8-28 voxels a side; full-width models are only traced
(`jax.eval_shape`) for their parameter counts.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from medssl_jax import models
from medssl_jax.models import inflate
from medssl_jax.models.resnet import resnet
from medssl_jax.models.resnet3d import DepthUnfoldConv, ResNet3D, resnet3d
from medssl_jax.models.unet import UNet

TINY = 1 / 16  # Stage widths 4, 8, 16, 32.


def _shapes(module, x_shape, **kw):
  return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(x_shape), train=False, **kw))


def _num_params(variables):
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


def _random_like(shapes, seed=0):
  """Random float32 values (numpy) for a variables tree (BatchNorm variances positive)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  rs = np.random.RandomState(seed)
  out = []
  for path, s in leaves:
    x = rs.randn(*s.shape).astype(np.float32)
    name = path[-1].key
    if name == "var":
      x = 0.5 + rs.rand(*s.shape).astype(np.float32)
    elif name == "scale":
      x = 1.0 + 0.2 * x
    elif name in ("mean", "bias"):
      x = 0.1 * x
    elif name == "kernel":
      x = x * np.sqrt(2.0 / np.prod(s.shape[:-1]))
    out.append(np.asarray(x, np.float32))
  return jax.tree_util.tree_unflatten(treedef, out)


def expected_params(depth, in_channels, stem, spatial_dims=3):
  """The PyTorch layer list of MedMNIST's ResNet (torchvision v1.5 blocks, projection shortcut when the
  shape changes), with k x k convs as k^spatial_dims ones: conv weights plus BatchNorm weight and bias."""
  conv = lambda cin, cout, k: k**spatial_dims * cin * cout
  bn = lambda c: 2 * c
  total = conv(in_channels, 64, 3 if stem == "cifar" else 7) + bn(64)
  expansion = 1 if depth < 50 else 4
  blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
  in_planes = 64
  for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
    for j in range(n):
      stride = 2 if i > 0 and j == 0 else 1
      if expansion == 1:
        total += conv(in_planes, planes, 3) + bn(planes) + conv(planes, planes, 3) + bn(planes)
      else:
        total += (conv(in_planes, planes, 1) + bn(planes) + conv(planes, planes, 3) + bn(planes)
                  + conv(planes, 4 * planes, 1) + bn(4 * planes))
      if stride != 1 or in_planes != expansion * planes:
        total += conv(in_planes, expansion * planes, 1) + bn(expansion * planes)
      in_planes = expansion * planes
  return total


def test_expected_params_formula_matches_torchvision_2d():
  # The formula, in 2D, gives torchvision's backbone sizes (fc excluded): it counts the right layers.
  assert expected_params(18, 3, "imagenet", spatial_dims=2) == 11_176_512
  assert expected_params(50, 3, "imagenet", spatial_dims=2) == 23_508_032


# --------------------------------------------------------------------------------------------------
# ResNet3D.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,depth,in_channels,stem,literal", [
    ("resnet18_3d", 18, 1, "cifar", 33_139_776),
    ("resnet18_3d", 18, 3, "cifar", None),
    ("resnet50_3d", 50, 1, "cifar", None),
    ("resnet18_3d", 18, 3, "imagenet", None),
])
def test_parameter_counts(name, depth, in_channels, stem, literal):
  model = resnet3d(name, stem=stem)
  n = _num_params(_shapes(model, (2, 16, 16, 16, in_channels)))
  assert n == expected_params(depth, in_channels, stem)
  if literal is not None:
    assert n == literal
  assert model.num_features == (512 if depth == 18 else 2048)


def test_output_shapes_28_and_16():
  model = resnet3d("resnet18_3d", width_multiplier=TINY)
  assert model.stem == "cifar"  # The MedMNIST 3D layout by default.
  v = _shapes(model, (2, 28, 28, 28, 1))
  feats, stages = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((2, 28, 28, 28, 1)), train=False, return_stages=True), v)
  assert feats.shape == (2, 32) and feats.dtype == jnp.float32
  assert [s.shape for s in stages] == [(2, 28, 28, 28, 4), (2, 14, 14, 14, 8), (2, 7, 7, 7, 16),
                                       (2, 4, 4, 4, 32)]
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 16, 1))
  v = _random_like(_shapes(model, x.shape))  # A jitted init compiles for ~40 s on CPU; apply for ~2 s.
  feats, stages = jax.jit(functools.partial(model.apply, train=False, return_stages=True))(v, x)
  assert [s.shape[1:4] for s in stages] == [(16,) * 3, (8,) * 3, (4,) * 3, (2,) * 3]
  np.testing.assert_allclose(feats, stages[-1].mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
  bottleneck = resnet3d("resnet50_3d", width_multiplier=TINY, stem="imagenet")
  out = jax.eval_shape(lambda: bottleneck.init_with_output(jax.random.key(0), jnp.zeros((2, 32, 32, 32, 3)),
                                                          train=False)[0])
  assert out.shape == (2, 128) and bottleneck.num_features == 128


def _initial_stats(variables):
  """`variables` with BatchNorm's initial running statistics (mean 0, var 1)."""
  stats = jax.tree_util.tree_map_with_path(
      lambda path, x: np.full_like(x, 1.0 if path[-1].key == "var" else 0.0), variables["batch_stats"])
  return dict(variables, batch_stats=stats)


def test_batchnorm_train_and_eval():
  x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 8, 1))
  others = x.at[1:].set(jax.random.uniform(jax.random.key(2), (2, 8, 8, 8, 1)))  # Example 0 unchanged.
  model = resnet3d("resnet18_3d", width_multiplier=TINY, bn_momentum=0.75)
  v = _initial_stats(_random_like(_shapes(model, x.shape)))
  train = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
  evaluate = jax.jit(functools.partial(model.apply, train=False))
  out, updated = train(v, x)
  # Train mode normalises with the batch's statistics: an example's output depends on the others.
  assert not np.allclose(train(v, others)[0][0], out[0], atol=1e-5)
  # Eval mode uses the running statistics: each example's output is its own.
  np.testing.assert_allclose(evaluate(v, others)[0], evaluate(v, x)[0], rtol=1e-5, atol=1e-6)
  # Running statistics new = momentum * old + (1 - momentum) * batch: from two different starting
  # statistics, the updates differ by momentum times the difference.
  shifted = jax.tree.map(lambda s: s + 0.5, v["batch_stats"])
  _, updated2 = train(dict(v, batch_stats=shifted), x)
  leaves = jax.tree.leaves(updated["batch_stats"])
  assert len(leaves) == 2 * 20  # mean and var of 20 BatchNorms (stem, 16 in blocks, 3 projections).
  for a, b in zip(leaves, jax.tree.leaves(updated2["batch_stats"])):
    np.testing.assert_allclose(b - a, 0.75 * 0.5, rtol=1e-4)


def test_rank_errors_and_names():
  model = resnet3d("resnet18_3d", width_multiplier=TINY)
  with pytest.raises(ValueError, match=r"ResNet3D: expected a batch \[B, D, H, W, C\], got shape \(2, 8, 8, 1\)"):
    model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), train=False)
  with pytest.raises(ValueError, match=r"ResNet: expected a batch \[B, H, W, C\]"):
    resnet("resnet18", width_multiplier=TINY).init(jax.random.key(0), jnp.zeros((2, 8, 8, 8, 1)), train=False)
  with pytest.raises(ValueError, match="'resnet18'.*resnet18_3d"):
    resnet3d("resnet18")


def test_build_backbone_from_config():
  assert set(models.ENCODERS_3D) <= set(models.ENCODERS)
  config = ml_collections.ConfigDict(dict(model=dict(
      encoder="resnet50_3d", stem="cifar", width_multiplier=0.5, compute_dtype="float32", init_checkpoint="")))
  backbone = models.build_backbone(config)
  assert isinstance(backbone, ResNet3D) and not isinstance(backbone, models.ResNet)
  assert (backbone.depth, backbone.stem, backbone.width_multiplier, backbone.padding) == (50, "cifar", 0.5, "same")
  head = models.SSLModel(backbone=backbone, projector=models.MLPHead(hidden_dims=(16,), out_dim=8))
  out = jax.eval_shape(lambda: head.init_with_output(jax.random.key(0), jnp.zeros((2, 8, 8, 8, 1)),
                                                     train=False)[0])
  assert out["features"].shape == (2, 1024) and out["projection"].shape == (2, 8)


# --------------------------------------------------------------------------------------------------
# Inflation.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", inflate.METHODS)
@pytest.mark.parametrize("depth,stem,in_channels", [(18, "cifar", None), (50, "imagenet", 1)])
def test_inflated_variables_match_the_3d_model(method, depth, stem, in_channels):
  v2 = _random_like(_shapes(resnet(f"resnet{depth}", stem=stem, width_multiplier=TINY), (2, 16, 16, 3)))
  target = _shapes(resnet3d(f"resnet{depth}_3d", stem=stem, width_multiplier=TINY),
                   (2, 16, 16, 16, in_channels or 3))
  v3 = inflate.inflate_variables(v2, method=method, in_channels=in_channels, target=target)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), v3) == jax.tree.map(lambda x: (x.shape, x.dtype), target)
  # BatchNorm parameters and statistics are copied.
  np.testing.assert_array_equal(v3["params"]["stem_bn"]["scale"], v2["params"]["stem_bn"]["scale"])
  proj_bn = lambda v: v["batch_stats"]["stage2_block1"]["proj_bn"]["var"]
  np.testing.assert_array_equal(proj_bn(v3), proj_bn(v2))


def test_inflation_copies_heads_and_reports_mismatches():
  v2 = _random_like(_shapes(resnet("resnet18", stem="cifar", width_multiplier=TINY), (2, 8, 8, 3)))
  tree = {"params": {"backbone": v2["params"], "projector": {"dense1": {"kernel": jnp.ones((32, 16))}}},
          "batch_stats": {"backbone": v2["batch_stats"]}}
  v3 = inflate.inflate_variables(tree, method="acs")
  np.testing.assert_array_equal(v3["params"]["projector"]["dense1"]["kernel"], jnp.ones((32, 16)))
  assert v3["params"]["backbone"]["stem_conv"]["kernel"].shape == (3, 3, 3, 3, 4)
  with pytest.raises(ValueError, match="method='bogus'"):
    inflate.inflate_variables(v2, method="bogus")
  with pytest.raises(ValueError, match="in_channels=2 .*stem_conv/kernel with 3 input channels"):
    inflate.inflate_variables(v2, in_channels=2)
  wrong = _shapes(resnet3d("resnet18_3d", stem="imagenet", width_multiplier=TINY), (2, 16, 16, 16, 3))
  with pytest.raises(ValueError, match=r"params/stem_conv/kernel inflates to shape \(3, 3, 3, 3, 4\) but the "
                                       r"3D model has \(7, 7, 7, 3, 4\)"):
    inflate.inflate_variables(v2, target=wrong)
  with pytest.raises(ValueError, match="even kernel size 2"):
    inflate.inflate_kernel_acs(jnp.ones((2, 2, 1, 1)))


def _conv(x, kernel, strides, padding):
  """nn.Conv (as the ResNets use it) with the given kernel: 2D or 3D from the kernel's rank."""
  n = kernel.ndim - 2
  conv = nn.Conv(kernel.shape[-1], kernel.shape[:n], (strides,) * n, padding=padding, use_bias=False)
  return conv.apply({"params": {"kernel": kernel}}, x)


@functools.lru_cache(maxsize=None)
def _i3d_pair(padding):
  """(2D ResNet-18, 3D ResNet-18, 2D variables with random BatchNorm statistics, inflated 3D ones)."""
  m2 = resnet("resnet18", stem="cifar", width_multiplier=TINY, padding=padding)
  m3 = resnet3d("resnet18_3d", stem="cifar", width_multiplier=TINY, padding=padding)
  v2 = _random_like(_shapes(m2, (1, 8, 8, 3)), seed=3)
  return m2, m3, v2, inflate.inflate_variables(v2, method="i3d")


@pytest.mark.parametrize("padding", ["same", "torch"])
def test_i3d_reproduces_the_2d_network_on_repeated_slices(padding):
  m2, m3, v2, v3 = _i3d_pair(padding)
  image = jax.random.uniform(jax.random.key(0), (1, 8, 8, 3))
  depth = 144  # Deeper than the receptive field in depth (109 voxels): the centre never sees the ends.
  volume = jnp.broadcast_to(image[:, None], (1, depth, 8, 8, 3))
  _, stages2 = jax.jit(functools.partial(m2.apply, train=False, return_stages=True))(v2, image)
  _, stages3 = jax.jit(functools.partial(m3.apply, train=False, return_stages=True))(v3, volume)
  for s2, s3 in zip(stages2, stages3):
    assert s3.shape[2:] == s2.shape[1:]
    np.testing.assert_allclose(s3[:, s3.shape[1] // 2], s2, rtol=1e-4, atol=1e-5)
  # The ends do see the zero padding (so the centre comparison is not vacuous).
  assert not np.allclose(stages3[-1][:, 0], stages2[-1], rtol=1e-3, atol=1e-4)


def test_i3d_kernel_on_a_strided_7x7_stem():
  kernel = jax.random.normal(jax.random.key(0), (7, 7, 3, 5))
  image = jax.random.uniform(jax.random.key(1), (1, 12, 12, 3))
  volume = jnp.broadcast_to(image[:, None], (1, 12, 12, 12, 3))
  pad = [(3, 3)]
  out2 = _conv(image, kernel, 2, pad * 2)
  out3 = _conv(volume, inflate.inflate_kernel_i3d(kernel), 2, pad * 3)
  # Output depth j sees input slices 2j - 3 .. 2j + 3: all inside for j = 2, 3, 4.
  for j in (2, 3, 4):
    np.testing.assert_allclose(out3[:, j], out2, rtol=1e-5, atol=1e-5)


def _plane_conv(volume, kernel, plane_axes, strides, padding, centres):
  """The 2D conv of every slice of `volume` in the plane `plane_axes` (the kernel's axes in that order),
  at the slice positions `centres` along the remaining axis; returned as [B, D', H', W', Cout]."""
  other = ({0, 1, 2} - set(plane_axes)).pop()
  x = jnp.moveaxis(volume, (1 + other, 1 + plane_axes[0], 1 + plane_axes[1]), (1, 2, 3))
  b, n, p, q, c = x.shape
  y = _conv(x.reshape(b * n, p, q, c), kernel, strides, padding)
  y = y.reshape(b, n, *y.shape[1:])[:, np.asarray(centres)]
  return jnp.moveaxis(y, (1, 2, 3), (1 + other, 1 + plane_axes[0], 1 + plane_axes[1]))


def _centres(size, k, strides, padding):
  """Input positions at the centre of each output's window, for flax SAME or explicit (lo, hi) padding."""
  out = -(-size // strides) if padding == "SAME" else (size + sum(padding[0]) - k) // strides + 1
  lo = max((out - 1) * strides + k - size, 0) // 2 if padding == "SAME" else padding[0][0]
  return [j * strides - lo + k // 2 for j in range(out)]


@pytest.mark.parametrize("strides,padding", [(1, "SAME"), (2, "SAME"), (2, ((1, 1),) * 3)])
def test_acs_groups_are_2d_convs_in_their_planes(strides, padding):
  kernel = jax.random.normal(jax.random.key(0), (3, 3, 2, 7))  # Output groups of 3, 2, 2 channels.
  volume = jax.random.uniform(jax.random.key(1), (2, 6, 6, 6, 2))
  assert inflate.acs_split(7) == (3, 2, 2) and inflate.acs_split(64) == (22, 21, 21)
  out3 = _conv(volume, inflate.inflate_kernel_acs(kernel), strides, padding)
  pad2 = padding if padding == "SAME" else padding[:2]
  centres = _centres(6, 3, strides, padding)
  groups = {(1, 2): slice(0, 3), (0, 2): slice(3, 5), (0, 1): slice(5, 7)}  # Axial, coronal, sagittal.
  for plane, channels in groups.items():
    want = _plane_conv(volume, kernel[..., channels], plane, strides, pad2, centres)
    np.testing.assert_allclose(out3[..., channels], want, rtol=1e-5, atol=1e-5)


def test_acs_mask_keeps_the_slabs():
  v2 = _random_like(_shapes(resnet("resnet18", stem="cifar", width_multiplier=TINY), (2, 8, 8, 3)))
  v3 = inflate.inflate_variables(v2, method="acs")
  mask = inflate.acs_mask(v3["params"])
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(jnp.multiply, v3["params"], mask), v3["params"])
  conv1 = mask["stage1_block1"]["conv1"]["kernel"]  # 3x3x3: 9 of 27 taps per (in, out) pair.
  np.testing.assert_array_equal(conv1.sum(axis=(0, 1, 2)), np.full(conv1.shape[3:], 9.0))
  np.testing.assert_array_equal(mask["stage2_block1"]["proj_conv"]["kernel"], 1.0)  # 1x1x1.
  np.testing.assert_array_equal(mask["stem_bn"]["scale"], 1.0)


# --------------------------------------------------------------------------------------------------
# 3D U-Net.
# --------------------------------------------------------------------------------------------------


def _ball(size, channels=1):
  """A generated volume: a bright ball on a dark background, [1, size, size, size, channels]."""
  grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1) - (size - 1) / 2
  ball = (np.linalg.norm(grid, axis=-1) < size / 3).astype(np.float32)
  return np.repeat(ball[None, ..., None], channels, axis=-1)


def test_unet3d_shapes_and_backbone_tree():
  backbone = resnet3d("resnet18_3d", width_multiplier=TINY)
  model = UNet(backbone=backbone, num_classes=2)
  volume = _ball(16)
  v = _random_like(_shapes(model, volume.shape))
  # The backbone subtree is a plain ResNet3D's, so pretrained or inflated weights drop in.
  plain = _shapes(backbone, volume.shape)
  for coll in ("params", "batch_stats"):
    assert jax.tree.map(lambda x: x.shape, v[coll]["backbone"]) == jax.tree.map(lambda x: x.shape, plain[coll])
  assert v["params"]["up1_conv1"]["kernel"].shape == (3, 3, 3, 32 + 16, 16)
  logits = jax.jit(functools.partial(model.apply, train=False))(v, volume)
  assert logits.shape == (1, 16, 16, 16, 2) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  # ImageNet stem (input / 2 after the stem): a last full-resolution block; a non-cubic volume.
  deep = UNet(backbone=resnet3d("resnet50_3d", width_multiplier=TINY, stem="imagenet"))
  out = jax.eval_shape(lambda: deep.init_with_output(jax.random.key(0), jnp.zeros((2, 16, 32, 32, 1)),
                                                     train=False))
  assert out[0].shape == (2, 16, 32, 32, 1) and "up_full_conv1" in out[1]["params"]
  with pytest.raises(ValueError, match=r"UNet: input must be \[B, D, H, W, C\] for a ResNet3D backbone"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)


@pytest.mark.parametrize("kernel,strides,padding,bias", [
    ((3, 3, 3), (1, 1, 1), "SAME", False), ((3, 3, 3), (2, 2, 2), "SAME", True),
    ((3, 3, 3), (2, 2, 2), ((1, 1),) * 3, False), ((1, 1, 1), (2, 2, 2), "SAME", False),
    ((7, 5, 3), (2, 1, 2), ((3, 3), (2, 2), (1, 0)), True)])
def test_depth_unfold_conv_is_the_native_3d_conv(kernel, strides, padding, bias):
  # Odd and even sizes, anisotropic kernels and strides, explicit and SAME padding: the same parameters (names,
  # shapes, init values) and the same outputs and input / kernel gradients as nn.Conv.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 8, 7, 3)), jnp.float32)
  kw = dict(features=4, kernel_size=kernel, strides=strides, padding=padding, use_bias=bias)
  native, unfold = nn.Conv(**kw), DepthUnfoldConv(**kw)
  variables = native.init(jax.random.key(1), x)
  mine = unfold.init(jax.random.key(1), x)
  assert jax.tree.structure(mine) == jax.tree.structure(variables)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(variables)))
  if bias:
    variables = jax.tree.map(lambda v: v + 0.3, variables)
  np.testing.assert_allclose(unfold.apply(variables, x), native.apply(variables, x), atol=1e-5)
  grads = [jax.grad(lambda v, x, m=m: jnp.sum(jnp.sin(m.apply(v, x))), argnums=(0, 1))(variables, x)
           for m in (native, unfold)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, atol=1e-4)
  # The 2D convolution is the 2D ResNet's: on CPU a 1x1 kernel is a matmul and a strided one has its own gradient.
  jaxpr = str(jax.make_jaxpr(lambda v: unfold.apply(v, x))(variables))
  if kernel == (1, 1, 1):
    assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr
  elif strides[1:] != (1, 1):
    assert "custom_vjp_call" in jaxpr


def test_resnet3d_conv_paths_give_the_same_features():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 12, 13, 11, 1)), jnp.float32)
  a, b = (ResNet3D(depth=18, width_multiplier=0.125, conv3d=impl) for impl in ("native", "depth_unfold"))
  variables = a.init(jax.random.key(0), x, train=False)
  np.testing.assert_allclose(b.apply(variables, x, train=False), a.apply(variables, x, train=False), atol=1e-5)
  with pytest.raises(ValueError, match="conv3d 'fast' is not supported; valid: \\['auto', 'native', 'depth_unfold'\\]"):
    ResNet3D(conv3d="fast").init(jax.random.key(0), x, train=False)

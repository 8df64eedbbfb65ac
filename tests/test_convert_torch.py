"""torchvision / timm ResNet weights -> our ResNet (models/convert_torch.py), checked against an independent
numpy implementation of torchvision's ResNet forward (eval mode), and against torchvision itself when installed."""
import sys
import types

import jax
import numpy as np
import pytest

from medssl_jax import models, objectives
from medssl_jax.models import convert_torch
from medssl_jax.models.resnet import ResNet
from medssl_jax import experiment

LAYERS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}


# ----------------------------------------------------------------------------------------------------
# Reference: torchvision's ResNet in numpy (NCHW, OIHW, float64), written from torchvision's resnet.py.

def torchvision_state_dict(depth, seed=0):
  """Random weights under torchvision's names and shapes (with fc and num_batches_tracked)."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(name, o, i, k):
    sd[f"{name}.weight"] = rng.normal(0.0, np.sqrt(2.0 / (i * k * k)), (o, i, k, k)).astype(np.float32)

  def bn(name, c):
    sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{name}.bias"] = rng.normal(0.0, 0.1, c).astype(np.float32)
    sd[f"{name}.running_mean"] = rng.normal(0.0, 0.1, c).astype(np.float32)
    sd[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

  conv("conv1", 64, 3, 7)
  bn("bn1", 64)
  inplanes, expansion = 64, (4 if depth >= 50 else 1)
  for li, n in enumerate(LAYERS[depth]):
    planes = 64 * 2**li
    for b in range(n):
      stride = 2 if li > 0 and b == 0 else 1
      p = f"layer{li + 1}.{b}"
      if expansion == 4:
        conv(f"{p}.conv1", planes, inplanes, 1), bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
        conv(f"{p}.conv3", planes * 4, planes, 1), bn(f"{p}.bn3", planes * 4)
      else:
        conv(f"{p}.conv1", planes, inplanes, 3), bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
      if stride != 1 or inplanes != planes * expansion:
        conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
        bn(f"{p}.downsample.1", planes * expansion)
      inplanes = planes * expansion
  sd["fc.weight"] = rng.normal(0.0, 0.01, (1000, inplanes)).astype(np.float32)
  sd["fc.bias"] = np.zeros(1000, np.float32)
  return sd


def np_conv(x, w, stride, pad):
  """torch.nn.functional.conv2d (cross-correlation, symmetric zero padding) by im2col."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  n, c, h, wd = x.shape
  o, i, kh, kw = w.shape
  oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
  cols = np.empty((n, c, kh, kw, oh, ow))
  for a in range(kh):
    for b in range(kw):
      cols[:, :, a, b] = x[:, :, a:a + stride * (oh - 1) + 1:stride, b:b + stride * (ow - 1) + 1:stride]
  return np.tensordot(cols, w.astype(np.float64), axes=([1, 2, 3], [1, 2, 3])).transpose(0, 3, 1, 2)


def np_bn(x, sd, name, eps=1e-5):
  g = lambda k: sd[f"{name}.{k}"].astype(np.float64)[None, :, None, None]
  return (x - g("running_mean")) / np.sqrt(g("running_var") + eps) * g("weight") + g("bias")


def np_maxpool(x):
  """3x3, stride 2, padding 1 (padding never wins the max)."""
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  oh, ow = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
  return np.max([x[:, :, a:a + 2 * (oh - 1) + 1:2, b:b + 2 * (ow - 1) + 1:2] for a in range(3) for b in range(3)], 0)


def np_resnet_features(sd, x, depth):
  """Global-average-pooled features of torchvision's ResNet (eval mode) for x [N, 3, H, W]."""
  relu = lambda t: np.maximum(t, 0.0)
  y = np_maxpool(relu(np_bn(np_conv(x, sd["conv1.weight"], 2, 3), sd, "bn1")))
  for li, n in enumerate(LAYERS[depth]):
    for b in range(n):
      p, stride = f"layer{li + 1}.{b}", (2 if li > 0 and b == 0 else 1)
      if depth >= 50:  # Bottleneck v1.5: the stride sits on the 3x3 conv.
        out = relu(np_bn(np_conv(y, sd[f"{p}.conv1.weight"], 1, 0), sd, f"{p}.bn1"))
        out = relu(np_bn(np_conv(out, sd[f"{p}.conv2.weight"], stride, 1), sd, f"{p}.bn2"))
        out = np_bn(np_conv(out, sd[f"{p}.conv3.weight"], 1, 0), sd, f"{p}.bn3")
      else:
        out = relu(np_bn(np_conv(y, sd[f"{p}.conv1.weight"], stride, 1), sd, f"{p}.bn1"))
        out = np_bn(np_conv(out, sd[f"{p}.conv2.weight"], 1, 1), sd, f"{p}.bn2")
      if f"{p}.downsample.0.weight" in sd:
        y = np_bn(np_conv(y, sd[f"{p}.downsample.0.weight"], stride, 0), sd, f"{p}.downsample.1")
      y = relu(out + y)
  return y.mean(axis=(2, 3))


@pytest.fixture(scope="module")
def sd18():
  return torchvision_state_dict(18)


def ours(variables, x_nchw, depth, padding):
  model = ResNet(depth=depth, stem="imagenet", padding=padding)
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x_nchw.transpose(0, 2, 3, 1)))


def rel_err(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [18, 50])
def test_converted_resnet_matches_numpy_torchvision(depth, sd18, capsys):
  sd = sd18 if depth == 18 else torchvision_state_dict(50, seed=1)
  x = np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(np.float32)
  want = np_resnet_features(sd, x.astype(np.float64), depth)
  variables = convert_torch.resnet_variables_from_torch(sd, depth=depth)
  assert "fc.weight" in capsys.readouterr().out  # The ignored classifier is reported.
  got = ours(variables, x, depth, "torch")
  assert got.shape == (2, 512 if depth == 18 else 2048)
  assert rel_err(got, want) < 1e-4, rel_err(got, want)
  # Default "same" padding keeps its parameters but pads stride-2 3x3 convs (0, 1): different features.
  assert rel_err(ours(variables, x, depth, "same"), want) > 1e-2


def test_npz_and_safetensors_round_trip(sd18, tmp_path):
  variables = convert_torch.resnet_variables_from_torch(sd18, depth=18, verbose=False)
  written = convert_torch.export_npz(variables, str(tmp_path / "r18.npz"))
  backbone = {k: v for k, v in sd18.items() if not k.startswith("fc.")}
  assert sorted(written) == sorted(backbone)
  loaded = convert_torch.load_state_dict(str(tmp_path / "r18.npz"))
  for k, v in backbone.items():  # num_batches_tracked is written as 0 (it is not a weight).
    np.testing.assert_array_equal(loaded[k], 0 if k.endswith("num_batches_tracked") else v, err_msg=k)
  # An SSLModel's tree exports its backbone.
  nested = {"params": {"backbone": variables["params"], "projector": {"w": np.ones(3)}},
            "batch_stats": {"backbone": variables["batch_stats"]}}
  again = convert_torch.export_npz(nested, str(tmp_path / "nested.npz"))
  assert all(np.array_equal(again[k], written[k]) for k in written)

  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v) for k, v in sd18.items()}, str(tmp_path / "r18.safetensors"))
  back = convert_torch.resnet_variables_from_torch(
      convert_torch.load_state_dict(str(tmp_path / "r18.safetensors")), depth=18, verbose=False)
  jax.tree.map(np.testing.assert_array_equal, back, variables)
  assert convert_torch.guess_depth(loaded) == 18


def test_pth_through_torch_wrapped_and_prefixed(sd18, tmp_path, monkeypatch):
  path = tmp_path / "ckpt.pth"
  path.write_bytes(b"stub")
  wrapped = {"epoch": 90, "state_dict": {f"module.{k}": v for k, v in sd18.items()}}
  seen = {}

  def load(p, *, map_location, weights_only):
    seen.update(path=p, map_location=map_location, weights_only=weights_only)
    return wrapped
  monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=load))
  sd = convert_torch.load_state_dict(str(path))
  assert seen == {"path": str(path), "map_location": "cpu", "weights_only": True}
  assert sorted(sd) == sorted(sd18)
  np.testing.assert_array_equal(sd["layer2.0.downsample.0.weight"], sd18["layer2.0.downsample.0.weight"])
  # A checkpoint wrapping under 'model' (e.g. DeiT / timm training scripts).
  wrapped = {"model": sd18, "optimizer": {}}
  assert sorted(convert_torch.load_state_dict(str(path))) == sorted(sd18)
  # Without torch: a clear error with the conversion snippet.
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"(?s)pip install torch.*np\.savez\('.*ckpt\.npz'"):
    convert_torch.load_state_dict(str(path))


def test_errors(sd18, tmp_path):
  bad = dict(sd18)
  del bad["layer3.1.bn2.running_var"]
  with pytest.raises(ValueError, match=r"missing 1 key\(s\): \['layer3.1.bn2.running_var'\]"):
    convert_torch.resnet_variables_from_torch(bad, depth=18)
  bad = dict(sd18, **{"layer2.0.conv1.weight": np.zeros((128, 64, 1, 1), np.float32)})
  with pytest.raises(ValueError, match=r"layer2.0.conv1.weight: expected \(128, 64, 3, 3\), found \(128, 64, 1, 1\)"):
    convert_torch.resnet_variables_from_torch(bad, depth=18)
  with pytest.raises(ValueError, match=r"depth=19 is not a supported ResNet depth; valid: \[18, 34, 50, 101\]"):
    convert_torch.resnet_variables_from_torch(sd18, depth=19)
  with pytest.raises(ValueError, match=r"ResNet-50 \(.*looks like a ResNet-18\).*missing 165 key.*wrong shape"):
    convert_torch.resnet_variables_from_torch(sd18, depth=50)
  with pytest.raises(ValueError, match=r"unexpected key\(s\): \['head.weight'\]"):
    convert_torch.resnet_variables_from_torch(dict(sd18, **{"head.weight": np.zeros(3)}), depth=18)
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    convert_torch.load_state_dict(str(tmp_path / "nope.npz"))
  (tmp_path / "w.ckpt").write_bytes(b"")
  with pytest.raises(ValueError, match=r"unknown file type '.ckpt'; expected one of \['.safetensors', '.npz'"):
    convert_torch.load_state_dict(str(tmp_path / "w.ckpt"))


def small_config(path, **model):
  c = experiment.default_config()
  c.model.init_checkpoint = path
  c.model.projector_hidden_dims = (16,)
  c.model.projector_dim = 8
  for k, v in model.items():
    c.model[k] = v
  return c


@pytest.mark.parametrize("key,value,match", [
    ("stem", "cifar", "stem='cifar'"),
    ("width_multiplier", 0.5, "width_multiplier=0.5"),
    ("encoder", "vit_tiny", "encoder='vit_tiny'"),
    ("init_checkpoint", "", "needs config.model.init_checkpoint"),
])
def test_init_backbone_rejects_other_encoders(key, value, match):
  c = small_config("x.npz", **{key: value})
  with pytest.raises(ValueError, match=match):
    convert_torch.init_backbone(c, {"params": {}})


def test_conv_init_and_padding_from_the_config():
  """model.conv_init="torch_default" draws PyTorch's nn.Conv2d default (uniform, variance 1 / (3 fan-in))."""
  backbone = models.build_backbone(small_config("", conv_init="torch_default", stem="cifar", padding="same"))
  assert (backbone.conv_init, backbone.padding) == ("torch_default", "same")
  params = jax.jit(lambda k: backbone.init(k, np.zeros((1, 28, 28, 3), np.float32), train=False))(jax.random.key(0))
  kernel = np.asarray(params["params"]["stage3_block1"]["conv2"]["kernel"])  # 3x3x256x256: fan-in 2304.
  bound = 1 / np.sqrt(3 * 3 * kernel.shape[2])
  assert np.abs(kernel).max() <= bound and np.std(kernel) == pytest.approx(bound / np.sqrt(3), rel=0.01)
  for key, value in (("conv_init", "xavier"), ("padding", "valid")):
    with pytest.raises(ValueError, match=f"config.model.{key}={value!r} is not known"):
      models.build_backbone(small_config("", **{key: value}))


def test_init_backbone_replaces_backbone_only(sd18, tmp_path):
  path = str(tmp_path / "in1k.npz")
  np.savez(path, **sd18)
  c = small_config(path)
  model = objectives.build_model(c)
  assert model.backbone.padding == "torch"
  assert models.build_backbone(small_config("")).padding == "same"
  assert models.build_backbone(small_config("", padding="torch")).padding == "torch"
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  out = convert_torch.init_backbone(c, variables)
  want = convert_torch.resnet_variables_from_torch(sd18, depth=18, verbose=False)
  jax.tree.map(np.testing.assert_array_equal, {k: out[k]["backbone"] for k in want}, want)
  assert out["params"]["projector"] is variables["params"]["projector"]
  assert out["batch_stats"]["projector"] is variables["batch_stats"]["projector"]
  assert variables["params"]["backbone"]["stem_conv"]["kernel"].shape == (7, 7, 3, 64)  # Input left as it was.
  assert not np.array_equal(variables["params"]["backbone"]["stem_conv"]["kernel"],
                            out["params"]["backbone"]["stem_conv"]["kernel"])
  # A bare ResNet's tree.
  bare = {k: variables[k]["backbone"] for k in ("params", "batch_stats")}
  jax.tree.map(np.testing.assert_array_equal, convert_torch.init_backbone(c, bare), want)
  # A ResNet-50 config on ResNet-18 weights.
  with pytest.raises(ValueError, match="ResNet-50.*looks like a ResNet-18"):
    convert_torch.init_backbone(small_config(path, encoder="resnet50"), variables)


def test_against_real_torchvision(tmp_path):
  torch = pytest.importorskip("torch", reason="torch is not installed (too large for this repo's CI); the numpy "
                              "reference of torchvision's forward above covers the same computation")
  torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
  torch.manual_seed(0)
  net = torchvision.models.resnet18(weights=None)
  for m in net.modules():  # Non-trivial running statistics, so BN conversion is exercised.
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5), m.weight.data.uniform_(0.5, 1.5)
  net.fc = torch.nn.Identity()
  net.eval()
  x = np.random.default_rng(3).normal(size=(2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x)).numpy()
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  variables = convert_torch.resnet_variables_from_torch(sd, depth=18, verbose=False)
  assert rel_err(ours(variables, x, 18, "torch"), want) < 1e-4
  written = convert_torch.export_npz(variables, str(tmp_path / "back.npz"))
  fresh = torchvision.models.resnet18(weights=None)
  result = fresh.load_state_dict({k: torch.from_numpy(v) for k, v in written.items()}, strict=False)
  assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys

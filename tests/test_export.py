"""`python -m medssl_jax.export`: a trained workdir's backbone to .safetensors / .npz under torchvision's names,
checked by re-import, by an independent numpy forward pass of the exported OIHW tensors, and (with torch)
by medssl_jax/torch_resnet.py."""
import json
import os

import jax
import numpy as np
import pytest

from medssl_jax import export as export_lib
from medssl_jax.config import load as load_config
from medssl_jax.data import pipeline
from medssl_jax.models import convert_torch
from medssl_jax.models.resnet import STAGE_SIZES, ResNet
from medssl_jax.train import pretrain as pretrain_lib
from medssl_jax.protocols import encoders as protocol_encoders

SIZE = 28


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-step SimCLR pretraining of ResNet-18 x0.125 at 28 px: (config, workdir, backbone variables)."""
  root = tmp_path_factory.mktemp("export")
  config = load_config("demo_simclr", "quick")
  config.data.data_dir = str(root / "tfds")
  config.data.image_size = SIZE
  for view in config.augment.views:
    view.crop_size = SIZE
  config.train.num_steps = 2
  config.train.checkpoint_every = 2
  builder = pipeline.get_builder("synthetic_fundus", data_dir=str(root / "tfds"), config="small")
  workdir = str(root / "run")
  pretrain_lib.pretrain(config, workdir, builder=builder)
  _, variables = protocol_encoders.load_pretrained(config, workdir)  # The evaluation path, not the export's restore.
  backbone = {col: jax.tree.map(np.asarray, variables[col]["backbone"]) for col in ("params", "batch_stats")}
  return config, workdir, backbone


def _torchvision_keys(depth):
  """torchvision's backbone names of a ResNet-`depth`, written out from its layout (no fc)."""
  bn = lambda p: [f"{p}.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
  keys = ["conv1.weight", *bn("bn1")]
  convs = 3 if depth >= 50 else 2
  for layer, blocks in enumerate(STAGE_SIZES[depth], start=1):
    for i in range(blocks):
      for c in range(1, convs + 1):
        keys += [f"layer{layer}.{i}.conv{c}.weight", *bn(f"layer{layer}.{i}.bn{c}")]
      if i == 0 and (layer > 1 or depth >= 50):
        keys += [f"layer{layer}.{i}.downsample.0.weight", *bn(f"layer{layer}.{i}.downsample.1")]
  return sorted(keys)


def _read(path):
  """(tensors, raw string metadata) of an export, read without the module under test."""
  if path.endswith(".npz"):
    with np.load(path) as f:
      tensors = {k: f[k] for k in f.files}
    with open(path + ".json") as f:
      return tensors, json.load(f)
  from safetensors import safe_open
  with safe_open(path, framework="np") as f:
    return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


# --- an independent numpy ResNet on torchvision-named OIHW tensors (float64) ---

def _pads(size, kernel, stride, padding):
  if padding == "torch":
    return (kernel // 2, kernel // 2)
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)  # TF / flax SAME.
  return (total // 2, total - total // 2)


def _conv(x, w, stride, pads):
  """NCHW x OIHW cross-correlation by im2col + einsum; pads = ((top, bottom), (left, right))."""
  x = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
  o, i, kh, kw = w.shape
  h, wd = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
  cols = np.stack([x[:, :, a:a + stride * (h - 1) + 1:stride, b:b + stride * (wd - 1) + 1:stride]
                   for a in range(kh) for b in range(kw)], axis=2)
  return np.einsum("nikhw,oik->nohw", cols, w.reshape(o, i, kh * kw).astype(np.float64))


def _conv3(x, w, stride, padding):
  return _conv(x, w, stride, (_pads(x.shape[2], 3, stride, padding), _pads(x.shape[3], 3, stride, padding)))


def _bn(x, sd, p):
  c = lambda k: sd[f"{p}.{k}"].astype(np.float64)[None, :, None, None]
  return (x - c("running_mean")) / np.sqrt(c("running_var") + 1e-5) * c("weight") + c("bias")


def _maxpool(x):
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  h, w = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
  return np.max([x[:, :, a:a + 2 * (h - 1) + 1:2, b:b + 2 * (w - 1) + 1:2] for a in range(3) for b in range(3)],
                axis=0)


def numpy_resnet(sd, x, *, stem, padding):
  relu = lambda v: np.maximum(v, 0)
  x = x.astype(np.float64)
  if stem == "imagenet":
    x = _maxpool(relu(_bn(_conv(x, sd["conv1.weight"], 2, ((3, 3), (3, 3))), sd, "bn1")))
  else:
    x = relu(_bn(_conv3(x, sd["conv1.weight"], 1, padding), sd, "bn1"))
  bottleneck = "layer1.0.conv3.weight" in sd
  for layer in range(1, 5):
    i = 0
    while f"layer{layer}.{i}.conv1.weight" in sd:
      p, stride = f"layer{layer}.{i}", (2 if layer > 1 and i == 0 else 1)
      if bottleneck:
        y = relu(_bn(_conv(x, sd[f"{p}.conv1.weight"], 1, ((0, 0), (0, 0))), sd, f"{p}.bn1"))
        y = relu(_bn(_conv3(y, sd[f"{p}.conv2.weight"], stride, padding), sd, f"{p}.bn2"))
        y = _bn(_conv(y, sd[f"{p}.conv3.weight"], 1, ((0, 0), (0, 0))), sd, f"{p}.bn3")
      else:
        y = relu(_bn(_conv3(x, sd[f"{p}.conv1.weight"], stride, padding), sd, f"{p}.bn1"))
        y = _bn(_conv3(y, sd[f"{p}.conv2.weight"], 1, padding), sd, f"{p}.bn2")
      if f"{p}.downsample.0.weight" in sd:
        x = _bn(_conv(x, sd[f"{p}.downsample.0.weight"], stride, ((0, 0), (0, 0))), sd, f"{p}.downsample.1")
      x = relu(x + y)
      i += 1
  return x.mean(axis=(2, 3))


def _images(size, seed=0):
  return np.random.default_rng(seed).normal(size=(2, 3, size, size)).astype(np.float32)  # NCHW.


def _jax_features(backbone, x_nchw, *, depth, stem, padding):
  model = ResNet(depth=depth, stem=stem, width_multiplier=0.125, padding=padding)
  return np.asarray(model.apply(backbone, np.transpose(x_nchw, (0, 2, 3, 1)), train=False))


def _random_export(tmp_path, *, depth, stem, padding):
  """A random ResNet x0.125 with non-trivial BatchNorm statistics, exported; (path, backbone)."""
  model = ResNet(depth=depth, stem=stem, width_multiplier=0.125, padding=padding)
  variables = model.init(jax.random.key(depth), np.zeros((1, SIZE, SIZE, 3), np.float32), train=False)
  rng = np.random.default_rng(depth)
  tweak = {"mean": lambda v: rng.normal(0, 0.1, v.shape), "var": lambda v: rng.uniform(0.5, 2.0, v.shape),
           "scale": lambda v: rng.uniform(0.8, 1.2, v.shape), "bias": lambda v: rng.normal(0, 0.1, v.shape)}
  backbone = {col: jax.tree_util.tree_map_with_path(
      lambda p, v: np.asarray(tweak.get(p[-1].key, lambda v: v)(np.asarray(v)), np.float32), variables[col])
      for col in ("params", "batch_stats")}
  config = {"model": {"encoder": f"resnet{depth}", "width_multiplier": 0.125, "stem": stem,
                      "init_checkpoint": "x.npz" if padding == "torch" else ""},
            "data": {"channels": 3, "image_size": SIZE, "mean": [0.5] * 3, "std": [0.25] * 3}}
  path = str(tmp_path / f"r{depth}_{stem}_{padding}.safetensors")
  export_lib.write(export_lib.backbone_state_dict(backbone), export_lib.make_metadata(config, step=0), path)
  return path, backbone


def test_export_names_metadata_roundtrip_and_no_overwrite(trained, tmp_path, monkeypatch, capsys):
  config, workdir, backbone = trained
  st, npz = str(tmp_path / "b.safetensors"), str(tmp_path / "b.npz")
  export_lib.main([f"--workdir={workdir}", f"--out={st}", "--include_head"])
  assert "wrote" in capsys.readouterr().out
  summary = export_lib.export(workdir, npz, step=2)
  assert summary["num_params"] == 176_712 and summary["num_tensors"] == 120  # As pretraining reports it.
  with open(f"{workdir}/config.json") as f:
    saved_config = json.load(f)
  for path, head in ((st, True), (npz, False)):
    tensors, meta = _read(path)
    backbone_keys = sorted(k for k in tensors if not k.startswith("head."))
    assert backbone_keys == _torchvision_keys(18)
    assert sorted(k for k in tensors if k.startswith("head.")) == (sorted(
        ["head.projector.dense1.weight", "head.projector.out.weight", "head.projector.out.bias"]
        + [f"head.projector.bn1.{s}" for s in ("weight", "bias", "running_mean", "running_var")]) if head else [])
    assert tensors["conv1.weight"].shape == (8, 3, 7, 7) and tensors["layer2.0.conv1.weight"].shape == (16, 8, 3, 3)
    assert tensors["layer4.0.downsample.0.weight"].shape == (64, 32, 1, 1) and tensors["bn1.running_var"].shape == (8,)
    if head:  # Dense [in, out] -> Linear [out, in]: 64 features -> 64 hidden -> 32.
      assert tensors["head.projector.dense1.weight"].shape == (64, 64)
      assert tensors["head.projector.out.weight"].shape == (32, 64)
    np.testing.assert_array_equal(tensors["layer1.0.conv2.weight"],
                                  backbone["params"]["stage1_block1"]["conv2"]["kernel"].transpose(3, 2, 0, 1))
    assert {k: meta[k] for k in ("format", "encoder", "depth", "width_multiplier", "stem", "padding", "num_features",
                                  "in_channels", "image_size", "mean", "std", "step", "include_head")} == {
        "format": "medssl_jax.resnet/1", "encoder": "resnet18", "depth": "18", "width_multiplier": "0.125",
        "stem": "imagenet", "padding": "same", "num_features": "64", "in_channels": "3", "image_size": "28",
        "mean": "[0.5, 0.5, 0.5]", "std": "[0.5, 0.5, 0.5]", "step": "2", "include_head": json.dumps(head)}
    assert json.loads(meta["config"]) == saved_config and isinstance(json.loads(meta["provenance"]), dict)

    # Importing back with convert_torch's inverse gives the same bits (its shape table widened to x0.125).
    tiny = ResNet(depth=18, stem="imagenet", width_multiplier=0.125)
    shapes = jax.eval_shape(lambda: tiny.init(jax.random.key(0), np.zeros((1, SIZE, SIZE, 3)), train=False))
    monkeypatch.setattr(convert_torch, "_expected",
                        lambda depth: {col: dict(convert_torch._flat(t)) for col, t in shapes.items()})
    sd = {k: v for k, v in convert_torch.load_state_dict(path).items() if not k.startswith("head.")}
    back = convert_torch.resnet_variables_from_torch(sd, depth=18, verbose=False)
    jax.tree.map(np.testing.assert_array_equal, back, backbone)

  # Refuses to overwrite (the .npz and its sidecar), naming the file; the file is unchanged.
  before = open(st, "rb").read()
  with pytest.raises(FileExistsError, match="b.safetensors' already exists; refusing to overwrite"):
    export_lib.export(workdir, st)
  with pytest.raises(SystemExit):
    export_lib.main([f"--workdir={workdir}", f"--out={npz}"])
  assert "b.npz' already exists" in capsys.readouterr().err and open(st, "rb").read() == before
  (tmp_path / "c.npz.json").write_text("{}")
  with pytest.raises(FileExistsError, match="c.npz.json"):
    export_lib.export(workdir, str(tmp_path / "c.npz"))
  with pytest.raises(ValueError, match=r"--step=5: .* available: \[2\]"):
    export_lib.export(workdir, str(tmp_path / "d.npz"), step=5)
  with pytest.raises(ValueError, match="unknown file type '.pt'"):
    export_lib.export(workdir, str(tmp_path / "d.pt"))


def test_vit_is_refused_naming_the_encoder(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model": {"encoder": "vit_tiny"}, "data": {}}))
  with pytest.raises(ValueError, match="config.model.encoder='vit_tiny': exporting is not supported yet"):
    export_lib.export(str(tmp_path), str(tmp_path / "v.npz"))


def _cases(tmp_path, trained):
  """(path, backbone, depth, stem, padding): the trained export and random ones covering stems, paddings, depths."""
  _, workdir, backbone = trained
  path = str(tmp_path / "t.npz")
  export_lib.export(workdir, path)
  yield path, backbone, 18, "imagenet", "same"
  for depth, stem, padding in ((18, "cifar", "same"), (18, "imagenet", "torch"), (50, "cifar", "torch")):
    yield (*_random_export(tmp_path, depth=depth, stem=stem, padding=padding), depth, stem, padding)


def test_numpy_forward_of_export_matches_jax(trained, tmp_path):
  """No torch: the exported tensors, read by torchvision's names in OIHW, give the JAX features (28 and 29 px:
  even and odd inputs hit both SAME paddings of the stride-2 convs)."""
  for path, backbone, depth, stem, padding in _cases(tmp_path, trained):
    tensors, meta = _read(path)
    assert (meta["stem"], meta["padding"], meta["depth"]) == (stem, padding, str(depth))
    for size in (SIZE, SIZE + 1):
      x = _images(size)
      want = _jax_features(backbone, x, depth=depth, stem=stem, padding=padding)
      got = numpy_resnet(tensors, x, stem=stem, padding=padding)
      assert got.shape == (2, int(meta["num_features"]))
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{path} at {size} px")
    if padding == "same":  # The padding matters: torchvision's symmetric padding gives other features.
      other = numpy_resnet(tensors, _images(SIZE), stem=stem, padding="torch")
      assert np.abs(other - _jax_features(backbone, _images(SIZE), depth=depth, stem=stem, padding=padding)).max() > 1e-3


def test_torch_loader_matches_jax(trained, tmp_path):
  torch = pytest.importorskip("torch")
  from medssl_jax import torch_resnet
  for path, backbone, depth, stem, padding in _cases(tmp_path, trained):
    model, meta = torch_resnet.load_exported(path)
    assert (meta["depth"], meta["stem"], meta["padding"], model.num_features) == (depth, stem, padding,
                                                                                  meta["num_features"])
    for size in (SIZE, SIZE + 1):
      x = _images(size)
      with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
      want = _jax_features(backbone, x, depth=depth, stem=stem, padding=padding)
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{path} at {size} px")


def test_features_mode_writes_what_the_probe_sees(trained, capsys):
  """mode "features": the backbone features of a split in <workdir>/features/<split>.npz, equal to one unbatched
  forward pass of the checkpoint; a finished file is read back, not rewritten; bad splits fail first."""
  from medssl_jax import experiment
  from medssl_jax.augment import views as views_lib
  from medssl_jax.train.step import normalize

  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.mode = "features"
  config.features.splits = ("validation",)
  out = experiment.run(config, workdir)
  path = out["validation"]["path"]
  assert path == f"{workdir}/features/validation.npz" and out["validation"]["shape"] == (64, 64)
  with np.load(path) as f:
    feats, labels, ids = f["features"], f["label"], f["id"]
  data = pipeline.load_split_arrays(pipeline.get_builder("synthetic_fundus", data_dir=config.data.data_dir,
                                                         config="small"), split="validation", image_size=SIZE)
  model, variables = protocol_encoders.load_pretrained(config, workdir)
  x = normalize(views_lib.eval_view(data["image"], size=SIZE), tuple(config.data.mean), tuple(config.data.std))
  np.testing.assert_allclose(feats, np.asarray(model.apply(variables, x, method=model.embed)), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(labels, data["label"])
  np.testing.assert_array_equal(ids, data["id"])
  mtime = os.stat(path).st_mtime_ns
  capsys.readouterr()
  experiment.run(config, workdir)
  assert "already in" in capsys.readouterr().out and os.stat(path).st_mtime_ns == mtime
  config.features.splits = ("valdation",)
  with pytest.raises(ValueError, match="valdation"):
    experiment.run(config, workdir)
  config.features.splits = ("",)
  with pytest.raises(ValueError, match="config.features.splits must be a tuple of split names"):
    experiment.validate(config)

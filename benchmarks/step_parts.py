"""The SimCLR model step in parts, JAX against PyTorch at its best, each part timed as its own step in alternation.

Usage:
  python benchmarks/step_parts.py [--size=28] [--width=1.0] [--batch=128] [--encoder=resnet18] [--steps=5]

Parts, each a compiled JAX function (jitted, waited for) beside the same PyTorch code (channels_last,
torchvision's padding: torch_compare.py's 'best'), on the 2 x --batch images of one step:
  encoder forward             the ResNet in train mode (BatchNorm over the batch), features out;
  encoder forward + backward  the gradient of sum(features * r) with respect to every encoder parameter (PyTorch
                              also needs no gradient for the images);
  model step                  torch_compare.py's 'model' row: encoder, projector, NT-Xent, backward, AdamW;
  BatchNorm + ReLU            every BatchNorm of the ResNet alone (each distinct shape times its count), forward and
                              forward + backward (gradients for its input, scale and bias).
The encoder's backward is (forward + backward) - forward; the projector, loss and optimizer are the model step -
(forward + backward). benchmarks/conv_compare.py sums the convolutions the same way, so the two together say how
much of each part is convolution, BatchNorm, and the rest (ReLU, residual adds, pooling). Times in ms, the median
and the best of --steps rounds after a warm-up each.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import bench_lib  # noqa: E402  (imports medssl_jax first: its XLA:CPU setting applies)

_SIZE = flags.DEFINE_integer("size", 28, "Input size (px); CIFAR stem below 64 px, ImageNet stem from 64 px.")
_WIDTH = flags.DEFINE_float("width", 1.0, "ResNet width multiplier.")
_BATCH = flags.DEFINE_integer("batch", 128, "Records per step (2 views each: 2x this many images per part).")
_ENCODER = flags.DEFINE_enum("encoder", "resnet18", ["resnet18", "resnet50"], "Encoder on both sides.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed rounds.")


def norm_shapes(encoder, size, width, stem):
  """{(side, channels): count} of the ResNet's BatchNorm inputs (train mode), in the layout of models/resnet.py."""
  w = lambda c: max(1, int(c * width))
  bottleneck = encoder == "resnet50"
  counts = {}
  add = lambda side, c, n=1: counts.__setitem__((side, c), counts.get((side, c), 0) + n)
  side = size if stem == "cifar" else -(-size // 2)
  add(side, w(64))                                    # stem_bn
  side = side if stem == "cifar" else -(-side // 2)   # The ImageNet stem's max-pool.
  blocks = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}[encoder]
  c_in = w(64)
  for i, n in enumerate(blocks):
    f = w(64 * 2 ** i)
    for j in range(n):
      stride = 2 if i > 0 and j == 0 else 1
      out_side = -(-side // stride)
      if bottleneck:
        add(side, f)                                  # bn1 (after the 1x1, before the stride)
        add(out_side, f)                              # bn2
        add(out_side, 4 * f)                          # bn3
        if j == 0:
          add(out_side, 4 * f)                        # proj_bn
        c_in = 4 * f
      else:
        add(out_side, f, 2)                           # bn1, bn2
        if c_in != f or stride != 1:
          add(out_side, f)                            # proj_bn
        c_in = f
      side = out_side
  return counts


def jax_parts(config, images, norms):
  """{part: run()} on the JAX side."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from medssl_jax import models
  backbone = models.build_backbone(config)
  x = jnp.asarray(images)
  variables = backbone.init(jax.random.key(0), x[:2], train=True)
  params, stats = variables["params"], variables["batch_stats"]
  r = jax.random.normal(jax.random.key(3), (x.shape[0], backbone.num_features))

  def features(params, stats, x):
    return backbone.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])

  fwd = jax.jit(lambda p, s, x: features(p, s, x)[0])
  grad = jax.jit(jax.grad(lambda p, s, x: jnp.sum(features(p, s, x)[0] * r)))
  runs = {"encoder forward": lambda: fwd(params, stats, x).block_until_ready(),
          "encoder forward + backward": lambda: jax.block_until_ready(grad(params, stats, x))}
  runs["model step"] = bench_lib.model_only_step(config)[0]
  bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  bn_fwd, bn_grad, inputs = [], [], []
  for (side, c), count in norms.items():
    h = jax.random.normal(jax.random.key(side * 1000 + c), (x.shape[0], side, side, c))
    v = bn.init(jax.random.key(0), h)
    rr = jax.random.normal(jax.random.key(4), h.shape)
    f = lambda p, h, v=v: nn.relu(bn.apply({"params": p, "batch_stats": v["batch_stats"]}, h, mutable=["batch_stats"])[0])
    inputs.append((v["params"], h, count))
    bn_fwd.append(jax.jit(f))
    bn_grad.append(jax.jit(jax.grad(lambda p, h, rr=rr, f=f: jnp.sum(f(p, h) * rr), argnums=(0, 1))))

  def all_norms(fns):
    def run():
      for fn, (p, h, count) in zip(fns, inputs):
        for _ in range(count):
          jax.block_until_ready(fn(p, h))
    return run
  runs["BatchNorm + ReLU forward"] = all_norms(bn_fwd)
  runs["BatchNorm + ReLU forward + backward"] = all_norms(bn_grad)
  return runs


def torch_parts(config, images, norms):
  """{part: run()} on the PyTorch side (channels_last, torchvision's padding)."""
  import torch
  from torch import nn

  from medssl_jax.torch_resnet import ResNet
  from torch_lib import TORCH_VARIANTS, torch_step
  padding, channels_last, _ = TORCH_VARIANTS["best"]
  torch.manual_seed(0)
  depth = int(config.model.encoder[len("resnet"):])
  net = ResNet(depth=depth, width_multiplier=config.model.width_multiplier, stem=config.model.stem,
               padding=padding).train().to(memory_format=torch.channels_last)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  r = torch.randn(x.shape[0], net.num_features)

  def fwd():
    net(x)

  def fwd_bwd():
    net.zero_grad(set_to_none=True)
    (net(x) * r).sum().backward()
  runs = {"encoder forward": fwd, "encoder forward + backward": fwd_bwd,
          "model step": torch_step(depth=depth, width=config.model.width_multiplier, stem=config.model.stem,
                                   size=config.data.image_size, batch=config.train.batch_size,
                                   optimizer="adamw", full=False, channels_last=channels_last, padding=padding)}
  layers = []
  for (side, c), count in norms.items():
    bn = nn.BatchNorm2d(c, eps=1e-5, momentum=0.1).train()
    h = torch.randn(x.shape[0], c, side, side).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    layers.append((bn, h, torch.randn_like(h), count))

  def norms_fwd():
    with torch.no_grad():
      for bn, h, _, count in layers:
        for _ in range(count):
          torch.relu(bn(h))

  def norms_fwd_bwd():
    for bn, h, rr, count in layers:
      for _ in range(count):
        bn.zero_grad(set_to_none=True)
        h.grad = None
        (torch.relu(bn(h)) * rr).sum().backward()
  runs["BatchNorm + ReLU forward"] = norms_fwd
  runs["BatchNorm + ReLU forward + backward"] = norms_fwd_bwd
  return runs


def main(argv):
  del argv
  import numpy as np
  import torch
  torch.set_num_threads(os.cpu_count())
  print(bench_lib.device_line())
  config = bench_lib.bench_config(size=_SIZE.value, width=_WIDTH.value, batch=_BATCH.value, encoder=_ENCODER.value)
  stem = config.model.stem
  images = np.random.default_rng(0).normal(size=(2 * _BATCH.value, _SIZE.value, _SIZE.value, 3)).astype(np.float32)
  norms = norm_shapes(_ENCODER.value, _SIZE.value, _WIDTH.value, stem)
  print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; {_ENCODER.value} x{_WIDTH.value} ({stem} stem) "
        f"at {_SIZE.value} px, {2 * _BATCH.value} images; {sum(norms.values())} BatchNorms in "
        f"{len(norms)} shapes; median / best of {_STEPS.value} alternated rounds, ms")
  sides = {"JAX": jax_parts(config, images, norms), "PyTorch": torch_parts(config, images, norms)}
  stats = {}
  for part in sides["JAX"]:
    times = bench_lib.interleaved_times({side: runs[part] for side, runs in sides.items()}, steps=_STEPS.value)
    stats[part] = {side: (1e3 * statistics.median(t), 1e3 * min(t)) for side, t in times.items()}
    print(f"  {part}: JAX {stats[part]['JAX'][0]:.0f}, PyTorch {stats[part]['PyTorch'][0]:.0f}", flush=True)
  diff = lambda a, b: {side: tuple(x - y for x, y in zip(stats[a][side], stats[b][side])) for side in sides}
  derived = {"encoder backward (forward + backward - forward)": diff("encoder forward + backward", "encoder forward"),
             "projector + loss + optimizer (model step - encoder forward + backward)":
                 diff("model step", "encoder forward + backward"),
             "BatchNorm + ReLU backward (forward + backward - forward)":
                 diff("BatchNorm + ReLU forward + backward", "BatchNorm + ReLU forward")}
  print("\n| part | JAX ms | PyTorch best ms | JAX - PyTorch ms | PyTorch / JAX (medians / bests) |")
  print("|---|---|---|---|---|")
  for part, s in list(stats.items()) + list(derived.items()):
    (jm, jb), (tm, tb) = s["JAX"], s["PyTorch"]
    ratio = f"{tm / jm:.2f} / {tb / jb:.2f}" if jm > 0 and jb > 0 else "-"
    print(f"| {part} | {jm:.1f} | {tm:.1f} | {jm - tm:+.1f} | {ratio} |")


if __name__ == "__main__":
  app.run(main)

"""Each convolution of a ResNet-18, timed alone in JAX and in PyTorch: forward, input gradient, filter gradient.

Usage:
  python benchmarks/conv_compare.py [--size=28] [--width=1.0] [--images=128] [--steps=5] [--variants]

The shapes are those of ResNet-18 at `--size` px (CIFAR stem below 64 px, ImageNet stem from 64 px) and
`--width`, each once (the ResNet repeats most of them 2-4 times), batch `--images` (a SimCLR step with batch
B runs 2B images). JAX: the ResNet's convolution (`models/resnet.py`'s conv_general_dilated: XLA's convolution, or
im2col + one matmul for output maps of at most 4 pixels, or on CPU for strided convs subsampling + matmul (1x1) and
the phase input gradient; `--noresnet_conv`: XLA's everywhere), NHWC/HWIO, SAME padding, jitted, the gradients from
jax.vjp;
PyTorch: nn.Conv2d (channels_last unless --notorch_channels_last; torchvision's padding), the gradients from torch.autograd.grad minus the forward. Times in ms, best of
`--steps`; the last column is PyTorch / JAX of forward + input gradient + filter gradient (a train step
needs no input gradient for the stem). `--variants` adds the rewrites tried for the slowest ones: the filter gradient
as a sum over 8 / 16 slices of the batch, the stride-1 3x3 filter gradient as a forward conv with batch and channels
swapped or as one matmul per kernel tap, and the 7x7 / 2 stem as a 4x4 conv after space-to-depth.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import bench_lib  # noqa: E402  (imports medssl_jax first: its XLA:CPU setting applies)

_SIZE = flags.DEFINE_integer("size", 28, "Input size (px).")
_WIDTH = flags.DEFINE_float("width", 1.0, "ResNet width multiplier.")
_IMAGES = flags.DEFINE_integer("images", 128, "Images per convolution call.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per measurement (best kept).")
_CL = flags.DEFINE_bool("torch_channels_last", True, "PyTorch tensors and weights in channels_last (NHWC) memory "
                        "format, as PyTorch users run ResNets on CPU (--notorch_channels_last: NCHW).")
_RESNET_CONV = flags.DEFINE_bool("resnet_conv", True, "JAX side as the ResNet runs it (models/resnet.py's "
                                 "conv_general_dilated); --noresnet_conv times XLA's convolution everywhere.")
_VARIANTS = flags.DEFINE_bool("variants", False, "Also time the rewrites tried (filter gradient chunked, swapped or per tap; space-to-depth stem).")


def resnet18_convs(size, width):
  """(name, input side, in channels, out channels, kernel, stride, count) of each distinct ResNet-18 convolution;
  count = how many times the network runs it (two BasicBlocks per stage)."""
  w = lambda c: max(1, int(c * width))
  convs = []
  if size < 64:
    convs.append(("stem 3x3", size, 3, w(64), 3, 1, 1))
    side = size
  else:
    convs.append(("stem 7x7/2", size, 3, w(64), 7, 2, 1))
    side = -(-size // 4)  # After the stride-2 conv and the stride-2 max-pool.
  c = w(64)
  convs.append(("stage1 3x3", side, c, c, 3, 1, 4))
  for stage in (2, 3, 4):
    out = w(64 * 2 ** (stage - 1))
    convs.append((f"stage{stage} 3x3/2", side, c, out, 3, 2, 1))
    convs.append((f"stage{stage} 1x1/2 proj", side, c, out, 1, 2, 1))
    side = -(-side // 2)
    convs.append((f"stage{stage} 3x3", side, out, out, 3, 1, 3))
    c = out
  return convs


def best_ms(fn, steps):
  """Best of `steps` timed calls after one warm-up call, in ms."""
  return 1e3 * min(bench_lib.interleaved_times({"call": fn}, steps=steps)["call"])


def jax_times(n, side, cin, cout, k, stride, steps):
  import jax
  import jax.numpy as jnp
  from jax import lax
  x = jax.random.normal(jax.random.key(0), (n, side, side, cin))
  w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.05
  from medssl_jax.models.resnet import conv_general_dilated as resnet_conv
  conv_fn = resnet_conv if _RESNET_CONV.value else lax.conv_general_dilated
  conv = lambda x, w: conv_fn(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  dy = jnp.ones_like(conv(x, w))
  fwd = jax.jit(conv)
  dx = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
  dw = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
  return (best_ms(lambda: fwd(x, w).block_until_ready(), steps), best_ms(lambda: dx(x, w, dy).block_until_ready(), steps),
          best_ms(lambda: dw(x, w, dy).block_until_ready(), steps)), (x, w, dy, conv)


def torch_times(n, side, cin, cout, k, stride, steps, channels_last):
  import torch
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  x = torch.randn(n, cin, side, side).to(memory_format=fmt).requires_grad_(True)
  conv = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False).to(memory_format=fmt)
  with torch.no_grad():
    dy = torch.ones_like(conv(x)).to(memory_format=fmt)
  fwd = best_ms(lambda: conv(x), steps)
  dx = best_ms(lambda: torch.autograd.grad(conv(x), [x], dy), steps) - fwd
  dw = best_ms(lambda: torch.autograd.grad(conv(x), [conv.weight], dy), steps) - fwd
  return fwd, dx, dw


def variant_times(name, arrays, k, stride, steps):
  """The rewrites tried: chunked filter gradient (any conv), the stride-1 3x3 filter gradient as a swapped conv or
  per-tap matmuls, space-to-depth (the 7x7/2 stem)."""
  import jax
  import jax.numpy as jnp
  from jax import lax
  x, w, dy, conv = arrays
  rows = []
  wgrad = lambda xs, ds: jax.vjp(lambda w: conv(xs, w), w)[1](ds)[0]
  for chunks in (8, 16):
    if x.shape[0] % chunks:
      continue
    s = x.shape[0] // chunks
    f = jax.jit(lambda x, dy, s=s, chunks=chunks: sum(wgrad(x[i * s:(i + 1) * s], dy[i * s:(i + 1) * s]) for i in range(chunks)))
    rows.append((f"{name}: filter gradient over {chunks} batch slices", best_ms(lambda f=f: f(x, dy).block_until_ready(), steps)))
  if stride == 1 and k == 3:
    # The stride-1 filter gradient two other ways: a forward conv with batch and channels swapped (images as the
    # features, the output gradient as the kernel), and one [C_in, N*H*W] x [N*H*W, C_out] matmul per kernel tap.
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    side, cin, cout = x.shape[1], x.shape[3], dy.shape[3]

    def swapped(xp, dy):
      out = lax.conv_general_dilated(jnp.transpose(xp, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), (1, 1),
                                     "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return jnp.transpose(out, (1, 2, 0, 3))

    def per_tap(xp, dy):
      d = dy.reshape(-1, cout)
      return jnp.stack([jnp.stack([jnp.dot(xp[:, a:a + side, b:b + side].reshape(-1, cin).T, d) for b in range(3)])
                        for a in range(3)])
    for label, f in (("batch and channels swapped", swapped), ("one matmul per kernel tap", per_tap)):
      f = jax.jit(f)
      rows.append((f"{name}: filter gradient as {label}", best_ms(lambda f=f: f(xp, dy).block_until_ready(), steps)))
  if k == 7 and stride == 2 and x.shape[1] % 2 == 0:
    def s2d(x, w):  # pad 3 -> pairs of pixels into channels; the 7x7 kernel zero-padded to 8x8 -> 4x4 x 4C.
      n, h, wd, c = x.shape
      xp = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
      z = xp.reshape(n, (h + 6) // 2, 2, (wd + 6) // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, (h + 6) // 2, (wd + 6) // 2, 4 * c)
      kk = jnp.pad(w, ((0, 1), (0, 1), (0, 0), (0, 0))).reshape(4, 2, 4, 2, c, -1).transpose(0, 2, 1, 3, 4, 5).reshape(4, 4, 4 * c, -1)
      return lax.conv_general_dilated(z, kk, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    plain = lambda x, w: lax.conv_general_dilated(x, w, (2, 2), [(3, 3), (3, 3)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
    for label, f in (("7x7/2 conv", plain), ("space-to-depth 4x4 conv", s2d)):
      fw = jax.jit(lambda x, w, dy, f=f: jax.vjp(lambda w: f(x, w), w)[1](dy)[0])
      dy2 = jnp.ones(jax.eval_shape(f, x, w).shape)
      rows.append((f"{name}: {label}, forward + filter gradient", best_ms(lambda fw=fw: fw(x, w, dy2).block_until_ready(), steps)))
  return rows


def main(argv):
  del argv
  print(bench_lib.device_line())
  import torch
  torch.set_num_threads(os.cpu_count())
  print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; ResNet-18 x{_WIDTH.value} at {_SIZE.value} px, "
        f"{_IMAGES.value} images per call, best of {_STEPS.value}, ms; PyTorch "
        f"{'channels_last' if _CL.value else 'NCHW'}, torchvision padding")
  print("| conv | in | JAX fwd / dx / dw | PyTorch fwd / dx / dw | PyTorch / JAX (fwd + dx + dw) |")
  print("|---|---|---|---|---|")
  extra = []
  total = {"JAX": [0.0, 0.0], "PyTorch": [0.0, 0.0]}  # [forward, backward] over one step.
  for name, side, cin, cout, k, stride, count in resnet18_convs(_SIZE.value, _WIDTH.value):
    (jf, jx, jw), arrays = jax_times(_IMAGES.value, side, cin, cout, k, stride, _STEPS.value)
    tf, tx, tw = torch_times(_IMAGES.value, side, cin, cout, k, stride, _STEPS.value, _CL.value)
    print(f"| {name} | {side}x{side}x{cin} -> {cout} | {jf:.1f} / {jx:.1f} / {jw:.1f} | {tf:.1f} / {tx:.1f} / {tw:.1f} "
          f"| {(tf + tx + tw) / (jf + jx + jw):.2f} |", flush=True)
    needs_dx = not name.startswith("stem")  # Training needs no gradient with respect to the images.
    for side, (f, x, w) in (("JAX", (jf, jx, jw)), ("PyTorch", (tf, tx, tw))):
      total[side][0] += count * f
      total[side][1] += count * (w + needs_dx * x)
    if _VARIANTS.value:
      extra += variant_times(name, arrays, k, stride, _STEPS.value)
  j, t = total["JAX"], total["PyTorch"]
  print(f"\nAll of ResNet-18's convolutions in one training step on {_IMAGES.value} images (each distinct one times its "
        f"count, the stem without its input gradient): JAX {sum(j):.0f} ms (forward {j[0]:.0f}, backward {j[1]:.0f}), "
        f"PyTorch {sum(t):.0f} ms (forward {t[0]:.0f}, backward {t[1]:.0f}), PyTorch / JAX {sum(t) / sum(j):.2f}")
  for label, ms in extra:
    print(f"{label}: {ms:.1f} ms")


if __name__ == "__main__":
  app.run(main)

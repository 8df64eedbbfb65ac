"""2D -> 3D weight inflation: variables of a 2D `ResNet` as variables of the matching `ResNet3D`.

Both networks have the same module and parameter names (`ResNet3D` is the same `ResNetBase` with three
spatial axes), so inflation maps leaf to leaf: every 4-D conv kernel [k, k, Cin, Cout] in "params"
becomes a 5-D kernel [k, k, k, Cin, Cout]; everything else (BatchNorm scales, biases and running
statistics, Dense layers of heads) is copied unchanged. Any variables tree holding such a backbone
works: a bare backbone's {"params", "batch_stats"}, an `SSLModel`'s, a `UNet`'s.

Methods:
  "i3d" (Carreira & Zisserman 2017): the k x k kernel repeated k times along depth and divided by k. On a
    volume whose slices are all the same image, each conv then computes exactly the 2D conv of that
    image wherever its depth window does not reach the zero padding, so the whole network reproduces
    the 2D network's activations on depth positions far enough from the volume's ends.
  "acs" (Yang et al. 2021, "Reinforcing 2D pretrained networks for 3D medical images"): each conv's
    output channels are split into three groups (sizes ceil-first, as ACSConv: 64 -> 22, 21, 21) that
    convolve with the 2D kernel in the axial (H, W), coronal (D, W) and sagittal (D, H) planes. Here
    that is expressed inside a plain 3D conv: the k x k kernel is placed as the central slab of a
    zero k x k x k kernel (axis D for axial, H for coronal, W for sagittal; the 2D kernel's first axis
    maps to D in the coronal and sagittal planes, as ACSConv). A slab kernel is exactly the 1 x k x k
    (k x 1 x k, k x k x 1) conv, centred where the network's k x k x k convs are centred, so no
    separate ACSConv module is needed and the 3D model is the same for both methods. The caveats:
    the 3D kernels hold k times ACS's parameters and cost a full 3D conv, and training moves the zeros
    unless the updates are masked with `acs_mask` (multiply gradients or parameters by it each step);
    unmasked, "acs" is an ACS-structured initialisation of a full 3D network.

1x1 kernels inflate to 1x1x1 ones identically in both methods.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import numpy as np

METHODS = ("i3d", "acs")


def acs_split(out_channels: int) -> tuple[int, int, int]:
  """(axial, coronal, sagittal) output-channel counts, remainders to the first groups (as ACSConv)."""
  base, extra = divmod(out_channels, 3)
  return tuple(base + (1 if i < extra else 0) for i in range(3))


def _check_kernel(kernel, where: str, method: str):
  if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
    raise ValueError(f"inflate: {where} has shape {kernel.shape}; expected a square 2D conv kernel "
                     f"[k, k, Cin, Cout]")
  if method == "acs" and kernel.shape[0] % 2 == 0:
    raise ValueError(f"inflate: {where} has an even kernel size {kernel.shape[0]}; ACS places it as the "
                     f"central slab of a k^3 kernel, which needs an odd k (use method='i3d')")


def inflate_kernel_i3d(kernel) -> np.ndarray:
  """[k, k, Cin, Cout] -> [k, k, k, Cin, Cout]: the kernel repeated along depth, divided by k."""
  kernel = np.asarray(kernel)
  _check_kernel(kernel, "the kernel", "i3d")
  k = kernel.shape[0]
  return (np.broadcast_to(kernel[None], (k, *kernel.shape)) / k).astype(kernel.dtype)


def inflate_kernel_acs(kernel) -> np.ndarray:
  """[k, k, Cin, Cout] -> [k, k, k, Cin, Cout]: ACS's axial / coronal / sagittal slabs (odd k)."""
  kernel = np.asarray(kernel)
  _check_kernel(kernel, "the kernel", "acs")
  k, _, cin, cout = kernel.shape
  a, c, _ = acs_split(cout)
  mid = k // 2
  axial, coronal, sagittal = slice(0, a), slice(a, a + c), slice(a + c, cout)
  out = np.zeros((k, k, k, cin, cout), kernel.dtype)
  out[mid, :, :, :, axial] = kernel[..., axial]         # (H, W) plane: 1 x k x k.
  out[:, mid, :, :, coronal] = kernel[..., coronal]     # (D, W) plane: k x 1 x k.
  out[:, :, mid, :, sagittal] = kernel[..., sagittal]   # (D, H) plane: k x k x 1.
  return out


_INFLATE = {"i3d": inflate_kernel_i3d, "acs": inflate_kernel_acs}


def _adapt_in_channels(kernel, in_channels: int, where: str):
  """A stem kernel for `in_channels` inputs: summing over RGB is exact for grey repeated as RGB."""
  have = kernel.shape[2]
  if in_channels == have:
    return kernel
  if in_channels == 1:
    return kernel.sum(axis=2, keepdims=True)
  raise ValueError(f"inflate: in_channels={in_channels} does not fit {where} with {have} input channels; "
                   f"use in_channels={have}, or 1 (the input channels' kernels are summed)")


def inflate_variables(variables: Mapping[str, Any], *, method: str = "i3d", in_channels: int | None = None,
                      target: Mapping[str, Any] | None = None) -> dict:
  """Variables of a 2D ResNet (or a model holding one) as variables of the matching 3D model.

  Args:
    variables: a 2D model's variables, e.g. {"params": ..., "batch_stats": ...}.
    method: "i3d" or "acs" (see the module docstring).
    in_channels: input channels of the 3D model; None keeps the 2D stem's. 1 with an RGB stem sums the
      stem kernel over its input channels (the 2D network applied to grey repeated as RGB).
    target: optionally the 3D model's variables (or `jax.eval_shape` of its init); the result must
      have exactly its tree and shapes, else a ValueError names the first difference.

  Returns:
    A new nested dict; inflated kernels are host (numpy) arrays, the other leaves are the inputs'.
  """
  if method not in METHODS:
    raise ValueError(f"inflate: method={method!r} is not known; valid choices: {list(METHODS)}")
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  out = {}
  for path, leaf in flat.items():
    where = "/".join(str(p) for p in path)
    if path[0] == "params" and path[-1] == "kernel" and getattr(leaf, "ndim", 0) == 4:
      kernel = np.asarray(leaf)
      _check_kernel(kernel, where, method)
      if in_channels is not None and len(path) >= 2 and path[-2] == "stem_conv":
        kernel = _adapt_in_channels(kernel, in_channels, where)
      leaf = _INFLATE[method](kernel)
    out[path] = leaf
  result = flax.traverse_util.unflatten_dict(out)
  if target is not None:
    _check_matches(result, target)
  return result


def _check_matches(result, target):
  got = flax.traverse_util.flatten_dict(result)
  want = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
  for path in sorted(set(got) | set(want), key=str):
    where = "/".join(str(p) for p in path)
    if path not in want:
      raise ValueError(f"inflate: {where} is in the inflated variables but not in the 3D model; inflate "
                       f"the 2D model of the same depth and stem")
    if path not in got:
      raise ValueError(f"inflate: the 3D model's {where} is missing from the inflated variables; inflate "
                       f"the 2D model of the same depth and stem")
    if tuple(got[path].shape) != tuple(want[path].shape):
      raise ValueError(f"inflate: {where} inflates to shape {tuple(got[path].shape)} but the 3D model has "
                       f"{tuple(want[path].shape)}; match depth, stem, width_multiplier and in_channels")


def acs_mask(params: Mapping[str, Any]) -> dict:
  """1/0 masks, like `params`, of the entries an ACS network may use: multiply gradients (or the
  parameters after each step) by it to keep `inflate_variables(method="acs")` weights ACS-shaped.

  5-D kernels get the ACS slab pattern of their output-channel split; every other leaf all ones.
  """
  def mask(path, leaf):
    if path[-1].key == "kernel" and leaf.ndim == 5 and leaf.shape[0] == leaf.shape[1] == leaf.shape[2]:
      k, _, _, cin, cout = leaf.shape
      return (inflate_kernel_acs(np.ones((k, k, cin, cout), leaf.dtype)) != 0).astype(leaf.dtype)
    return np.ones(leaf.shape, leaf.dtype)
  return jax.tree_util.tree_map_with_path(mask, flax.core.unfreeze(params))


__all__ = ["METHODS", "acs_mask", "acs_split", "inflate_kernel_acs", "inflate_kernel_i3d", "inflate_variables"]

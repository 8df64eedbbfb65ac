"""Deterministic synthetic organ-like shape volumes with a binary label (numpy only).

Each volume [S, S, S] is a binary shape (0 / 255 voxels, as MedMNIST's AdrenalMNIST3D and VesselMNIST3D
ship): an ellipsoid with random semi-axes, orientation and centre whose surface is made lumpy by a few
random low-frequency bumps. The label is carried by one local feature:

  solid:    the shape is filled
  cavity:   a small spherical cavity (radius 6-10% of the side) sits inside the shape, away from its surface

Shape, size, pose and lumpiness vary a lot and the cavity is small and hidden inside, so the volume's
occupancy says little about the label: a linear probe on a random 3D encoder is near chance, and an encoder
has to see inside the shape to do better. Classes alternate with the index (exactly balanced).
"""
from __future__ import annotations

import numpy as np

CLASS_NAMES = ('solid', 'cavity')


def _rotation(rng) -> np.ndarray:
  """A uniformly random 3x3 rotation (QR of a Gaussian matrix, signs fixed)."""
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  return q if np.linalg.det(q) > 0 else -q


def render_example(index: int, *, size: int = 28, seed: int = 0) -> tuple[np.ndarray, int]:
  """(volume uint8 [size, size, size] of 0 / 255, label) of example `index`: the same for the same
  (seed, index, size)."""
  rng = np.random.default_rng([seed, index])
  label = index % 2
  grid = (np.arange(size) + 0.5) / size - 0.5  # Voxel centres in [-0.5, 0.5).
  pts = np.stack(np.meshgrid(grid, grid, grid, indexing='ij'), -1)  # [S, S, S, 3]
  centre = rng.uniform(-0.12, 0.12, 3)
  axes = rng.uniform(0.2, 0.34, 3)
  local = (pts - centre) @ _rotation(rng)
  radius = np.sqrt(np.sum((local / axes) ** 2, -1))  # 1 on the ellipsoid's surface.
  for _ in range(4):  # Lumps: Gaussian bumps that push the surface out or in.
    where = rng.normal(size=3)
    where = where / np.linalg.norm(where) * axes
    width = rng.uniform(0.08, 0.16)
    radius = radius - rng.uniform(-0.25, 0.35) * np.exp(-np.sum((local - where) ** 2, -1) / (2 * width**2))
  shape = radius <= 1.0
  if label:
    cavity_r = rng.uniform(0.06, 0.10)
    # Inside the shape with room to spare: within the ellipsoid shrunk by the cavity and a margin.
    u = rng.normal(size=3)
    u = u / np.linalg.norm(u) * rng.uniform(0.0, 0.8)
    at = u * np.maximum(axes - cavity_r - 0.05, 0.0)
    shape &= np.sum((local - at) ** 2, -1) > cavity_r**2
  return np.where(shape, 255, 0).astype(np.uint8), label

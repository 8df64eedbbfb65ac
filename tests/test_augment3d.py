"""Tests for medssl_jax.augment.ops3d and the volume view policies of medssl_jax.augment.views.

Volumes are tiny (8-12 voxels a side) and every op configuration is jitted once (cached below), so
the file stays fast on a 2-core CPU.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import device_testing
from medssl_jax.augment import ops3d
from medssl_jax.augment import views

S = 10  # Side of the test volumes.


def _volume(seed=0, shape=(S, S, S), channels=2):
  return jax.random.uniform(jax.random.key(seed), (*shape, channels), jnp.float32)


def _keys(n=4):
  return [jax.random.key(i) for i in range(n)]


@functools.lru_cache(maxsize=None)
def _op(name, **kwargs):
  fn = getattr(ops3d, name)
  return jax.jit(lambda key, volume: fn(key, volume, **kwargs))


_RANDOM_OPS = [
    ("random_resized_crop", dict(out_size=8, scale=(0.2, 1.0))),
    ("random_flip", dict(p=0.5)),
    ("random_rot90", dict(p=0.75)),
    ("random_intensity", dict(p=1.0, scale=0.2, shift=0.1)),
    ("random_gamma", dict(p=1.0, gamma=(0.7, 1.5))),
    ("gaussian_noise", dict(p=1.0, std=(0.01, 0.05))),
    ("gaussian_blur", dict(p=1.0, sigma=(0.5, 1.5), kernel_size=3)),
    ("random_erasing", dict(p=1.0, scale=(0.05, 0.3))),
]


# --------------------------------------------------------------------------------------------------
# Generic invariants of every random op.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kwargs", _RANDOM_OPS, ids=[n for n, _ in _RANDOM_OPS])
def test_op_shape_dtype_range_and_determinism(name, kwargs):
  fn = _op(name, **kwargs)
  volume = _volume()
  outs = [np.asarray(fn(k, volume)) for k in _keys(5)]
  size = kwargs.get("out_size", S)
  for out in outs:
    assert out.shape == (size, size, size, 2) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_array_equal(np.asarray(fn(jax.random.key(0), volume)), outs[0])  # Same key.
  assert any(not np.array_equal(outs[0], o) for o in outs[1:])  # Different keys.


@pytest.mark.parametrize("name,kwargs", [
    ("random_flip", dict(p=0.0)),
    ("random_rot90", dict(p=0.0)),
    ("random_intensity", dict(p=1.0, scale=0, shift=0)),
    ("random_intensity", dict(p=0.0)),
    ("random_gamma", dict(p=1.0, gamma=(1, 1))),
    ("gaussian_noise", dict(p=1.0, std=(0, 0))),
    ("gaussian_noise", dict(p=0.0)),
    ("gaussian_blur", dict(p=0.0)),
    ("random_erasing", dict(p=0.0)),
])
def test_zero_strength_is_identity(name, kwargs):
  volume = _volume()
  for key in _keys(2):
    np.testing.assert_array_equal(getattr(ops3d, name)(key, volume, **kwargs), volume)


def test_ops_reject_bad_volumes():
  with pytest.raises(ValueError, match=r"random_flip: expected one volume \[D, H, W, C\]"):
    ops3d.random_flip(jax.random.key(0), jnp.zeros((4, 4, 3)))
  with pytest.raises(ValueError, match="float"):
    ops3d.gaussian_noise(jax.random.key(0), jnp.zeros((4, 4, 4, 1), jnp.uint8))
  with pytest.raises(ValueError, match=r"axes=\(0, 3\)"):
    ops3d.random_flip(jax.random.key(0), jnp.zeros((4, 4, 4, 1)), axes=(0, 3))
  with pytest.raises(ValueError, match="kernel_size"):
    ops3d.gaussian_blur(jax.random.key(0), jnp.zeros((4, 4, 4, 1)), kernel_size=4)
  with pytest.raises(ValueError, match="value=1.5"):
    ops3d.random_erasing(jax.random.key(0), jnp.zeros((4, 4, 4, 1)), value=1.5)


# --------------------------------------------------------------------------------------------------
# Geometry.
# --------------------------------------------------------------------------------------------------


def test_crop_full_scale_unit_ratio_is_identity():
  volume = _volume()
  crop = _op("random_resized_crop", out_size=S, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  for key in _keys(3):
    np.testing.assert_allclose(crop(key, volume), volume, atol=1e-5)
  np.testing.assert_allclose(jax.jit(lambda v: ops3d.center_resize(v, out_size=S))(volume), volume, atol=1e-5)


def test_resample_matches_scale_and_translate():
  # The crop's resampler is scale_and_translate's antialiased (tri)linear filter, one axis at a time.
  volume = _volume(shape=(9, 10, 12))
  starts, lengths = (1.5, 0.0, 2.25), (6.0, 10.0, 3.5)  # Down-, identity- and up-scaling.

  @jax.jit
  def both(starts, lengths):
    got = ops3d.ops._resample_window(volume, out_size=5, starts=list(starts), lengths=list(lengths))
    scale = 5 / lengths
    want = jax.image.scale_and_translate(volume, (5, 5, 5, 2), (0, 1, 2), scale, -starts * scale, "linear")
    return got, jnp.clip(want, 0, 1)

  got, want = both(jnp.asarray(starts), jnp.asarray(lengths))
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_crop_boxes_vary_and_stay_inside():
  # A ramp along each axis in turn: the crop's mean reveals where along that axis it was taken.
  fn = _op("random_resized_crop", out_size=4, scale=(0.05, 0.2))
  ramp = jnp.linspace(0, 1, 16)
  for axis in range(3):
    view = [1, 1, 1, 1]
    view[axis] = 16
    volume = jnp.broadcast_to(ramp.reshape(view), (16, 16, 16, 1))
    means = [float(fn(k, volume).mean()) for k in _keys(8)]
    assert np.std(means) > 0.05, (axis, means)


def test_crop_fallback_on_impossible_aspect():
  # A cube of the whole volume's size does not fit in 6 x 12 x 12: fall back to the central 6^3 box.
  volume = _volume(shape=(6, 12, 12))
  out = _op("random_resized_crop", out_size=4, scale=(1.0, 1.0), ratio=(1.0, 1.0))(jax.random.key(0), volume)
  want = jax.jit(lambda v: ops3d.ops._resample_window(
      v, out_size=4, starts=(jnp.float32(0), jnp.float32(3), jnp.float32(3)), lengths=(jnp.float32(6),) * 3))
  np.testing.assert_allclose(out, want(volume), atol=1e-6)


def test_flip():
  volume = _volume()
  key = jax.random.key(0)
  np.testing.assert_array_equal(ops3d.random_flip(key, volume, p=1.0), volume[::-1, ::-1, ::-1])
  np.testing.assert_array_equal(ops3d.random_flip(key, volume, p=1.0, axes=(1,)), volume[:, ::-1])
  flip = _op("random_flip", p=0.5)
  combos = [np.flip(np.asarray(volume), axes) if axes else np.asarray(volume)
            for r in range(4) for axes in itertools.combinations(range(3), r)]
  outs = [np.asarray(flip(k, volume)) for k in _keys(12)]
  found = {next(i for i, c in enumerate(combos) if np.array_equal(out, c)) for out in outs}
  assert len(found) > 3  # Each axis flips independently.
  for out in outs:  # A permutation of the voxels: the same multiset of values, the same sum.
    np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(np.asarray(volume), axis=None))
    np.testing.assert_allclose(out.sum(), float(volume.sum()), rtol=1e-6)


def _orientation(out, volume):
  """Index of `out` among the 24 rotations of `volume` (-1: not a rotation)."""
  vol = np.asarray(volume)
  rotations = []
  for perm in itertools.permutations(range(3)):
    for flips in itertools.product((False, True), repeat=3):
      sign = np.linalg.det(np.eye(3)[list(perm)]) * np.prod([-1 if f else 1 for f in flips])
      if sign > 0:
        r = np.transpose(vol, (*perm, 3))
        r = np.flip(r, [a for a in range(3) if flips[a]]) if any(flips) else r
        rotations.append(r)
  for i, r in enumerate(rotations):
    if np.array_equal(out, r):
      return i
  return -1


def test_rot90_outputs_are_exact_rotations():
  volume = _volume(shape=(4, 4, 4), channels=1)  # Random values: the 24 orientations are distinct.
  keys = jax.random.split(jax.random.key(0), 200)
  outs = np.asarray(jax.jit(jax.vmap(lambda k: ops3d.random_rot90(k, volume, p=0.75)))(keys))
  found = [_orientation(o, volume) for o in outs]
  assert min(found) >= 0  # Every output is a rotation of the cube (so a permutation of its voxels).
  assert len(set(found)) == 24  # And all of them occur.
  # In-slice turns only: rot90 in (H, W) by k in {1, 2, 3}, never the identity at p = 1.
  axial = np.asarray(jax.vmap(lambda k: ops3d.random_rot90(k, volume, p=1.0, planes=((1, 2),)))(keys[:30]))
  turns = [next((k for k in range(4) if np.array_equal(o, np.rot90(volume, k, axes=(1, 2)))), -1) for o in axial]
  assert set(turns) == {1, 2, 3}


def test_rot90_rejects_non_square_planes():
  volume = jnp.zeros((4, 6, 6, 1))
  with pytest.raises(ValueError, match=r"random_rot90: plane \(0, 2\).*\(4, 6, 6, 1\)"):
    ops3d.random_rot90(jax.random.key(0), volume, p=0.5)
  assert ops3d.random_rot90(jax.random.key(0), volume, p=0.5, planes=((1, 2),)).shape == volume.shape
  with pytest.raises(ValueError, match="planes"):
    ops3d.random_rot90(jax.random.key(0), volume, planes=((1, 1),))


# --------------------------------------------------------------------------------------------------
# Intensity.
# --------------------------------------------------------------------------------------------------


def test_intensity_scale_and_shift():
  volume = 0.5 * _volume() + 0.25  # In [0.25, 0.75]: no clipping for these strengths.
  scale = _op("random_intensity", p=1.0, scale=0.2, shift=0.0)
  shift = _op("random_intensity", p=1.0, scale=0.0, shift=0.1)
  for key in _keys(4):
    ratio = np.asarray(scale(key, volume)) / np.asarray(volume)
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)  # One factor per volume.
    assert 0.8 - 1e-6 <= ratio.flat[0] <= 1.2 + 1e-6
    diff = np.asarray(shift(key, volume)) - np.asarray(volume)
    np.testing.assert_allclose(diff, diff.flat[0], atol=1e-6)
    assert abs(diff.flat[0]) <= 0.1 + 1e-6


def test_gamma():
  volume = _volume().at[0, 0, 0].set(jnp.array([0.0, 1.0]))
  out = ops3d.random_gamma(jax.random.key(0), volume, p=1.0, gamma=(2.0, 2.0))
  np.testing.assert_allclose(out, np.asarray(volume) ** 2, atol=1e-6)
  for key in _keys(3):
    out = np.asarray(_op("random_gamma", p=1.0, gamma=(0.5, 2.0))(key, volume))
    np.testing.assert_array_equal(out[0, 0, 0], [0.0, 1.0])  # 0 and 1 are fixed points.
    # Monotone: the order of the voxels is kept.
    flat_in, flat_out = np.asarray(volume).ravel(), out.ravel()
    order = np.argsort(flat_in, kind="stable")
    assert np.all(np.diff(flat_out[order]) >= -1e-7)


def test_gaussian_noise_statistics():
  volume = jnp.full((16, 16, 16, 1), 0.5)
  out = np.asarray(_op("gaussian_noise", p=1.0, std=(0.1, 0.1))(jax.random.key(0), volume))
  assert abs(out.mean() - 0.5) < 0.01 and abs(out.std() - 0.1) < 0.01
  # Different volumes in a batch get different noise.
  keys = jax.random.split(jax.random.key(1), 2)
  a, b = jax.vmap(lambda k: _op("gaussian_noise", p=1.0, std=(0.1, 0.1))(k, volume))(keys)
  assert not np.array_equal(a, b)


# --------------------------------------------------------------------------------------------------
# Blur and erasing.
# --------------------------------------------------------------------------------------------------


def test_gaussian_blur():
  volume = _volume()
  key = jax.random.key(0)
  const = jnp.full((S, S, S, 2), 0.3)
  np.testing.assert_allclose(_op("gaussian_blur", p=1.0, kernel_size=5)(key, const), const, atol=1e-6)
  tiny = _op("gaussian_blur", p=1.0, sigma=(0.01, 0.01), kernel_size=3)(key, volume)
  np.testing.assert_allclose(tiny, volume, atol=1e-6)
  blurred = _op("gaussian_blur", p=1.0, sigma=(0.5, 1.5), kernel_size=3)(key, volume)
  assert float(blurred.std()) < 0.7 * float(volume.std())  # Smooths noise along all three axes.
  np.testing.assert_allclose(blurred.mean(), volume.mean(), atol=0.02)
  # Separable: equal to three 1-D passes, i.e. blurring a delta gives an outer product of 1-D kernels.
  delta = jnp.zeros((7, 7, 7, 1)).at[3, 3, 3].set(1.0)
  psf = np.asarray(_op("gaussian_blur", p=1.0, sigma=(1.0, 1.0), kernel_size=3)(key, delta))[..., 0]
  line = psf[3, 3, :] / psf[3, 3, :].sum()
  np.testing.assert_allclose(psf / psf.sum(), np.einsum("i,j,k->ijk", line, line, line), atol=1e-6)
  assert _op("gaussian_blur", p=1.0, kernel_size=5)(key, volume[:2, :2, :2]).shape == (2, 2, 2, 2)


def _erased_box(out, volume):
  """The erased voxels (out != volume) as a mask, checked to be a cuboid."""
  mask = np.any(np.asarray(out) != np.asarray(volume), axis=-1)
  if not mask.any():
    return mask
  idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
  box = np.zeros_like(mask)
  box[idx[0][0]:idx[0][-1] + 1, idx[1][0]:idx[1][-1] + 1, idx[2][0]:idx[2][-1] + 1] = True
  np.testing.assert_array_equal(mask, box)  # Contiguous along every axis and filled.
  return mask


def test_random_erasing_fills_a_cuboid():
  volume = 0.5 * _volume(shape=(16, 16, 16)) + 0.5  # > 0.5: the erased voxels (0.25) are recognisable.
  erase = _op("random_erasing", p=1.0, scale=(0.05, 0.2), value=0.25)
  fractions = []
  for key in _keys(6):
    out = np.asarray(erase(key, volume))
    mask = _erased_box(out, volume)
    assert mask.any()
    np.testing.assert_array_equal(out[mask], 0.25)
    np.testing.assert_array_equal(out[~mask], np.asarray(volume)[~mask])
    fractions.append(mask.mean())
  assert len(set(fractions)) > 1 and max(fractions) < 0.35
  noisy = np.asarray(_op("random_erasing", p=1.0, scale=(0.1, 0.2), noise=True)(jax.random.key(0), volume))
  mask = _erased_box(noisy, volume)
  assert mask.any() and len(np.unique(noisy[mask])) > 10 and noisy.min() >= 0 and noisy.max() <= 1
  # No proposal fits (a 4:1 aspect of the whole volume): nothing is erased, as torchvision.
  none = _op("random_erasing", p=1.0, scale=(1.0, 1.0), ratio=(4.0, 4.0))(jax.random.key(0), volume)
  np.testing.assert_array_equal(none, volume)


# --------------------------------------------------------------------------------------------------
# Volume view policies.
# --------------------------------------------------------------------------------------------------


def test_default_view3d_and_overrides():
  cfg = views.default_view3d()
  assert cfg.crop_size == 28 and cfg.crop_scale == (0.25, 1.0) and cfg.flip_axes == (0, 1, 2)
  assert cfg.rot90_p == 0.0 and cfg.erase_p == 0.0 and cfg.erase_noise is False
  cfg = views.default_view3d(crop_size=16, flip_axes=[1, 2], rot90_planes=[[1, 2]], gamma=[0.8, 1.2])
  assert cfg.flip_axes == (1, 2) and cfg.rot90_planes == ((1, 2),) and cfg.gamma == (0.8, 1.2)
  assert views.validate_view3d(dict(crop_size=8)).intensity_p == 0.8


@pytest.mark.parametrize("overrides,key", [
    (dict(jitter_p=0.5), "jitter_p"),
    (dict(flip_p=1.5), "flip_p"),
    (dict(erase_p=-0.1), "erase_p"),
    (dict(crop_scale=(0.9, 0.2)), "crop_scale"),
    (dict(crop_size=0), "crop_size"),
    (dict(crop_ratio=(0.0, 1.0)), "crop_ratio"),
    (dict(flip_axes=(0, 3)), "flip_axes"),
    (dict(flip_axes=(1, 1)), "flip_axes"),
    (dict(rot90_planes=((0, 0),)), "rot90_planes"),
    (dict(rot90_planes=(0, 1)), "rot90_planes"),
    (dict(intensity_scale=1.5), "intensity_scale"),
    (dict(gamma=(0.0, 1.0)), "gamma"),
    (dict(noise_std=(-0.1, 0.1)), "noise_std"),
    (dict(blur_kernel_size=4), "blur_kernel_size"),
    (dict(erase_value=2.0), "erase_value"),
    (dict(erase_noise=1), "erase_noise"),
])
def test_validate_view3d_names_bad_key(overrides, key):
  with pytest.raises(ValueError, match=f"view3d config: .*{key}"):
    views.validate_view3d(dict(views.default_view3d().to_dict(), **overrides))


def test_validate_view3d_lists_valid_keys():
  with pytest.raises(ValueError) as err:
    views.validate_view3d(dict(bogus=1))
  assert "bogus" in str(err.value) and "crop_size" in str(err.value) and "erase_noise" in str(err.value)


# Every op on, so the batch tests cover the whole pipeline; one batch shape so they share executables.
_VIEW3D = views.default_view3d(crop_size=8, rot90_p=0.5, gamma_p=0.5, blur_p=0.5, noise_p=0.5, erase_p=0.5,
                               erase_noise=True)
_B = 8
_AUTO = (jax.sharding.AxisType.Auto,)


def _on_one_device(x):
  mesh1 = jax.make_mesh((1,), ("data",), axis_types=_AUTO, devices=jax.devices()[:1])
  return jax.device_put(x, NamedSharding(mesh1, P("data")))


def _batch(seed=0):
  rs = np.random.RandomState(seed)
  return _on_one_device((rs.rand(_B, 12, 12, 12, 1) * 255).astype(np.uint8))


def test_augment_volume_batch_shape_range_and_reproducibility():
  volumes = _batch()
  out = np.asarray(views.augment_batch(jax.random.key(0), volumes, _VIEW3D))
  assert out.shape == (_B, 8, 8, 8, 1) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_array_equal(views.augment_batch(jax.random.key(0), volumes, _VIEW3D.to_dict()), out)
  assert not np.array_equal(views.augment_batch(jax.random.key(1), volumes, _VIEW3D), out)
  same = _on_one_device(np.repeat(np.asarray(volumes)[:1], _B, axis=0))
  per_example = np.asarray(views.augment_batch(jax.random.key(0), same, _VIEW3D))
  assert len({o.tobytes() for o in per_example}) == _B  # One key per example.


def test_make_views_and_eval_view_take_volumes():
  volumes = _batch()
  key = jax.random.key(0)
  out = views.make_views(key, volumes, [_VIEW3D, _VIEW3D])
  assert [v.shape for v in out] == [(_B, 8, 8, 8, 1)] * 2 and not np.array_equal(out[0], out[1])
  np.testing.assert_array_equal(out[1], views.augment_batch(jax.random.fold_in(key, 1), volumes, _VIEW3D))
  small = views.default_view3d(crop_size=4)
  shapes = jax.eval_shape(lambda k, x: views.make_views(k, x, [_VIEW3D, small]), key, volumes)
  assert [s.shape for s in shapes] == [(_B, 8, 8, 8, 1), (_B, 4, 4, 4, 1)]
  ev = views.eval_view(np.asarray(volumes)[:2], size=12)
  np.testing.assert_allclose(ev, np.asarray(volumes)[:2] / 255.0, atol=1e-6)
  assert views.eval_view(np.asarray(volumes)[:2], size=6).shape == (2, 6, 6, 6, 1)
  with pytest.raises(ValueError, match="view3d config: unknown key"):  # A 2D policy for volumes.
    views.augment_batch(key, volumes, views.default_view(crop_size=8))
  with pytest.raises(ValueError, match="uint8"):
    views.augment_batch(key, np.asarray(volumes).astype(np.int32), _VIEW3D)


def test_augment_volume_batch_bit_identical_across_shardings():
  assert jax.device_count() >= 8, "conftest.py should provide 8 CPU devices"
  volumes = np.asarray(_batch(seed=1))
  key = jax.random.key(7)
  mesh8 = jax.make_mesh((8,), ("data",), axis_types=_AUTO)
  augment = lambda k, x: views.augment_batch(k, x, _VIEW3D)
  out8 = device_testing.run_compiled(augment, key, jax.device_put(volumes, NamedSharding(mesh8, P("data"))))
  out1 = device_testing.run_compiled(augment, key, _on_one_device(volumes))
  np.testing.assert_array_equal(np.asarray(out8), np.asarray(out1))
  assert out8.sharding.is_equivalent_to(NamedSharding(mesh8, P("data")), out8.ndim)

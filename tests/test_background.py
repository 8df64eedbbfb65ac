"""Background augmentation: the op (ops.replace_background, ops3d.replace_background for volumes), its place in view
policies and batches, the masks derived from images and volumes (data/masks.py), the training batches' foreground
masks and a pretraining run with it (on volumes: tests/test_volumes_e2e.py)."""
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import device_testing
from medssl_jax import config as config_lib
from medssl_jax.augment import ops
from medssl_jax.augment import ops3d
from medssl_jax.augment import views
from medssl_jax.data import masks
from medssl_jax.data import pipeline
from medssl_jax.synthetic import fundus as synthetic_fundus
from medssl_jax.synthetic import volumes as synthetic_volumes
from medssl_jax.train import checkpoint as ckpt_lib

_AUTO = (AxisType.Auto,)


def _image_and_mask(seed=0, size=12, channels=3):
  rs = np.random.RandomState(seed)
  image = rs.rand(size, size, channels).astype(np.float32)
  yy, xx = np.mgrid[:size, :size]
  mask = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2).astype(np.uint8)
  return image, mask


def _rows(x):
  return {tuple(p) for p in np.asarray(x).reshape(-1, np.asarray(x).shape[-1])}


@pytest.mark.parametrize("mode", ops.BACKGROUNDS)
def test_replace_background_keeps_foreground_and_fills_background(mode):
  image, mask = _image_and_mask()
  donor, donor_mask = _image_and_mask(seed=1)
  donor_mask = np.roll(donor_mask, 3, axis=1)  # Another foreground place.
  out = np.asarray(ops.replace_background(jax.random.key(3), jnp.asarray(image), mask, p=1.0, mode=mode, value=0.25,
                                          donor=jnp.asarray(donor), donor_mask=donor_mask))
  _assert_filled(out, image, mask, donor, donor_mask, mode)


def _assert_filled(out, image, mask, donor, donor_mask, mode):
  """`out` is `image` (or volume) with its background outside `mask` replaced as `mode` says (fill 0.25)."""
  inside = mask.astype(bool)
  np.testing.assert_array_equal(out[inside], image[inside], err_msg=mode)  # The foreground, bit for bit.
  bg = out[~inside]
  assert out.shape == image.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
  if mode == "constant":
    np.testing.assert_array_equal(bg, 0.25)
  elif mode == "shuffle":  # Only this image's own background pixels, and not in place.
    assert _rows(bg) <= _rows(image[~inside]) and not np.array_equal(bg, image[~inside])
  elif mode == "swap":  # The donor's background where it has one; its background pixels in its foreground.
    donor_bg = ~donor_mask.astype(bool) & ~inside
    np.testing.assert_array_equal(out[donor_bg], donor[donor_bg])
    assert _rows(out[~inside & donor_mask.astype(bool)]) <= _rows(donor[~donor_mask.astype(bool)])
  else:
    assert not np.any(np.isin(bg, image[~inside])) and abs(bg.mean() - 0.5) < 0.1


def test_replace_background_probability_empty_mask_and_identity():
  image, mask = _image_and_mask()
  x = jnp.asarray(image)
  run = lambda k, m, p: np.asarray(ops.replace_background(jax.random.key(k), x, m, p=p, mode="noise"))
  np.testing.assert_array_equal(run(0, mask, 0.0), image)  # p = 0: the identity.
  np.testing.assert_array_equal(run(0, np.zeros_like(mask), 1.0), image)  # No foreground found: left alone.
  np.testing.assert_array_equal(run(0, np.ones_like(mask), 1.0), image)  # All foreground: nothing to replace.
  changed = np.mean([not np.array_equal(run(k, mask, 0.3), image) for k in range(400)])
  assert abs(changed - 0.3) < 0.07
  # Masks as bool, integer (non-zero inside) and float (> 0.5 inside) mean the same.
  a = run(5, mask.astype(bool), 1.0)
  np.testing.assert_array_equal(a, run(5, mask * 255, 1.0))
  np.testing.assert_array_equal(a, run(5, mask.astype(np.float32)[..., None] * 0.9, 1.0))


def test_replace_background_refusals():
  image, mask = _image_and_mask()
  with pytest.raises(ValueError, match="mode='blur'.*swap"):
    ops.replace_background(jax.random.key(0), image, mask, p=1.0, mode="blur")
  with pytest.raises(ValueError, match="needs a donor"):
    ops.replace_background(jax.random.key(0), image, mask, p=1.0, mode="swap")
  with pytest.raises(ValueError, match="does not match image"):
    ops.replace_background(jax.random.key(0), image, mask[:5], p=1.0, mode="noise")


def test_view_policy_keys_validate_and_leave_old_policies_unchanged():
  v = views.default_view(background_p=0.5, background="shuffle", background_value=0.1)
  assert views.uses_background(v) and not views.uses_background(views.default_view())
  for bad, match in ((dict(background="blur"), "background='blur'; choose one of"),
                     (dict(background_p=1.5), "background_p=1.5 must be a probability"),
                     (dict(background_value=2), "background_value=2 must be a number in")):
    with pytest.raises(ValueError, match=match):
      views.validate_view(bad)
  # A policy at the old behaviour is the same run as one written before the keys existed.
  assert views.strip_later_defaults(views.default_view().to_dict()).keys() == set(views.VALID_KEYS) - set(
      views.LATER_KEYS)


def _batch(b=16, size=16, seed=0):
  rs = np.random.RandomState(seed)
  images = (rs.rand(b, size, size, 3) * 255).astype(np.uint8)
  yy, xx = np.mgrid[:size, :size]
  centres = rs.randint(4, size - 4, (b, 2))
  m = np.stack([((yy - cy) ** 2 + (xx - cx) ** 2 < 16) for cy, cx in centres]).astype(np.uint8)[..., None]
  return images, m


_BG_VIEW = views.default_view(crop_size=16, background_p=1.0, background="swap")


def test_augment_batch_swap_pairs_each_image_with_another():
  images, m = _batch()
  plain = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
  out = np.asarray(views.augment_batch(jax.random.key(1), images, dict(_BG_VIEW.to_dict(), **plain), masks=m))
  x = images / np.float32(255)
  inside = np.broadcast_to(m.astype(bool), out.shape)
  np.testing.assert_allclose(out[inside], x[inside], atol=1e-6)  # Foregrounds kept (up to the crop's resampling).
  # Every background comes from one other image of the batch (the same shift for all).
  shifts = {next(s for s in range(1, 16) if np.allclose(out[i][~inside[i] & ~np.roll(m, s, 0)[i].astype(bool)],
                                                         np.roll(x, s, 0)[i][~inside[i] & ~np.roll(m, s, 0)[i].astype(bool)],
                                                         atol=1e-6))
            for i in range(16)}
  assert len(shifts) == 1 and 0 not in shifts
  with pytest.raises(ValueError, match="needs a foreground mask per image; set config.augment.mask_key"):
    views.augment_batch(jax.random.key(1), images, _BG_VIEW)
  with pytest.raises(ValueError, match="do not match images"):
    views.augment_batch(jax.random.key(1), images, _BG_VIEW, masks=m[:, :8])


def _assert_one_vs_eight_devices(images, m, view, msg):
  """The views of a batch sharded over 8 devices are those of the batch on one, bit for bit (compiled as runs
  compile)."""
  key = jax.random.key(11)
  mesh8 = jax.make_mesh((8,), ("data",), axis_types=_AUTO)
  mesh1 = jax.make_mesh((1,), ("data",), axis_types=_AUTO, devices=jax.devices()[:1])
  on = lambda mesh, a: jax.device_put(a, NamedSharding(mesh, P("data")))
  augment = lambda k, x, mk: views.augment_batch(k, x, view, masks=mk)
  out8 = device_testing.run_compiled(augment, key, on(mesh8, images), on(mesh8, m))
  out1 = device_testing.run_compiled(augment, key, on(mesh1, images), on(mesh1, m))
  np.testing.assert_array_equal(np.asarray(out8), np.asarray(out1), err_msg=msg)


def test_augment_batch_with_background_bit_identical_across_shardings():
  images, m = _batch(seed=2)
  for mode in ops.BACKGROUNDS:
    _assert_one_vs_eight_devices(images, m, dict(_BG_VIEW.to_dict(), background=mode, background_p=0.7), mode)


def test_policies_without_background_ignore_masks():
  images, m = _batch()
  view = views.default_view(crop_size=16)
  a = views.augment_batch(jax.random.key(0), images, view)
  np.testing.assert_array_equal(a, views.augment_batch(jax.random.key(0), images, view, masks=m))


def test_fundus_fov_matches_the_drawn_field_of_view():
  dice = []
  for i in range(12):
    image, _, meta = synthetic_fundus.render_example(i, size=64, return_masks=True)
    got, want = masks.derive("fundus_fov", image), meta["fov_mask"].astype(bool)
    dice.append(2 * (got & want).sum() / (got.sum() + want.sum()))
  assert min(dice) > 0.97, dice


def test_body_outline_and_flat_images():
  yy, xx = np.mgrid[:32, :32]
  body = ((yy - 16) ** 2 / 144 + (xx - 16) ** 2 / 100 < 1)
  image = np.where(body, 160, 10).astype(np.uint8)
  image[14:18, 14:18] = 5  # A dark hole inside the body (air in the lungs) is filled.
  np.testing.assert_array_equal(masks.derive("body_outline", image[..., None]), body)
  for name in ("fundus_fov", "body_outline"):
    assert masks.derive(name, np.zeros((16, 16, 1), np.uint8)).all()
  assert masks.derive_all("body_outline", np.stack([image, image])).shape == (2, 32, 32)
  with pytest.raises(ValueError, match="'lungs' is no derived mask; choose one of"):
    masks.derive("lungs", image)


def test_config_checks_name_what_to_set():
  c = config_lib.default_config()
  c.augment.views = [views.default_view(background_p=0.5), views.default_view()]
  with pytest.raises(ValueError, match=r"views\[0\].background_p=0.5 replaces backgrounds.*set config.augment.mask_key"):
    config_lib.validate(c)
  c.augment.derived_mask = "lungs"
  with pytest.raises(ValueError, match="config.augment.derived_mask='lungs' is no derived mask"):
    config_lib.validate(c)
  c.augment.derived_mask, c.augment.mask_key = "fundus_fov", "fov_mask"
  with pytest.raises(ValueError, match="both name the foreground mask"):
    config_lib.validate(c)
  c.augment.mask_key = ""
  config_lib.validate(c)
  assert config_lib.foreground_spec(c) == ("derived", masks.Derived("fundus_fov"))
  c.augment.views = [views.default_view(), views.default_view()]
  assert config_lib.foreground_spec(c) is None  # No view replaces backgrounds: no masks are read.


def test_train_iterator_carries_foreground_masks(tmp_path):
  builder = pipeline.get_builder("synthetic_fundus", data_dir=str(tmp_path), config="vessels")
  kw = dict(split="train", global_batch_size=8, seed=0, image_size=32)
  batch = next(pipeline.make_train_iterator(builder, foreground=("feature", "fov_mask"), **kw))
  derived = next(pipeline.make_train_iterator(builder, foreground=("derived", masks.Derived("fundus_fov")), **kw))
  assert batch["foreground"].shape == (8, 32, 32, 1) and batch["foreground"].dtype == np.uint8
  np.testing.assert_array_equal(derived["image"], batch["image"])
  np.testing.assert_array_equal(derived["foreground"][..., 0], masks.derive_all("fundus_fov", derived["image"]))
  agree = (derived["foreground"] == batch["foreground"]).mean()
  assert agree > 0.97 and set(np.unique(batch["foreground"])) == {0, 1}
  with pytest.raises(ValueError, match="mask_key='vessels' is not a mask feature.*'fov_mask', 'mask'"):
    pipeline.make_train_iterator(builder, foreground=("feature", "vessels"), **kw)


def test_pretraining_with_background_augmentation(tmp_path):
  """A few SimCLR steps with background swaps on masks derived from the images; the config round-trips, and a
  run without it keeps its config.json free of the new keys (old workdirs and row hashes stay valid)."""
  from medssl_jax.train import pretrain as pretrain_lib
  c = config_lib.load("fundus_simclr", "quick")
  c.data.builder, c.data.builder_config, c.data.data_dir = "synthetic_fundus", "tiny", str(tmp_path / "tfds")
  c.data.image_size = 32
  c.train.num_steps, c.train.batch_size, c.train.log_every = 3, 8, 1
  c.augment.views = [views.default_view(**dict(v.to_dict(), crop_size=32, background_p=1.0, background=m))
                     for v, m in zip(c.augment.views, ("swap", "noise"))]
  c.augment.derived_mask = "fundus_fov"
  c = config_lib.validate(c)
  _, state = pretrain_lib.pretrain(c, str(tmp_path / "run"))
  assert int(state.step) == 3
  saved = ckpt_lib.config_dict(c)
  assert saved["augment"]["views"][0]["background_p"] == 1.0 and saved["augment"]["views"][1]["background"] == "noise"
  assert saved["augment"]["derived_mask"] == "fundus_fov"
  plain = ckpt_lib.config_dict(config_lib.default_config())
  assert "background_p" not in plain["augment"]["views"][0]


def test_attention_inside_a_mask_beside_probe_results(tmp_path):
  """eval.attention_mask: Grad-CAM of the probe's classifier inside the field of view, from the dataset's mask
  and from the mask derived from the images (they agree), in the result and in the table runner's columns."""
  from medssl_jax.experiment import validate
  from medssl_jax.protocols import encoders
  from medssl_jax.protocols import probe
  from medssl_jax.tables import runner
  pipeline.get_builder("synthetic_fundus", data_dir=str(tmp_path), config="vessels")
  config = config_lib.load("demo_simclr", "quick")
  config.data.builder_config, config.data.data_dir, config.data.image_size = "vessels", str(tmp_path), 32
  for view in config.augment.views:
    view.crop_size = 32
  config.model.width_multiplier = 0.0625
  config.eval.compare_random_init = False
  config.eval.attention_images = 12
  builder = pipeline.open_dataset(config.data)
  model, variables = encoders.random_init_variables(config)
  got = {}
  for mask in ("fov_mask", "fundus_fov"):
    config.eval.attention_mask = mask
    validate(config)
    r = probe.probe(config, {"random init": (model, variables, True)}, builder=builder)["random init"]
    got[mask] = a = r["attention"]
    assert a["images"] == 12 and a["method"] == "grad_cam" and 0 <= a["fraction_inside"] <= 1
    assert 0.5 < a["mask_area"] < 0.9  # The field of view covers most of the square.
  assert abs(got["fov_mask"]["fraction_inside"] - got["fundus_fov"]["fraction_inside"]) < 0.05
  entry = dict(attention_inside=0.61, mask_area=0.7)
  assert runner._show_attention([entry])  # pylint: disable=protected-access
  assert runner._attention_cell([0.6, 0.62], [0.7, 0.7]) == "0.610 ± 0.014 (n=2) (area 0.70)"  # pylint: disable=protected-access
  config.eval.protocol = "finetune"
  with pytest.raises(ValueError, match="attention_mask='fundus_fov' measures attention beside linear_probe results"):
    validate(config)
  config.eval.protocol, config.eval.attention_method = "knn", "saliency"
  with pytest.raises(ValueError, match="config.eval.attention_method"):
    validate(config)


def _volume_and_mask(seed=0, size=8, channels=1):
  rs = np.random.RandomState(seed)
  volume = rs.rand(size, size, size, channels).astype(np.float32)
  zz, yy, xx = np.mgrid[:size, :size, :size]
  c = rs.uniform(size / 3, 2 * size / 3, 3)
  mask = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < (size / 3) ** 2).astype(np.uint8)
  return volume, mask


def test_volume_replace_background_keeps_foreground_and_fills_background():
  volume, mask = _volume_and_mask()
  donor, donor_mask = _volume_and_mask(seed=1)
  for mode in ops.BACKGROUNDS:
    out = np.asarray(ops3d.replace_background(jax.random.key(3), jnp.asarray(volume), mask, p=1.0, mode=mode,
                                              value=0.25, donor=jnp.asarray(donor), donor_mask=donor_mask[..., None]))
    _assert_filled(out, volume, mask, donor, donor_mask, mode)
  run = lambda m, p: np.asarray(ops3d.replace_background(jax.random.key(0), jnp.asarray(volume), m, p=p, mode="noise"))
  np.testing.assert_array_equal(run(mask, 0.0), volume)  # p = 0: the identity.
  np.testing.assert_array_equal(run(np.zeros_like(mask), 1.0), volume)  # No foreground found: left alone.
  with pytest.raises(ValueError, match="does not match volume"):
    ops3d.replace_background(jax.random.key(0), volume, mask[:4], p=1.0, mode="noise")
  with pytest.raises(ValueError, match=r"expected one mask \[D, H, W\] or \[D, H, W, 1\]"):
    ops3d.replace_background(jax.random.key(0), volume, mask[0], p=1.0, mode="noise")
  with pytest.raises(ValueError, match="needs a donor"):
    ops3d.replace_background(jax.random.key(0), volume, mask, p=1.0, mode="swap")


def _volume_batch(b=8, size=8, seed=0):
  rs = np.random.RandomState(seed)
  volumes = (rs.rand(b, size, size, size, 1) * 255).astype(np.uint8)
  m = np.stack([_volume_and_mask(seed=seed + i, size=size)[1] for i in range(b)])[..., None]
  return volumes, m


_PLAIN3D = dict(crop_size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, intensity_p=0.0, gamma_p=0.0,
                blur_p=0.0, noise_p=0.0)


def test_volume_view_policy_replaces_backgrounds_of_a_batch():
  volumes, m = _volume_batch()
  view = views.default_view3d(**_PLAIN3D, background_p=1.0, background="constant", background_value=0.25)
  assert views.uses_background(view) and not views.uses_background(views.default_view3d())
  out = np.asarray(views.augment_batch(jax.random.key(1), volumes, view, masks=m))
  want = np.where(m.astype(bool), volumes / np.float32(255), np.float32(0.25))
  np.testing.assert_allclose(out, want, atol=1e-6)  # Up to the (identity) crop's resampling.
  with pytest.raises(ValueError, match="needs a foreground mask per volume.*'body_outline'"):
    views.augment_batch(jax.random.key(1), volumes, view)
  with pytest.raises(ValueError, match=r"do not match volumes .* one \[D, H, W\(, 1\)\] mask per volume"):
    views.augment_batch(jax.random.key(1), volumes, view, masks=m[:, :4])
  with pytest.raises(ValueError, match="view3d config: background='blur'; choose one of"):
    views.validate_view3d(dict(background="blur"))
  # Without background_p the masks are ignored and the views are those of a policy written before the keys.
  plain = views.default_view3d(crop_size=8)
  a = views.augment_batch(jax.random.key(0), volumes, plain)
  np.testing.assert_array_equal(a, views.augment_batch(jax.random.key(0), volumes, plain, masks=m))
  assert "background_p" not in views.strip_later_defaults(plain.to_dict())


def test_volume_views_with_background_bit_identical_across_shardings():
  volumes, m = _volume_batch(seed=2)
  for mode in ("swap", "shuffle"):
    _assert_one_vs_eight_devices(volumes, m, views.default_view3d(crop_size=8, background_p=0.7, background=mode), mode)


def test_body_outline_of_volumes():
  volume, label = synthetic_volumes.render_example(1, size=16)  # A cavity volume: the cavity is filled.
  assert label == 1
  shape = volume > 0
  want = ndimage.binary_fill_holes(shape)
  assert want.sum() > shape.sum()
  got = masks.derive("body_outline", volume[..., None])
  assert got.shape == (16, 16, 16)
  np.testing.assert_array_equal(got, want)
  assert masks.Derived("body_outline").volumes and not masks.Derived("fundus_fov").volumes
  for name in ("fundus_fov", "lung_intensity"):
    with pytest.raises(ValueError, match=f"derived mask='{name}' derives masks from 2D images, not volumes"):
      masks.derive(name, volume[..., None])

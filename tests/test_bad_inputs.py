"""Hardened inputs: a corpus of bad inputs, each with the clear error it must give (naming the
file / key / value and what was expected) and proof that nothing was overwritten: the sha256 of every file
under the user's folders, the data dir and the workdir is the same before and after, and a failed build
leaves no prepared dataset that a later run would pick up."""
import csv
import hashlib
import io
import os
import pathlib
import re
import struct
import subprocess
import sys
import zlib

import jax
import numpy as np
from PIL import Image
import pytest

import builder_testing as bt
from medssl_jax import config as config_lib
from medssl_jax.data import pipeline
from medssl_jax.protocols import encoders as protocol_encoders
from medssl_jax import experiment
from tfds_builders import common
from tfds_builders.aptos2019 import dummy_data as aptos_dummy
from tfds_builders.image_folder import dummy_data as folder_dummy
from tfds_builders.image_folder import image_folder_dataset_builder as ifb
from tfds_builders.synthetic_fundus import synthetic_fundus_dataset_builder as synthetic_fundus_builder

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _hashes(*roots) -> dict[str, str]:
  """sha256 of every file under `roots` (path -> hex digest)."""
  out = {}
  for root in roots:
    for p in sorted(pathlib.Path(root).rglob('*')):
      if p.is_file():
        out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
  return out


def _rgb(seed, h=12, w=10):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _broken(path: pathlib.Path, kind: str) -> pathlib.Path:
  """Writes a broken image: a truncated JPEG or PNG (a broken download), or random bytes named .png."""
  if kind == 'random_png':
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    return path
  buf = io.BytesIO()
  Image.fromarray(_rgb(2, 40, 40)).save(buf, format='JPEG' if kind == 'truncated_jpeg' else 'PNG')
  data = buf.getvalue()
  path.write_bytes(data[:len(data) // 2])
  return path


_BROKEN = {'truncated_jpeg': 'x.jpg', 'truncated_png': 'x.png', 'random_png': 'x.png'}


# ------------------------------------------------------------- 1. truncated / corrupt images


@pytest.mark.parametrize('kind', sorted(_BROKEN))
def test_load_image_broken_file(tmp_path, kind):
  path = _broken(tmp_path / _BROKEN[kind], kind)
  before = _hashes(tmp_path)
  with pytest.raises(ValueError, match=rf'Could not read the image {re.escape(str(path))}: .*expected a readable'):
    common.load_image(path, mode='RGB')
  with pytest.raises(ValueError, match=re.escape(str(path))):
    common.image_bytes(path, mode='RGB', size=8)
  assert _hashes(tmp_path) == before


@pytest.fixture(scope='module')
def good_data_dir(tmp_path_factory):
  """A data dir holding a good, prepared image_folder dataset ('good') beside which bad builds fail."""
  root = tmp_path_factory.mktemp('good')
  manual = folder_dummy.write(root / 'manual', layout='unlabelled_split_folders', size=(8, 6))
  bt.build('image_folder', 'good', manual, root / 'tfds')
  return root / 'tfds'


@pytest.mark.parametrize('kind', sorted(_BROKEN))
def test_broken_image_fails_build_and_touches_nothing(tmp_path, good_data_dir, kind):
  manual = folder_dummy.write(tmp_path / 'manual', layout='unlabelled_split_folders', size=(8, 6))
  victim = sorted((manual / 'train').iterdir())[2]
  victim.unlink()
  bad = _broken(victim.with_name('broken' + pathlib.Path(_BROKEN[kind]).suffix), kind)
  before = _hashes(manual, good_data_dir)
  with pytest.raises(ValueError, match=rf'Could not read the image .*{re.escape(bad.name)}'):
    bt.build('image_folder', f'bad_{kind}', manual, good_data_dir)
  leftovers = [p for p in good_data_dir.rglob('*') if 'incomplete' in p.name
               or (p.name == 'dataset_info.json' and 'bad_' in str(p))]
  assert not leftovers, f'a failed build left {leftovers}'
  assert _hashes(manual, good_data_dir) == before  # The user's files and the good dataset: byte-identical.
  # Nothing a later run could load: without the manual dir the bad dataset is 'not prepared'.
  with pytest.raises(FileNotFoundError, match='not prepared'):
    pipeline.get_builder('image_folder', config=f'bad_{kind}', data_dir=str(good_data_dir))
  good = pipeline.get_builder('image_folder', config='good', data_dir=str(good_data_dir))
  assert good.info.splits['train'].num_examples == 6


def test_damaged_record_names_its_file():
  record = {'image': b'\x89PNG not really', 'id': 3, 'file_name': b'train/benign/x.png'}
  with pytest.raises(ValueError, match=r"record 7 \(train/benign/x.png\) in split 'train': .*delete its folder"):
    pipeline._decode_record(record, 7, 'train', None)  # pylint: disable=protected-access


# ------------------------------------------------------------- 2. colour modes and channel counts


def _mode_images(tmp_path) -> dict[str, tuple[pathlib.Path, np.ndarray]]:
  """One file per colour mode and the RGB pixels an independent conversion gives."""
  tmp_path.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(3)
  out = {}
  idx = rng.integers(0, 16, (12, 10), dtype=np.uint8)
  palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
  p = Image.fromarray(idx, 'P')
  p.putpalette(palette.ravel().tolist())
  p.save(tmp_path / 'palette.png')
  out['P'] = (tmp_path / 'palette.png', palette[idx])
  rgba = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
  out['RGBA'] = (tmp_path / 'rgba.png', rgba[..., :3])  # Alpha dropped, not composited.
  cmyk = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
  Image.fromarray(cmyk, 'CMYK').save(tmp_path / 'cmyk.tif')
  c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
  out['CMYK'] = (tmp_path / 'cmyk.tif', (255 - c) * (255 - k) / 255)  # Naive CMYK -> RGB (+-1 rounding).
  la = rng.integers(0, 256, (12, 10, 2), dtype=np.uint8)
  Image.fromarray(la, 'LA').save(tmp_path / 'la.png')
  out['LA'] = (tmp_path / 'la.png', np.repeat(la[..., :1], 3, -1))
  bits = rng.integers(0, 2, (12, 10)).astype(bool)
  Image.fromarray(bits).save(tmp_path / 'bits.png')
  out['1'] = (tmp_path / 'bits.png', np.repeat(bits[..., None] * np.uint8(255), 3, -1))
  return out


def test_colour_modes_converted_to_rgb(tmp_path):
  images = _mode_images(tmp_path / 'files')
  for mode, (path, want) in images.items():
    assert Image.open(path).mode == mode
    got = np.asarray(common.load_image(path, mode='RGB'))
    assert got.shape == want.shape and got.dtype == np.uint8
    np.testing.assert_allclose(got, want, atol=1 if mode == 'CMYK' else 0, err_msg=mode)
  # Through a real build: every mode stored as RGB with the same pixels.
  manual = tmp_path / 'manual'
  (manual / 'train').mkdir(parents=True)
  (manual / 'val').mkdir()
  for mode, (path, _) in images.items():
    path.rename(manual / 'train' / path.name)
  Image.fromarray(_rgb(4)).save(manual / 'val' / 'rgb.png')
  before = _hashes(manual)
  b = bt.build('image_folder', 'modes', manual, tmp_path / 'tfds')
  records = bt.check_dataset(b, splits={'train': 5, 'validation': 1})
  for r in records['train']:
    mode = {p.name: m for m, (p, _) in images.items()}[pathlib.Path(r['file_name'].decode()).name]
    np.testing.assert_allclose(r['image'], images[mode][1], atol=1 if mode == 'CMYK' else 0, err_msg=mode)
  assert _hashes(manual) == before


@pytest.mark.parametrize('stored, asked', [(1, 3), (3, 1)])
def test_channels_mismatch_names_dataset_and_key(tmp_path, stored, asked):
  manual = folder_dummy.write(tmp_path / 'manual', layout='unlabelled_split_folders', size=(8, 6))
  b = bt.build('image_folder', f'scans,channels={stored}', manual, tmp_path / 'tfds')
  assert pipeline.image_channels(b) == stored
  pipeline.check_channels(b, stored)
  with pytest.raises(ValueError, match=rf'config.data.channels={asked} but image_folder/scans has {stored}-channel '
                                       rf'images; set config.data.channels={stored}'):
    pipeline.check_channels(b, asked)


# ------------------------------------------------------------- 3. 16-bit images


def _png16(a: np.ndarray) -> bytes:
  """A 16-bit-per-channel RGB (48 bpp) or RGBA (64 bpp) PNG, written by hand: Pillow cannot write one."""
  h, w, c = a.shape
  raw = b''.join(b'\x00' + a[y].astype('>u2').tobytes() for y in range(h))
  chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
  ihdr = struct.pack('>IIBBBBB', w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')


@pytest.mark.parametrize('fmt', ['png', 'tif'])
def test_16bit_grayscale_scaled_by_own_range(tmp_path, fmt):
  a = np.random.default_rng(5).integers(300, 3900, (9, 7)).astype(np.uint16)  # 12-bit X-ray-like content.
  path = tmp_path / f'xray.{fmt}'
  Image.fromarray(a).save(path)
  assert Image.open(path).mode == 'I;16'
  lo, hi = a.min(), a.max()
  want = np.round((a.astype(np.float64) - lo) * 255.0 / (hi - lo)).astype(np.uint8)
  got = common.load_image(path)
  assert got.mode == 'L'
  np.testing.assert_array_equal(np.asarray(got), want)
  assert want.min() == 0 and want.max() == 255
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(common.image_bytes(path, mode='L')))), want)


@pytest.mark.parametrize('channels', [3, 4])
def test_16bit_colour_png_maps_full_range(tmp_path, channels):
  # Pillow 13 decodes 48/64-bpp PNGs to 8-bit RGB(A) by keeping each sample's high byte: the full 16-bit
  # range 0..65535 mapped linearly to 0..255 (floor(v / 256), libpng's and OpenCV's convention), not the
  # low byte and not an error. Colour images keep that fixed mapping (own-range scaling per image would
  # change colour balance between images); only grayscale is scaled by its own range.
  a = np.random.default_rng(6).integers(0, 65536, (5, 6, channels)).astype(np.uint16)
  path = tmp_path / 'colour16.png'
  path.write_bytes(_png16(a))
  got = common.load_image(path, mode='RGB')
  np.testing.assert_array_equal(np.asarray(got), (a[..., :3] >> 8).astype(np.uint8))


# ------------------------------------------------------------- 4. missing split files / folders


@pytest.mark.parametrize('missing', ['train.csv', 'train_images'])
def test_missing_split_file_or_folder(tmp_path, missing):
  manual = aptos_dummy.write(tmp_path / 'manual', counts=(1, 1, 1, 1, 1), size=(8, 6))
  target = manual / missing
  if target.is_dir():
    for p in target.iterdir():
      p.unlink()
    target.rmdir()
  else:
    target.unlink()
  before = _hashes(manual)
  # The error names the missing path and lists what the manual dir does hold.
  bt.check_fails('aptos2019', 'original', manual, tmp_path / 'tfds', error=common.LayoutError,
                 match=rf"aptos2019: none of \[.*{missing}'\] found in the manual dir .*found in .*: \[.*'test.csv'")
  assert _hashes(manual) == before


def test_missing_image_folder_split(tmp_path):
  with pytest.raises(common.LayoutError, match=rf'x: expected a folder .*nope .*found in {re.escape(str(tmp_path))}'):
    (tmp_path / 'a.png').write_bytes(b'')
    common.list_files(tmp_path / 'nope', ('.png',), dataset='x')


# ------------------------------------------------------------- 5. label files with unknown classes


def _rewrite_csv(path, edit):
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    rows, fields = list(reader), list(reader.fieldnames)
  edit(rows)
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)


def test_unknown_class_aptos(tmp_path):
  manual = aptos_dummy.write(tmp_path / 'manual', counts=(1, 1, 1, 1, 1), size=(8, 6))
  rows = []
  _rewrite_csv(manual / 'train.csv', lambda r: (r[2].update(diagnosis='5'), rows.extend(r)))
  before = _hashes(manual)
  bt.check_fails('aptos2019', 'original', manual, tmp_path / 'tfds',
                 match=rf"aptos2019: .*train.csv: id_code '{rows[2]['id_code']}' has diagnosis '5'; "
                       r'valid values are 0, 1, 2, 3, 4')
  assert _hashes(manual) == before


def test_unknown_class_image_folder_csv(tmp_path):
  manual = folder_dummy.write(tmp_path / 'manual', layout='csv', size=(8, 6))
  _rewrite_csv(manual / 'labels.csv', lambda r: r[3].update(label='moderate'))
  (manual / ifb.OPTIONS_FILE).write_text('{"classes": ["mild", "none", "severe"]}')
  before = _hashes(manual)
  bt.check_fails('image_folder', 'grades', manual, tmp_path / 'tfds',
                 match=r"labels.csv.*row 4 \(line 5\): unknown label 'moderate'.*mild.*none.*severe")
  assert _hashes(manual) == before


def test_unknown_class_bccd_annotation(tmp_path):
  from tfds_builders.bccd import bccd_dataset_builder as bccd
  xml = tmp_path / 'BloodImage_00000.xml'
  xml.write_text('<annotation><object><name>RBC</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax>'
                 '<ymax>4</ymax></bndbox></object><object><name>Neutrophil</name></object></annotation>')
  with pytest.raises(ValueError, match=rf"bccd: {re.escape(str(xml))}, object 1: unknown class 'Neutrophil'; "
                                       r"valid classes: \['RBC', 'WBC', 'Platelets'\]"):
    bccd.parse_annotation(xml)


# ------------------------------------------------------------- 6. config typos


def test_config_flag_typo_in_main(tmp_path):
  workdir = tmp_path / 'wd'
  cmd = [sys.executable, 'main.py', '--config=configs/demo_simclr.py:quick', '--config.train.num_step=5',
         f'--workdir={workdir}']
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode != 0
  assert 'config.train has no key \'num_step\' (did you mean --config.train.num_steps?)' in out.stderr, out.stderr[-2000:]
  assert 'Traceback' not in out.stderr  # One line naming the override, not a stack of chained errors.
  assert not workdir.exists()  # Refused before anything was written.


def _typo_config(tmp_path) -> pathlib.Path:
  path = tmp_path / 'typo.py'
  path.write_text('from configs import demo_simclr\n\n\ndef get_config(arg=None):\n'
                  '  c = demo_simclr.get_config("quick")\n  c.train.num_step = 5\n  return c\n')
  return path


def test_config_file_unknown_key_names_key_suggests_closest_and_lists_valid_keys(tmp_path):
  config = config_lib.load(str(_typo_config(tmp_path)))
  with pytest.raises(ValueError, match=r"Unknown config key config.train.num_step \(did you mean "
                     r"config.train.num_steps\?\); valid keys of config.train: \[.*'num_steps'"):
    experiment.validate(config)


# ------------------------------------------------------------- 7-8. checkpoints and workdirs of another run


def _tiny_config(data_dir):
  config = config_lib.load('demo_simclr', 'quick')
  config.data.data_dir = str(data_dir)
  config.train.num_steps = 2
  config.train.batch_size = 8
  config.train.checkpoint_every = 2
  config.train.log_every = 1
  config.train.warmup_steps = 1
  config.data.image_size = 28
  for v in config.augment.views:
    v['crop_size'] = 28
  return config


@pytest.fixture(scope='module')
def pretrained_workdir(tmp_path_factory):
  """A 2-step pretrain of a tiny ResNet-18 (x0.125) on synthetic_fundus/small: (config, workdir)."""
  from medssl_jax.train import pretrain as pretrain_lib
  data_dir = tmp_path_factory.mktemp('tfds')
  pipeline.get_builder('synthetic_fundus', data_dir=str(data_dir), config='small')
  config = _tiny_config(data_dir)
  workdir = tmp_path_factory.mktemp('run')
  pretrain_lib.pretrain(config, str(workdir))
  return config, workdir


def _wider(config):
  other = _tiny_config(config.data.data_dir)  # The same recipe with another architecture.
  other.model.width_multiplier = 0.25
  return other


def test_checkpoint_of_another_architecture(pretrained_workdir):
  config, workdir = pretrained_workdir
  before = _hashes(workdir)
  # The first differing leaf by name, with both shapes (width 0.25 doubles the 8 channels of the first stage).
  with pytest.raises(ValueError, match=r'does not fit this run: \S*backbone/\S+ is \(\d+,\) there but \(\d+,\) here '
                                       r'\(\d+ differing leaves\).*config.model'):
    protocol_encoders.load_pretrained(_wider(config), str(workdir))
  assert _hashes(workdir) == before


def test_init_variables_of_another_architecture():
  from medssl_jax.train import pretrain as pretrain_lib
  config = _tiny_config('/nonexistent')
  wide = _wider(config)
  states = []
  for c in (config, wide):
    model, _, tx, _ = pretrain_lib.build(c)
    states.append((pretrain_lib.init_train_state(c, model, tx, jax.random.key(0)), tx))
  (narrow, tx), (other, _) = states
  with pytest.raises(ValueError, match=r'init_variables do not fit this model: params\[.*\] is \(\d+.*\) there but '
                                       r'\(\d+.*\) in the model .*config.model'):
    pretrain_lib.with_variables(narrow, other.variables, tx)


def test_workdir_of_another_run(pretrained_workdir):
  from medssl_jax.train import pretrain as pretrain_lib
  config, workdir = pretrained_workdir
  before = _hashes(workdir)
  other = _tiny_config(config.data.data_dir)
  other.seed = 3
  other.train.num_steps = 4
  with pytest.raises(ValueError, match=r"workdir .* holds a run with a different config \(seed: saved=0 now=3; "
                                       r"train.num_steps: saved=2 now=4\).*new --workdir"):
    pretrain_lib.pretrain(other, str(workdir))
  assert _hashes(workdir) == before


@pytest.mark.parametrize('code', [30, 13])  # EROFS (a read-only mount), EACCES (no write permission).
def test_unwritable_data_dir_names_the_folder_and_the_key(tmp_path, monkeypatch, code):
  """An unbuilt dataset in a folder that cannot be written: one message naming the folder and the config key
  that chooses another (root ignores file modes, so the filesystem's refusal is simulated)."""
  def refuse(self, **kwargs):
    raise OSError(code, os.strerror(code), str(tmp_path / 'ro' / 'synthetic_fundus'))

  monkeypatch.setattr(synthetic_fundus_builder.SyntheticFundus, 'download_and_prepare', refuse)
  with pytest.raises(OSError) as e:
    pipeline.get_builder('synthetic_fundus', data_dir=str(tmp_path / 'ro'), config='tiny')
  message = str(e.value)
  assert '\n' not in message and str(tmp_path / 'ro') in message and '--config.data.data_dir=' in message, message

"""TFDS builder for the MedMNIST 3D family, read from the official npz files (manual download).

Metadata (tasks, label names, official split sizes) and MD5s follow MedMNIST's `medmnist/info.py` at
v2.1.0 (Zenodo 6496656) and v3.0.2 (Zenodo 10519652; its 28³ files are those of v2.2.4). Two datasets
differ between them: VesselMNIST3D (v3 dropped one blank validation volume: 192 -> 191) and
OrganMNIST3D (one training volume: 972 -> 971). The 64³ files exist in v3 only. Files of either release
build; the build says which release the file is, and records it in the dataset's metadata.

Each dataset is a builder config: `<name>` for 28³ and `<name>_64` for 64³, e.g.
`tfds.builder('medmnist3d/vesselmnist3d_64')`. The volumes are stored as zlib-compressed uint8 tensors
[D, H, W, 1] (the 0/255 shape masks of AdrenalMNIST3D and VesselMNIST3D shrink about 30x).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common
from tfds_builders.medmnist.medmnist_dataset_builder import SPLITS, find_npz, load_npz, npz_name

_ORGANS = ('liver', 'kidney-right', 'kidney-left', 'femur-right', 'femur-left', 'bladder', 'heart', 'lung-right',
           'lung-left', 'spleen', 'pancreas')
# name: (task, label names, {release: (train, val, test) sizes}) from MedMNIST info.py. 'v2' is v2.1.0,
# 'v3' is v2.2.4 / v3.0.2 (the same 28³ files).
DATASETS = {
    'organmnist3d': ('multi-class', _ORGANS, {'v2': (972, 161, 610), 'v3': (971, 161, 610)}),
    'nodulemnist3d': ('binary-class', ('benign', 'malignant'), {'v2': (1158, 165, 310), 'v3': (1158, 165, 310)}),
    'adrenalmnist3d': ('binary-class', ('normal', 'hyperplasia'), {'v2': (1188, 98, 298), 'v3': (1188, 98, 298)}),
    'fracturemnist3d': ('multi-class', ('buckle rib fracture', 'nondisplaced rib fracture', 'displaced rib fracture'),
                        {'v2': (1027, 103, 240), 'v3': (1027, 103, 240)}),
    'vesselmnist3d': ('binary-class', ('vessel', 'aneurysm'), {'v2': (1335, 192, 382), 'v3': (1335, 191, 382)}),
    'synapsemnist3d': ('binary-class', ('inhibitory synapse', 'excitatory synapse'),
                       {'v2': (1230, 177, 352), 'v3': (1230, 177, 352)}),
}
SIZES = (28, 64)
# file: {release: official MD5} (info.py `MD5`, and `MD5_64` for the 64³ files of v3).
MD5 = {
    'organmnist3d.npz': {'v2': '21f0a239e7f502e6eca33c3fc453c0b6', 'v3': 'a0c5a1ff56af4f155c46d46fbb45a2fe'},
    'organmnist3d_64.npz': {'v3': '58a2205adf14a9d0a189cb06dc78bf10'},
    'nodulemnist3d.npz': {'v2': '8755a7e9e05a4d9ce80a24c3e7a256f3', 'v3': '8755a7e9e05a4d9ce80a24c3e7a256f3'},
    'nodulemnist3d_64.npz': {'v3': 'c47c5b7d457bf6332200d2ea6d64ecd8'},
    'adrenalmnist3d.npz': {'v2': 'bbd3c5a5576322bc4cdfea780653b1ce', 'v3': 'bbd3c5a5576322bc4cdfea780653b1ce'},
    'adrenalmnist3d_64.npz': {'v3': '17721accfe9fb005146a47d33bc54b2f'},
    'fracturemnist3d.npz': {'v2': '6aa7b0143a6b42da40027a9dda61302f', 'v3': '6aa7b0143a6b42da40027a9dda61302f'},
    'fracturemnist3d_64.npz': {'v3': 'f01d7e6316aedf4210da0da5b7437b42'},
    'vesselmnist3d.npz': {'v2': '2ba5b80617d705141f3f85627108fce8', 'v3': 'b41fd4f7e7e2feedddb201585ecafa1b'},
    'vesselmnist3d_64.npz': {'v3': '6bb274a8846e1097066dcd64e2c4520f'},
    'synapsemnist3d.npz': {'v2': '1235b78a3cd6280881dd7850a78eadb6', 'v3': '1235b78a3cd6280881dd7850a78eadb6'},
    'synapsemnist3d_64.npz': {'v3': '43bd14ebf3af9d3dd072446fedc14d5e'},
}


def identify(path, *, what: str, file_name: str, sizes: tuple[int, int, int]) -> tuple[str, str]:
  """(release, md5) of an npz: the releases whose official `file_name` has its MD5 ('v2', 'v3' or 'v2+v3'),
  else '' after a one-line warning naming the file, its MD5, the official ones and which release (if any)
  its split sizes `sizes` (train, val, test) match. A renamed or re-saved copy still builds."""
  md5 = common.file_md5(path)
  official = MD5[file_name]
  matched = [r for r, m in official.items() if m == md5]
  if matched:
    release = '+'.join(matched)
    print(f'{what}: {os.path.basename(path)} is the official MedMNIST {release} {file_name} (md5 {md5})',
          flush=True)
    return release, md5
  dataset = file_name[:-len('.npz')].removesuffix('_64')
  official_sizes = {r: s for r, s in DATASETS[dataset][2].items() if r in official}
  by_size = [r for r, s in official_sizes.items() if s == tuple(sizes)]
  size_note = (f'its split sizes {"/".join(map(str, sizes))} are those of {"+".join(by_size)}' if by_size else
               f'its split sizes {"/".join(map(str, sizes))} match no release (' +
               ', '.join(f'{r}: {"/".join(map(str, s))}' for r, s in official_sizes.items()) + ')')
  print(f'{what}: WARNING: {path} has md5 {md5}, not that of the official {file_name} '
        f'({", ".join(f"{r}: {m}" for r, m in official.items())}); {size_note}; building it as it is', flush=True)
  return '', md5


@dataclasses.dataclass
class MedMNIST3DConfig(tfds.core.BuilderConfig):
  dataset: str = 'adrenalmnist3d'
  image_size: int = 28

  @property
  def file_name(self) -> str:
    return npz_name(self.dataset, self.image_size)


def _configs():
  out = []
  for name, (task, labels, sizes) in DATASETS.items():
    splits = ' or '.join(f'{"/".join(map(str, s))} ({r})' for r, s in sizes.items()) if sizes['v2'] != sizes['v3'] \
        else '/'.join(map(str, sizes['v3']))
    for size in SIZES:
      out.append(MedMNIST3DConfig(
          name=name if size == 28 else f'{name}_{size}', dataset=name, image_size=size,
          description=f'{name} at {size}³: {task}, {len(labels)} labels, official splits {splits}.'))
  return out


class MedMNIST3D(tfds.core.GeneratorBasedBuilder):
  """MedMNIST v2/v3 (Yang et al., Scientific Data 2023), 3D datasets, official splits."""

  name = 'medmnist3d'

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: 6 3D datasets x 2 sizes (28³, 64³), read from the official npz files.'}
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the official npz file(s) from https://zenodo.org/records/10519652 (MedMNIST v3 / MedMNIST+;
  the 28³ files of v2.1.0, https://zenodo.org/records/6496656, build too). Licence CC BY 4.0; cite
  Yang et al. 2023 and the source dataset. Put them, unchanged, directly in the manual directory:

    <manual_dir>/vesselmnist3d.npz        (28³)
    <manual_dir>/vesselmnist3d_64.npz     (64³)

  Each file holds train_images, train_labels, val_images, val_labels, test_images, test_labels
  (images uint8 [N, D, H, W]; labels [N, 1]). The build checks the file's MD5 against both releases
  and says which one it is.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    task, labels, _ = DATASETS[c.dataset]
    s = c.image_size
    return self.dataset_info_from_configs(
        description=f'MedMNIST {c.dataset} ({task}) at {s}³.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(s, s, s, 1), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB,
                                          doc='Volume [D, H, W, 1].'),
            'label': tfds.features.ClassLabel(names=list(labels)),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index of the example in its official split.'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # Record i of a split is official index i.
        homepage='https://medmnist.com/',
        citation='Yang et al., MedMNIST v2, Scientific Data 10:41 (2023).',
        # Filled in by the build: the release the file matched ('v2', 'v3', 'v2+v3'; '' for none) and its MD5.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    c = self.builder_config
    _, labels, _ = DATASETS[c.dataset]
    what = f'{self.name}/{c.name}'
    path = find_npz(dl_manager.manual_dir, what=what, dataset=c.dataset, image_size=c.image_size, sizes=SIZES)
    data = load_npz(path, what=what, config=c.name, module='tfds_builders.medmnist3d',
                    image_shape=(c.image_size,) * 3, num_classes=len(labels))
    sizes = tuple(len(data[f'{prefix}_images']) for _, prefix in SPLITS)
    release, md5 = identify(path, what=what, file_name=c.file_name, sizes=sizes)
    self.info.metadata.update(release=release, md5=md5, file_name=os.path.basename(path))
    return {split: self._generate_examples(data[f'{prefix}_images'], data[f'{prefix}_labels'])
            for split, prefix in SPLITS}

  def _generate_examples(self, images, labels):
    for i, (volume, y) in enumerate(zip(images, labels)):
      yield i, {'image': volume[..., None], 'label': int(y[0]), 'id': i}

"""TFDS builder for the MedMNIST v2 2D family, read from the official npz files (manual download).

Metadata (tasks, label names, channels, official split sizes) follows MedMNIST's `medmnist/info.py`
(v2.1.0). Each dataset is a builder config: `<name>` for the 28 px release and `<name>_<size>` for
the MedMNIST+ 64/128/224 px releases, e.g. `tfds.builder('medmnist/retinamnist_64')`.
"""
from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

# name: (task, channels, label names, (train, val, test) sizes) from MedMNIST v2 info.py.
_ORGANS = ('bladder', 'femur-left', 'femur-right', 'heart', 'kidney-left', 'kidney-right', 'liver',
           'lung-left', 'lung-right', 'pancreas', 'spleen')
DATASETS = {
    'pathmnist': ('multi-class', 3, ('adipose', 'background', 'debris', 'lymphocytes', 'mucus', 'smooth muscle',
                                     'normal colon mucosa', 'cancer-associated stroma',
                                     'colorectal adenocarcinoma epithelium'), (89996, 10004, 7180)),
    'chestmnist': ('multi-label', 1, ('atelectasis', 'cardiomegaly', 'effusion', 'infiltration', 'mass', 'nodule',
                                      'pneumonia', 'pneumothorax', 'consolidation', 'edema', 'emphysema',
                                      'fibrosis', 'pleural', 'hernia'), (78468, 11219, 22433)),
    'dermamnist': ('multi-class', 3, ('actinic keratoses and intraepithelial carcinoma', 'basal cell carcinoma',
                                      'benign keratosis-like lesions', 'dermatofibroma', 'melanoma',
                                      'melanocytic nevi', 'vascular lesions'), (7007, 1003, 2005)),
    'octmnist': ('multi-class', 1, ('choroidal neovascularization', 'diabetic macular edema', 'drusen', 'normal'),
                 (97477, 10832, 1000)),
    'pneumoniamnist': ('binary-class', 1, ('normal', 'pneumonia'), (4708, 524, 624)),
    'retinamnist': ('ordinal-regression', 3, ('0', '1', '2', '3', '4'), (1080, 120, 400)),
    'breastmnist': ('binary-class', 1, ('malignant', 'normal, benign'), (546, 78, 156)),
    'bloodmnist': ('multi-class', 3, ('basophil', 'eosinophil', 'erythroblast',
                                      'immature granulocytes(myelocytes, metamyelocytes and promyelocytes)',
                                      'lymphocyte', 'monocyte', 'neutrophil', 'platelet'), (11959, 1712, 3421)),
    'tissuemnist': ('multi-class', 1, ('Collecting Duct, Connecting Tubule', 'Distal Convoluted Tubule',
                                       'Glomerular endothelial cells', 'Interstitial endothelial cells', 'Leukocytes',
                                       'Podocytes', 'Proximal Tubule Segments', 'Thick Ascending Limb'),
                    (165466, 23640, 47280)),
    'organamnist': ('multi-class', 1, _ORGANS, (34581, 6491, 17778)),
    'organcmnist': ('multi-class', 1, _ORGANS, (13000, 2392, 8268)),
    'organsmnist': ('multi-class', 1, _ORGANS, (13940, 2452, 8829)),
}
SIZES = (28, 64, 128, 224)
SPLITS = (('train', 'train'), ('validation', 'val'), ('test', 'test'))  # (TFDS split, npz key prefix)


def npz_name(dataset: str, image_size: int) -> str:
  """The official file name: `<dataset>.npz` at 28 px, `<dataset>_<size>.npz` at the MedMNIST+ sizes."""
  return f'{dataset}.npz' if image_size == 28 else f'{dataset}_{image_size}.npz'


def find_npz(manual_dir, *, what: str, dataset: str, image_size: int, sizes) -> str:
  """The official file in `manual_dir`, or else the one unambiguous renamed copy of it (e.g. a re-assembled
  `pneumoniamnist_reconstructed.npz`), said out loud; never another size's file (`sizes`: the release's sizes).
  Without either, the official path (`load_npz` names it as missing). `what` ('<builder>/<config>') starts
  the notice."""
  file_name = npz_name(dataset, image_size)
  official = os.path.join(manual_dir, file_name)
  if os.path.exists(official):
    return official
  stem = file_name[:-len('.npz')]
  others = {f'{dataset}_{size}' for size in sizes if size != image_size} | {dataset}
  candidates = sorted(f for f in os.listdir(manual_dir) if f.endswith('.npz') and f.startswith(stem + '_')
                      and not any(f[:-4] == o or f.startswith(o + '_') and o != stem for o in others))
  if len(candidates) == 1:
    print(f'{what}: {file_name} not found in {manual_dir}; using {candidates[0]} (not the official file name)',
          flush=True)
    return os.path.join(manual_dir, candidates[0])
  return official


def load_npz(path, *, what: str, config: str, module: str, image_shape: tuple[int, ...], num_classes: int,
             multi_label: bool = False) -> dict[str, np.ndarray]:
  """The arrays of a MedMNIST npz, checked: every split's images uint8 [N, *image_shape] and labels [N, 1]
  in [0, num_classes) ([N, num_classes] 0/1 when `multi_label`). Labels saved as [N] (re-saved copies) are
  read as [N, 1], said out loud.

  Args:
    path: the npz file (from `find_npz`).
    what: '<builder>/<config>', starts the notices.
    config: the builder config, named when the file is missing.
    module: the builder's package, whose MANUAL_DOWNLOAD_INSTRUCTIONS the missing-file error points to.
  """
  if not os.path.exists(path):
    folder, file_name = os.path.split(path)
    found = sorted(f for f in os.listdir(folder) if f.endswith('.npz')) if os.path.isdir(folder) else None
    seen = (f'{folder} does not exist' if found is None else
            f'npz files found there: {found or "none"}')
    raise FileNotFoundError(f'Expected the official MedMNIST file {path} (config {config!r}); {seen}. Put '
                            f'{file_name} there (a renamed copy such as {file_name[:-4]}_mine.npz is '
                            'used when it is the only one), or name its folder with --config.data.manual_dir; '
                            f'MANUAL_DOWNLOAD_INSTRUCTIONS of {module} says where to get it')
  with np.load(path) as npz:
    data = {k: npz[k] for k in npz.files}
  n_labels = num_classes if multi_label else 1
  for _, prefix in SPLITS:
    for key in (f'{prefix}_images', f'{prefix}_labels'):
      if key not in data:
        raise ValueError(f'{path}: missing key {key!r}; found {sorted(data)}')
    images, y = data[f'{prefix}_images'], data[f'{prefix}_labels']
    if images.dtype != np.uint8 or images.shape[1:] != tuple(image_shape):
      raise ValueError(f'{path}: {prefix}_images is {images.dtype}{images.shape}, expected uint8 '
                       f'[N, {tuple(image_shape)}]')
    if n_labels == 1 and y.shape == (len(images),):
      # Re-saved copies often hold a single-label dataset's labels as [N]: the same labels, one per image.
      print(f'{what}: {os.path.basename(path)} holds {prefix}_labels as [N] (the official files: '
            '[N, 1]); read as one label per image', flush=True)
      y = data[f'{prefix}_labels'] = y[:, None]
    if y.shape != (len(images), n_labels):
      raise ValueError(f'{path}: {prefix}_labels has shape {y.shape}, expected ({len(images)}, {n_labels})')
    if not multi_label and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f'{path}: {prefix}_labels has values outside [0, {num_classes - 1}]: '
                       f'{sorted(set(np.unique(y).tolist()))}')
  return data


@dataclasses.dataclass
class MedMNISTConfig(tfds.core.BuilderConfig):
  dataset: str = 'retinamnist'
  image_size: int = 28

  @property
  def file_name(self) -> str:
    return npz_name(self.dataset, self.image_size)


def _configs():
  out = []
  for name, (task, channels, labels, sizes) in DATASETS.items():
    for size in SIZES:
      out.append(MedMNISTConfig(
          name=name if size == 28 else f'{name}_{size}', dataset=name, image_size=size,
          description=f'{name} at {size} px: {task}, {len(labels)} labels, {channels} channel(s), '
                      f'official splits {sizes[0]}/{sizes[1]}/{sizes[2]}.'))
  return out


class MedMNIST(tfds.core.GeneratorBasedBuilder):
  """MedMNIST v2 (Yang et al., Scientific Data 2023), 2D datasets, official splits."""

  name = 'medmnist'  # Not TFDS's snake_case of the class name ('med_mnist').

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: 12 2D datasets x 4 sizes, read from the official npz files.'}
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the official npz file(s) from https://zenodo.org/records/10519652 (MedMNIST v2 / MedMNIST+,
  licence CC BY 4.0 for every 2D dataset except where the source states otherwise; cite Yang et al. 2023
  and the source dataset) and put them, unchanged, directly in the manual directory:

    <manual_dir>/retinamnist.npz        (28 px)
    <manual_dir>/retinamnist_64.npz     (64 / 128 / 224 px: <name>_<size>.npz)

  Each file holds train_images, train_labels, val_images, val_labels, test_images, test_labels
  (images uint8 [N, H, W] or [N, H, W, 3]; labels [N, 1], or [N, 14] for chestmnist).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    task, channels, labels, _ = DATASETS[c.dataset]
    if task == 'multi-label':
      label = tfds.features.Tensor(shape=(len(labels),), dtype=np.int64, doc=', '.join(labels))
    else:
      label = tfds.features.ClassLabel(names=list(labels))
    return self.dataset_info_from_configs(
        description=f'MedMNIST v2 {c.dataset} ({task}) at {c.image_size} px.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(c.image_size, c.image_size, channels), encoding_format='png'),
            'label': label,
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index of the example in its official split.'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # Record i of a split is official index i.
        homepage='https://medmnist.com/',
        citation='Yang et al., MedMNIST v2, Scientific Data 10:41 (2023).',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    c = self.builder_config
    task, channels, labels, _ = DATASETS[c.dataset]
    path = find_npz(dl_manager.manual_dir, what=f'{self.name}/{c.name}', dataset=c.dataset,
                    image_size=c.image_size, sizes=SIZES)
    data = load_npz(path, what=f'{self.name}/{c.name}', config=c.name, module='tfds_builders.medmnist',
                    image_shape=(c.image_size, c.image_size) + ((3,) if channels == 3 else ()),
                    num_classes=len(labels), multi_label=task == 'multi-label')
    return {split: self._generate_examples(data[f'{prefix}_images'], data[f'{prefix}_labels'])
            for split, prefix in SPLITS}

  def _generate_examples(self, images, labels):
    multi = DATASETS[self.builder_config.dataset][0] == 'multi-label'
    for i, (image, y) in enumerate(zip(images, labels)):
      if image.ndim == 2:
        image = image[..., None]
      buf = io.BytesIO()
      # PNG bytes: encoding numpy images inside TFDS would need TensorFlow.
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format='PNG')
      yield i, {'image': buf.getvalue(), 'label': y.astype(np.int64) if multi else int(y[0]), 'id': i}

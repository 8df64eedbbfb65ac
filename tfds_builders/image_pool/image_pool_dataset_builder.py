"""A pretraining pool made of other builders' datasets: every record of the listed splits of each member, resized to
one size and channel count, labelled by its source (the member it came from).

The pool's manual dir is the folder that holds each member's official files in a sub-folder of its own (the layout of
$MEDSSL_SHARED_DATA). Each member is built first through its own builder, into the pool's data dir, then read back;
its images are squared by padding (black borders, nothing cut), resized (area filter) and converted to the pool's
channels (luma for RGB -> 1). Records keep the member's split and index (`source_split`, `source_index`), and
`label` names the member, so a subset of the pool (medssl_jax/projects/selection) reports how many records it took
from each source. One split, `train`: a pool is for pretraining.

Configs:
- `shared_gray_28`: the shared data as a pool for a chest X-ray target (PneumoniaMNIST, not in it): NIH ChestX-ray14
  1000 (train split: chest X-rays), RetinaMNIST (train: fundus), HRF and CHASE_DB1 (every split: fundus), BCCD (train
  cell crops: microscopy); 28 px, 1 channel.
"""
from __future__ import annotations

import dataclasses
import io
import pathlib

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders import common
from tfds_builders import registry

_DATASET = 'image_pool'


@dataclasses.dataclass(frozen=True)
class Member:
  name: str            # Its label in the pool.
  builder: str         # A key of tfds_builders.registry.BUILDERS.
  builder_config: str
  folder: str          # Its official files: <pool manual dir>/<folder>.
  splits: tuple[str, ...]


SHARED_MEMBERS = (
    Member('nih1000', 'nih_chestxray14', 'subset1000_patient_split', 'nih_cxr14_1000_64px', ('train',)),
    Member('retinamnist', 'medmnist', 'retinamnist', 'retinamnist', ('train',)),
    Member('hrf', 'hrf', 'classification_512', 'hrf', ('train', 'validation', 'test')),
    Member('chase_db1', 'chase_db1', '512', 'chase_db1', ('train', 'test')),
    Member('bccd', 'bccd', '64', 'bccd', ('train',)),
)


@dataclasses.dataclass
class ImagePoolConfig(tfds.core.BuilderConfig):
  image_size: int = 28
  channels: int = 1
  members: tuple[Member, ...] = ()


class ImagePool(tfds.core.GeneratorBasedBuilder):
  """Other builders' datasets as one pool, labelled by source."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: the shared data as a 28 px grayscale pool.'}
  BUILDER_CONFIGS = [
      ImagePoolConfig(name='shared_gray_28', description='NIH1000, RetinaMNIST, HRF, CHASE_DB1 and BCCD at 28 px, '
                      'grayscale: a pool for a chest X-ray target.', image_size=28, channels=1,
                      members=SHARED_MEMBERS),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  The manual dir holds one sub-folder per member, each in that member's official layout (see its builder's
  instructions), e.g. $MEDSSL_SHARED_DATA: nih_cxr14_1000_64px/, retinamnist/, hrf/, chase_db1/, bccd/.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(c.image_size, c.image_size, c.channels), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=[m.name for m in c.members]),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Index in the pool, in member then split order.'),
            'source_split': tfds.features.Text(doc="The member's split the record comes from."),
            'source_index': tfds.features.Scalar(dtype=np.int64, doc="The record's index in that split."),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # Records in member, split and index order: id is the position.
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    c = self.builder_config
    manual = pathlib.Path(dl_manager.manual_dir)
    missing = [m.folder for m in c.members if not (manual / m.folder).is_dir()]
    if missing:
      raise FileNotFoundError(f'{_DATASET}/{c.name}: no member folder(s) {missing} in {manual}; the manual dir must '
                              'hold each member\'s official files in a sub-folder of its own')
    data_root = pathlib.Path(self.data_dir).parents[2]  # <data_dir>/image_pool/<config>/<version>.
    return {'train': self._generate_examples([(m, self._member(m, data_root, manual / m.folder)) for m in c.members])}

  def _member(self, member: Member, data_root: pathlib.Path, manual: pathlib.Path):
    cls = registry.builder_class(member.builder)
    builder = cls(config=member.builder_config, data_dir=str(data_root), file_format='array_record')
    if not builder.is_prepared():
      builder.download_and_prepare(file_format='array_record',
                                   download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    missing = [s for s in member.splits if s not in builder.info.splits]
    if missing:
      raise ValueError(f'{_DATASET}: member {member.name!r} ({member.builder}/{member.builder_config}) has no '
                       f'split(s) {missing}; its splits are {sorted(builder.info.splits)}')
    return builder

  def _image(self, data) -> bytes:
    c = self.builder_config
    im = Image.open(io.BytesIO(data)) if isinstance(data, bytes) else Image.fromarray(
        data[..., 0] if data.ndim == 3 and data.shape[-1] == 1 else data)
    im = common.square(im.convert('RGB' if c.channels == 3 else 'L'), fit='pad')
    im = im.resize((c.image_size, c.image_size), Image.BOX if im.size[0] >= c.image_size else Image.BICUBIC)
    return common.encode(im, fmt='png')

  def _generate_examples(self, members):
    pool_id = 0
    for member, builder in members:
      for split in member.splits:
        source = builder.as_data_source(split=split)
        for i in range(len(source)):
          record = source[i]
          yield pool_id, {'image': self._image(record['image']), 'label': member.name, 'id': pool_id,
                          'source_split': split, 'source_index': i}
          pool_id += 1

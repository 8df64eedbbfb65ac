"""TFDS builder for the synthetic shape volumes (see medssl_jax.synthetic.volumes)."""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from medssl_jax.synthetic import volumes as synthetic_volumes

_DESCRIPTION = """
Synthetic organ-like binary shape volumes (0 / 255 voxels, as MedMNIST 3D's AdrenalMNIST3D): lumpy ellipsoids
of random size, pose and centre, labelled by whether a small spherical cavity sits inside the shape. Rendered
deterministically from (seed, index); classes alternate with the index. For runs and tests without real volumes.
"""


@dataclasses.dataclass
class SyntheticVolumesConfig(tfds.core.BuilderConfig):
  """Volume side, split sizes and seed of one synthetic volume variant."""
  image_size: int = 28
  num_train: int = 800
  num_validation: int = 200
  num_test: int = 400
  seed: int = 0


class SyntheticVolumes(tfds.core.GeneratorBasedBuilder):
  """Synthetic shape volumes [D, H, W, 1] with a binary cavity label, generated without any download."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      SyntheticVolumesConfig(name='28', description='28³, 800/200/400 examples.'),
      SyntheticVolumesConfig(name='tiny', description='16³, 32/16/16 examples, for tests.', image_size=16,
                             num_train=32, num_validation=16, num_test=16),
  ]
  DEFAULT_CONFIG_NAME = '28'

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(s, s, s, 1), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB,
                                          doc='Volume [D, H, W, 1], 0 / 255.'),
            'label': tfds.features.ClassLabel(names=list(synthetic_volumes.CLASS_NAMES)),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Generator index of the example.'),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # Record i of a split is its i-th generator index.
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the generator is the data.
    c = self.builder_config
    bounds = np.cumsum([0, c.num_train, c.num_validation, c.num_test])  # Disjoint index ranges of one seed.
    return {name: self._generate_examples(int(bounds[i]), int(bounds[i + 1]))
            for i, name in enumerate(('train', 'validation', 'test'))}

  def _generate_examples(self, start: int, stop: int):
    c = self.builder_config
    for index in range(start, stop):
      volume, label = synthetic_volumes.render_example(index, size=c.image_size, seed=c.seed)
      yield index, {'image': volume[..., None], 'label': label, 'id': index}

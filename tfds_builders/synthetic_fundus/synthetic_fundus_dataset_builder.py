"""TFDS builder for the synthetic fundus grading data set (see medssl_jax.synthetic.fundus)."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from medssl_jax.synthetic import fundus as synthetic_fundus

_DESCRIPTION = """
Synthetic fundus-like colour images graded by lesions into healthy / mild / moderate / severe.
Images are rendered deterministically from (seed, index): retina colour, brightness, vignetting,
optic disc side and vessels vary a lot, while the label is carried only by small lesions
(microaneurysms, haemorrhages, exudates). Classes are exactly balanced in blocks of 4 indices.
The 'vessels' config also carries each image's vessel map ('mask', 1 = vessel) and circular field of
view ('fov_mask', 1 = inside), for the segmentation transfer protocol's tests and quick runs.
"""


@dataclasses.dataclass
class SyntheticFundusConfig(tfds.core.BuilderConfig):
  """Image size, split sizes and seed of one synthetic fundus variant."""
  image_size: int = 64
  num_train: int = 2048
  num_validation: int = 256
  num_test: int = 512
  seed: int = 0
  vessel_masks: bool = False  # Add 'mask' (vessels) and 'fov_mask' image features.
  lesion_scale: float = 1.0  # Lesions drawn this many times larger (synthetic_fundus.render_example).


class SyntheticFundus(tfds.core.GeneratorBasedBuilder):
  """Synthetic fundus images with a 4-grade lesion label, generated without any download."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      SyntheticFundusConfig(name='64px', description='64 px, 2048/256/512 examples.',
                            image_size=64, num_train=2048, num_validation=256, num_test=512),
      SyntheticFundusConfig(name='tiny', description='32 px, 64/32/32 examples, for tests.',
                            image_size=32, num_train=64, num_validation=32, num_test=32),
      SyntheticFundusConfig(name='small', description='64 px, 512/64/256 examples, for quick end-to-end runs.',
                            image_size=64, num_train=512, num_validation=64, num_test=256),
      SyntheticFundusConfig(name='vessels', description='64 px, 48/16/16 examples with vessel and FOV masks, '
                            'for segmentation tests.', image_size=64, num_train=48, num_validation=16,
                            num_test=16, vessel_masks=True),
      SyntheticFundusConfig(name='64px_lesions2x', description='64 px, 2048/256/512 examples, lesions drawn twice '
                            'as large.', image_size=64, num_train=2048, num_validation=256, num_test=512,
                            lesion_scale=2.0),
      SyntheticFundusConfig(name='small_lesions2x', description='64 px, 512/64/256 examples, lesions drawn twice as '
                            'large, for quick runs.', image_size=64, num_train=512, num_validation=64, num_test=256,
                            lesion_scale=2.0),
  ]
  DEFAULT_CONFIG_NAME = '64px'

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    features = {
        'image': tfds.features.Image(shape=(s, s, 3), encoding_format='png'),
        'label': tfds.features.ClassLabel(names=list(synthetic_fundus.CLASS_NAMES)),
        'id': tfds.features.Scalar(dtype=np.int64, doc='Generator index of the example.'),
        'eye': tfds.features.ClassLabel(names=list(synthetic_fundus.EYE_NAMES)),
    }
    if self.builder_config.vessel_masks:
      features['mask'] = tfds.features.Image(shape=(s, s, 1), encoding_format='png',
                                             doc='Vessels (1) vs background (0), inside the FOV.')
      features['fov_mask'] = tfds.features.Image(shape=(s, s, 1), encoding_format='png',
                                                 doc='Circular field of view (1 inside, 0 outside).')
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict(features),
        supervised_keys=('image', 'label'),
        # Keep records in index order: record i of a split is its i-th generator index, so reads are
        # reproducible and easy to check; training pipelines shuffle on their own.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the generator is the data.
    c = self.builder_config
    # Disjoint index ranges of one seed, so no image appears in two splits.
    bounds = np.cumsum([0, c.num_train, c.num_validation, c.num_test])
    names = ('train', 'validation', 'test')
    return {name: self._generate_examples(int(bounds[i]), int(bounds[i + 1]))
            for i, name in enumerate(names)}

  def _generate_examples(self, start: int, stop: int):
    c = self.builder_config
    for index in range(start, stop):
      image, label, meta = synthetic_fundus.render_example(index, size=c.image_size, seed=c.seed,
                                                           return_masks=c.vessel_masks, lesion_scale=c.lesion_scale)
      record = {'image': _png(image), 'label': label, 'id': index, 'eye': meta['eye']}
      if c.vessel_masks:
        record['mask'] = _png(meta['vessel_mask'])
        record['fov_mask'] = _png(meta['fov_mask'])
      yield index, record


def _png(array: np.ndarray) -> bytes:
  """PNG bytes, not arrays: encoding numpy images inside TFDS needs TensorFlow. 2-D arrays become 'L'."""
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG')
  return buf.getvalue()

"""TFDS builder for the synthetic chest X-ray + report data set (see medssl_jax.synthetic.cxr)."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from medssl_jax.synthetic import cxr as synthetic_cxr

_DESCRIPTION = """
Synthetic grayscale chest-X-ray-like images paired with templated radiology reports, for image+report
(vision-language) pipelines and their tests. Findings (cardiomegaly; consolidation and pleural effusion,
each right / left / bilateral) are drawn into the image, listed in the multi-label 'label' vector
(order: """ + ', '.join(synthetic_cxr.FINDINGS) + """) and described in the report, which negates the
absent ones. Laterality is the patient's (right lung on the image's left). Rendered deterministically
from (seed, index); two consecutive indices share a patient, and splits are patient-disjoint.
"""


@dataclasses.dataclass
class SyntheticCxrConfig(tfds.core.BuilderConfig):
  """Image size, split sizes (even: two images per patient) and seed of one variant."""
  image_size: int = 64
  num_train: int = 2048
  num_validation: int = 256
  num_test: int = 512
  seed: int = 0


class SyntheticCxr(tfds.core.GeneratorBasedBuilder):
  """Synthetic chest X-rays with multi-label findings and a paired report, generated without any download."""

  LABEL_NAMES = synthetic_cxr.FINDINGS  # Names of the 'label' columns (pipeline.label_names).
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      SyntheticCxrConfig(name='64px', description='64 px, 2048/256/512 examples.',
                         image_size=64, num_train=2048, num_validation=256, num_test=512),
      SyntheticCxrConfig(name='tiny', description='32 px, 64/32/32 examples, for tests.',
                         image_size=32, num_train=64, num_validation=32, num_test=32),
  ]
  DEFAULT_CONFIG_NAME = '64px'

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s, s, 1), encoding_format='png'),
            'label': tfds.features.Tensor(shape=(synthetic_cxr.NUM_FINDINGS,), dtype=np.int64,
                                          doc='1/0 for: ' + ', '.join(synthetic_cxr.FINDINGS)),
            'report': tfds.features.Text(doc='Templated report: "FINDINGS: ...\\nIMPRESSION: ...".'),
            'id': tfds.features.Scalar(dtype=np.int64, doc='Generator index of the example.'),
            'patient_id': tfds.features.Text(doc='e.g. "synth00012"; two consecutive indices per patient.'),
        }),
        supervised_keys=('image', 'label'),
        # Record i of a split is its i-th generator index (reproducible reads; training shuffles itself).
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the generator is the data.
    c = self.builder_config
    sizes = {'num_train': c.num_train, 'num_validation': c.num_validation, 'num_test': c.num_test}
    odd = {k: v for k, v in sizes.items() if v % synthetic_cxr.IMAGES_PER_PATIENT}
    if odd:  # A patient split across two splits would leak between train and test.
      raise ValueError(f'synthetic_cxr config {c.name!r}: split sizes must be multiples of '
                       f'{synthetic_cxr.IMAGES_PER_PATIENT} (images per patient), got {odd}.')
    bounds = np.cumsum([0, c.num_train, c.num_validation, c.num_test])
    names = ('train', 'validation', 'test')
    return {name: self._generate_examples(int(bounds[i]), int(bounds[i + 1]))
            for i, name in enumerate(names)}

  def _generate_examples(self, start: int, stop: int):
    c = self.builder_config
    for index in range(start, stop):
      image, label, report, meta = synthetic_cxr.render_example(index, size=c.image_size, seed=c.seed)
      yield index, {'image': _png(image[..., 0]), 'label': label, 'report': report, 'id': index,
                    'patient_id': meta['patient_id']}


def _png(array: np.ndarray) -> bytes:
  """PNG bytes of a 2-D uint8 array ('L'): encoding numpy images inside TFDS needs TensorFlow."""
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG')
  return buf.getvalue()

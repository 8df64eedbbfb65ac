"""Synthetic shape volumes TFDS builder (package style)."""
from tfds_builders.synthetic_volumes.synthetic_volumes_dataset_builder import SyntheticVolumes
from tfds_builders.synthetic_volumes.synthetic_volumes_dataset_builder import SyntheticVolumesConfig

__all__ = ['SyntheticVolumes', 'SyntheticVolumesConfig']

"""Synthetic fundus TFDS builder (package style)."""
from tfds_builders.synthetic_fundus.synthetic_fundus_dataset_builder import SyntheticFundus
from tfds_builders.synthetic_fundus.synthetic_fundus_dataset_builder import SyntheticFundusConfig

__all__ = ['SyntheticFundus', 'SyntheticFundusConfig']

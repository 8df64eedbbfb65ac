"""Synthetic chest X-ray + report TFDS builder (package style)."""
from tfds_builders.synthetic_cxr.synthetic_cxr_dataset_builder import SyntheticCxr
from tfds_builders.synthetic_cxr.synthetic_cxr_dataset_builder import SyntheticCxrConfig

__all__ = ['SyntheticCxr', 'SyntheticCxrConfig']

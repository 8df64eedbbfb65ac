"""HRF (High-Resolution Fundus) TFDS builder (package style)."""
from tfds_builders.hrf.hrf_dataset_builder import LABELS, Hrf, HrfConfig

__all__ = ['Hrf', 'HrfConfig', 'LABELS']

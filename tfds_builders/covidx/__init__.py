"""COVIDx CXR-4 TFDS builder (package style)."""
from tfds_builders.covidx.covidx_dataset_builder import CLASSES, Covidx, CovidxConfig

__all__ = ['CLASSES', 'Covidx', 'CovidxConfig']

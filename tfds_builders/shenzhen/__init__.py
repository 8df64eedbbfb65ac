"""Shenzhen Hospital chest X-ray (tuberculosis) TFDS builder (package style)."""
from tfds_builders.shenzhen.shenzhen_dataset_builder import Shenzhen, ShenzhenConfig

__all__ = ['Shenzhen', 'ShenzhenConfig']

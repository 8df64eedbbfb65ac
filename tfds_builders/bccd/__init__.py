"""BCCD blood cell TFDS builder (package style): cell crops from the VOC boxes, or whole images."""
from tfds_builders.bccd.bccd_dataset_builder import CLASSES, Bccd, BccdConfig

__all__ = ['CLASSES', 'Bccd', 'BccdConfig']

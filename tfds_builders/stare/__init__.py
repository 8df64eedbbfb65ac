"""STARE retinal vessel segmentation TFDS builder (package style)."""
from tfds_builders.stare.stare_dataset_builder import Stare, StareConfig

__all__ = ['Stare', 'StareConfig']

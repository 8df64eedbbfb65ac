"""PatchCamelyon (PCam) TFDS builder (package style), read from the official HDF5 files."""
from tfds_builders.pcam.pcam_dataset_builder import CLASSES, Pcam

__all__ = ['CLASSES', 'Pcam']

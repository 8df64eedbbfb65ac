"""RSNA Pneumonia Detection Challenge TFDS builder (package style)."""
from tfds_builders.rsna_pneumonia.rsna_pneumonia_dataset_builder import (CLASSES, RsnaPneumonia,
                                                                         RsnaPneumoniaConfig)

__all__ = ['CLASSES', 'RsnaPneumonia', 'RsnaPneumoniaConfig']

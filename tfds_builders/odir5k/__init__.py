"""ODIR-5K (Ocular Disease Intelligent Recognition) TFDS builder (package style)."""
from tfds_builders.odir5k.odir5k_dataset_builder import LABEL_NAMES, LABELS, Odir5k, Odir5kConfig

__all__ = ['LABEL_NAMES', 'LABELS', 'Odir5k', 'Odir5kConfig']

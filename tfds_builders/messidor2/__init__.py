"""Messidor-2 (with the adjudicated grades of Krause et al. 2018) TFDS builder (package style)."""
from tfds_builders.messidor2.messidor2_dataset_builder import DR_GRADES, Messidor2, Messidor2Config

__all__ = ['DR_GRADES', 'Messidor2', 'Messidor2Config']

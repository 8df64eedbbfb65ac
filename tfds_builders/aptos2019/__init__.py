"""APTOS 2019 Blindness Detection TFDS builder (package style)."""
from tfds_builders.aptos2019.aptos2019_dataset_builder import DR_GRADES, Aptos2019, Aptos2019Config

__all__ = ['DR_GRADES', 'Aptos2019', 'Aptos2019Config']

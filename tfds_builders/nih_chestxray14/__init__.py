"""NIH ChestX-ray14 TFDS builder (package style)."""
from tfds_builders.nih_chestxray14.nih_chestxray14_dataset_builder import (FINDINGS, NihChestXray14,
                                                                           NihChestXray14Config)

__all__ = ['FINDINGS', 'NihChestXray14', 'NihChestXray14Config']

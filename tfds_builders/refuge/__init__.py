"""REFUGE glaucoma classification and optic disc/cup segmentation TFDS builder (package style)."""
from tfds_builders.refuge.refuge_dataset_builder import LABELS, Refuge, RefugeConfig

__all__ = ['LABELS', 'Refuge', 'RefugeConfig']

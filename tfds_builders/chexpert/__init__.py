"""CheXpert chest radiograph TFDS builder (package style)."""
from tfds_builders.chexpert.chexpert_dataset_builder import LABELS, POLICIES, Chexpert, ChexpertConfig

__all__ = ['Chexpert', 'ChexpertConfig', 'LABELS', 'POLICIES']

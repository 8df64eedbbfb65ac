"""DRIVE retinal vessel segmentation TFDS builder (package style)."""
from tfds_builders.drive.drive_dataset_builder import Drive, DriveConfig

__all__ = ['Drive', 'DriveConfig']

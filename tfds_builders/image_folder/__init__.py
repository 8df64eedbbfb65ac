"""Generic TFDS builder for a user's own images: labelled (class folders or a CSV) or unlabelled."""
from tfds_builders.image_folder.image_folder_dataset_builder import ImageFolder, ImageFolderConfig

__all__ = ['ImageFolder', 'ImageFolderConfig']

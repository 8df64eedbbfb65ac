"""MedMNIST 3D TFDS builder (package style), read from the official npz files."""
from tfds_builders.medmnist3d.medmnist3d_dataset_builder import DATASETS, MD5, SIZES, MedMNIST3D, MedMNIST3DConfig

__all__ = ['DATASETS', 'MD5', 'MedMNIST3D', 'MedMNIST3DConfig', 'SIZES']

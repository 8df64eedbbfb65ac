"""MedMNIST v2 TFDS builder (package style), read from the official npz files."""
from tfds_builders.medmnist.medmnist_dataset_builder import DATASETS, SIZES, MedMNIST, MedMNISTConfig

__all__ = ['DATASETS', 'MedMNIST', 'MedMNISTConfig', 'SIZES']

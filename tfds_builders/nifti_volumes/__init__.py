"""Generic TFDS builder for a user's own labelled NIfTI volumes, listed in a CSV."""
from tfds_builders.nifti_volumes.nifti_volumes_dataset_builder import NiftiVolumes, NiftiVolumesConfig

__all__ = ['NiftiVolumes', 'NiftiVolumesConfig']

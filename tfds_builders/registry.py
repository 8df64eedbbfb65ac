"""The registered dataset builders: name -> 'module:ClassName', imported lazily so listing choices stays cheap.

Each is a package tfds_builders/<name>/ with its MANUAL_DOWNLOAD_INSTRUCTIONS, dummy_data.py (image_pool: its members') and
tests/test_builder_<name>.py. medssl_jax.data.pipeline opens datasets by these names, and a builder made of other
builders' datasets (image_pool) finds its members here.
"""
from __future__ import annotations

import importlib

BUILDERS = {
    'synthetic_fundus': 'tfds_builders.synthetic_fundus:SyntheticFundus',
    'synthetic_cxr': 'tfds_builders.synthetic_cxr:SyntheticCxr',  # Paired image + report demo data.
    'medmnist': 'tfds_builders.medmnist:MedMNIST',
    'medmnist3d': 'tfds_builders.medmnist3d:MedMNIST3D',  # Volumes [D, H, W, 1].
    'synthetic_volumes': 'tfds_builders.synthetic_volumes:SyntheticVolumes',  # Generated volumes [D, H, W, 1].
    # Fundus.
    'eyepacs': 'tfds_builders.eyepacs:Eyepacs',
    'aptos2019': 'tfds_builders.aptos2019:Aptos2019',
    'messidor2': 'tfds_builders.messidor2:Messidor2',
    'idrid': 'tfds_builders.idrid:Idrid',
    'odir5k': 'tfds_builders.odir5k:Odir5k',
    'rfmid': 'tfds_builders.rfmid:Rfmid',
    'drive': 'tfds_builders.drive:Drive',
    'stare': 'tfds_builders.stare:Stare',
    'chase_db1': 'tfds_builders.chase_db1:ChaseDb1',
    'hrf': 'tfds_builders.hrf:Hrf',
    'refuge': 'tfds_builders.refuge:Refuge',
    # Chest X-ray.
    'chexpert': 'tfds_builders.chexpert:Chexpert',
    'mimic_cxr': 'tfds_builders.mimic_cxr:MimicCxr',
    'nih_chestxray14': 'tfds_builders.nih_chestxray14:NihChestXray14',
    'rsna_pneumonia': 'tfds_builders.rsna_pneumonia:RsnaPneumonia',
    'shenzhen': 'tfds_builders.shenzhen:Shenzhen',
    'montgomery': 'tfds_builders.montgomery:Montgomery',
    'covidx': 'tfds_builders.covidx:Covidx',
    # Pathology / microscopy.
    'pcam': 'tfds_builders.pcam:Pcam',
    'nct_crc_he': 'tfds_builders.nct_crc_he:NctCrcHe',
    'bccd': 'tfds_builders.bccd:Bccd',
    # A user's own data.
    'image_folder': 'tfds_builders.image_folder:ImageFolder',
    # Several of the above as one pretraining pool.
    'image_pool': 'tfds_builders.image_pool:ImagePool',
    'nifti_volumes': 'tfds_builders.nifti_volumes:NiftiVolumes',  # Labelled NIfTI volumes listed in a CSV.
    'swcl_patches': 'tfds_builders.swcl_patches:SwclPatches',  # SWCL stage 3 (a stage-2 propagation folder).
}


def builder_class(name: str):
  if name not in BUILDERS:
    raise ValueError(f'Unknown dataset {name!r}; valid choices: {sorted(BUILDERS)}.')
  module_name, class_name = BUILDERS[name].split(':')
  return getattr(importlib.import_module(module_name), class_name)

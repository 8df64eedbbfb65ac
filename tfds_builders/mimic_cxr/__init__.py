"""MIMIC-CXR-JPG (with MIMIC-CXR reports) TFDS builder (package style)."""
from tfds_builders.mimic_cxr.mimic_cxr_dataset_builder import MimicCxr, MimicCxrConfig, report_sections

__all__ = ['MimicCxr', 'MimicCxrConfig', 'report_sections']

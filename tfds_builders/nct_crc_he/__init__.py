"""NCT-CRC-HE-100K / CRC-VAL-HE-7K colorectal histology TFDS builder (package style)."""
from tfds_builders.nct_crc_he.nct_crc_he_dataset_builder import CLASSES, NctCrcHe, NctCrcHeConfig

__all__ = ['CLASSES', 'NctCrcHe', 'NctCrcHeConfig']

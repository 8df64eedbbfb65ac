"""RFMiD (Retinal Fundus Multi-Disease Image Dataset) TFDS builder (package style)."""
from tfds_builders.rfmid.rfmid_dataset_builder import LABEL_NAMES, LABELS, Rfmid, RfmidConfig

__all__ = ['LABEL_NAMES', 'LABELS', 'Rfmid', 'RfmidConfig']

"""Montgomery County chest X-ray (tuberculosis) TFDS builder (package style)."""
from tfds_builders.montgomery.montgomery_dataset_builder import MASK_CLASSES, Montgomery, MontgomeryConfig

__all__ = ['MASK_CLASSES', 'Montgomery', 'MontgomeryConfig']

"""EyePACS (Kaggle Diabetic Retinopathy Detection 2015) TFDS builder (package style)."""
from tfds_builders.eyepacs.eyepacs_dataset_builder import DR_GRADES, Eyepacs, EyepacsConfig

__all__ = ['DR_GRADES', 'Eyepacs', 'EyepacsConfig']

"""CHASE_DB1 retinal vessel segmentation TFDS builder (package style)."""
from tfds_builders.chase_db1.chase_db1_dataset_builder import ChaseDb1, ChaseDb1Config

__all__ = ['ChaseDb1', 'ChaseDb1Config']
